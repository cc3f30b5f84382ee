"""The IMAP edge (blocking, run in a worker thread): fetch by UID, move, wait with IDLE.

imapclient's and imaplib's exceptions are translated here into `ImapUnavailable`
(reconnect and carry on) and `ImapRejected` (login, TLS or folder refused).
"""

from __future__ import annotations

import ast
import imaplib
import logging
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from maild.config import ImapSettings
from maild.errors import ImapLoginRefused, ImapRejected, ImapUnavailable
from maild.mail.fetched import Fetched, Omitted
from maild.oauth import Bearer, Tokens

log = logging.getLogger(__name__)
T = TypeVar("T")

# A refused LOGIN that means "not now", not "wrong password": RFC 5530's codes for a
# server that is unavailable, busy or at a limit; Exchange Online's answer while it cannot
# reach the mailbox's backend (also sent as NO or BAD to a command after the login);
# Gmail's limit of sessions per account.
_NOT_NOW = re.compile(r"\[(?:UNAVAILABLE|INUSE|LIMIT|SERVERBUG)\]"
                      r"|User is authenticated but not connected"
                      r"|Too many simultaneous connections", re.IGNORECASE)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except LoginError as exc:
        # imapclient makes a LoginError of anything LOGIN meets, a BYE or a cut link too.
        if isinstance(exc.__context__, imaplib.IMAP4.abort) or _NOT_NOW.search(_text(exc)):
            raise ImapUnavailable(f"{what}: {_text(exc)}") from exc
        raise ImapLoginRefused(f"{what}: login refused: {_text(exc)}") from exc
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:  # the link was cut, not refused
        raise ImapUnavailable(f"{what}: {_text(exc)}") from exc
    except ssl.SSLError as exc:
        raise ImapRejected(f"{what}: TLS failed: {_text(exc)}") from exc
    except (imaplib.IMAP4.abort, OSError, EOFError) as exc:
        raise ImapUnavailable(f"{what}: {_text(exc)}") from exc
    except imaplib.IMAP4.error as exc:
        raise ImapUnavailable(f"{what}: {_text(exc)}") from exc


# A bytes literal inside a message: imapclient makes its errors of str(imaplib's), so the
# server's answer arrives as "b'[AUTHENTICATIONFAILED] Authentication failed.'".
_BYTES_REPR = re.compile(r"""\bb(['"])((?:\\.|(?!\1).)*)\1""")


def _text(exc: BaseException) -> str:
    """An imaplib or imapclient error as the server's words: text, never Python bytes."""
    if exc.args and isinstance(exc.args[0], bytes):
        return exc.args[0].decode("utf-8", "replace")
    return _BYTES_REPR.sub(_unbytes, str(exc)) or type(exc).__name__


def _unbytes(found: re.Match[str]) -> str:
    """The text of one bytes literal (left as it is when it is none after all)."""
    try:
        value = ast.literal_eval(found.group(0))
    except (ValueError, SyntaxError):
        return found.group(0)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else found.group(0)


class ImapMailbox:
    """One connection to one watched folder."""

    def __init__(self, settings: ImapSettings, tokens: Tokens | None = None) -> None:
        self.settings = settings
        self.tokens = tokens  # for auth = "oauth2"
        self.token_expires_at: datetime | None = None  # the login's token, if any
        self.mechanism = "LOGIN"
        self.client: IMAPClient | None = None
        self.uidvalidity = 0
        self.uidnext = 0
        self.exists = 0
        self.capabilities: frozenset[str] = frozenset()

    @property
    def where(self) -> str:
        return f"IMAP {self.settings.host}:{self.settings.port}"

    def connect(self, create_folders: bool = True) -> None:
        """Connect, secure, log in, make sure our folders exist and select the watched one."""
        s = self.settings
        with _translated(self.where):
            client = IMAPClient(
                s.host, port=s.port, ssl=s.tls == "ssl", timeout=s.timeout,
                ssl_context=ssl.create_default_context() if s.tls == "ssl" else None,
            )
            self.client = client
            if s.tls == "starttls":
                client.starttls(ssl.create_default_context())
            client._imap.debug = 0  # imapclient formats debug output it never prints
            client.normalise_times = False
            if s.auth == "oauth2":
                self._oauth_login(client)
            else:
                client.login(s.username, s.password)
            self.capabilities = frozenset(
                c.decode().upper() if isinstance(c, bytes) else str(c).upper()
                for c in client.capabilities()
            )
        if create_folders:
            self.ensure_folders()
        self.select()

    def _oauth_login(self, client: IMAPClient) -> None:
        """SASL OAUTHBEARER where offered, else XOAUTH2; a refused token is refreshed
        once and tried again (it may have been revoked or expired early)."""
        if self.tokens is None:
            raise ImapUnavailable(f"{self.where}: the OAuth2 tokens cannot be read (the "
                                  "database is unavailable)")
        offered = {_word(c).upper() for c in client.capabilities()}
        bearer = self.tokens.bearer()
        self.mechanism = "OAUTHBEARER" if "AUTH=OAUTHBEARER" in offered else "XOAUTH2"
        try:
            self._authenticate(client, bearer)
        except LoginError as exc:
            fresh = self.tokens.bearer(refused=bearer.token)
            if fresh.token == bearer.token:
                raise LoginError(f"{self.mechanism} token refused: {_text(exc)}") from exc
            log.info("IMAP refused the OAuth2 token; logging in again with a fresh one")
            bearer = fresh
            self._authenticate(client, bearer)
        self.token_expires_at = bearer.expires_at

    def _authenticate(self, client: IMAPClient, bearer: Bearer) -> None:
        user = self.settings.username
        if self.mechanism == "OAUTHBEARER":
            client.oauthbearer_login(user, bearer.token)
        else:
            client.oauth2_login(user, bearer.token)

    def missing_folders(self) -> list[str]:
        client = self._client()
        with _translated(self.where):
            return [f for f in (self.settings.processed_folder, self.settings.quarantine_folder)
                    if not client.folder_exists(f)]

    def ensure_folders(self) -> None:
        client = self._client()
        with _translated(self.where):
            for folder in (self.settings.processed_folder, self.settings.quarantine_folder):
                if not client.folder_exists(folder):
                    client.create_folder(folder)
                    log.info("created IMAP folder %s", folder)

    def select(self) -> None:
        client = self._client()
        with _translated(f"{self.where} folder {self.settings.folder!r}"):
            if not client.folder_exists(self.settings.folder):
                raise ImapRejected(f"{self.where}: folder {self.settings.folder!r} does not exist")
            info = client.select_folder(self.settings.folder)
        self.uidvalidity = int(info.get(b"UIDVALIDITY", 0))
        self.uidnext = int(info.get(b"UIDNEXT", 0))
        self.exists = int(info.get(b"EXISTS", 0))

    @property
    def idles(self) -> bool:
        """Whether we wait with IDLE (the server offers it and config allows it)."""
        return self.settings.idle and "IDLE" in self.capabilities

    @property
    def moves(self) -> bool:
        """Whether the server moves mail in one step (MOVE); else COPY, \\Deleted, EXPUNGE."""
        return "MOVE" in self.capabilities

    def _client(self) -> IMAPClient:
        if self.client is None:
            raise ImapUnavailable(f"{self.where}: not connected")
        return self.client

    def uids(self) -> list[int]:
        """UIDs of the mails in the watched folder not marked deleted, ascending."""
        with _translated(self.where):
            return sorted(int(u) for u in self._client().search(["UNDELETED"]))

    def uids_after(self, uid: int) -> list[int]:
        """UIDs above `uid` in the watched folder: did anything arrive since we looked?"""
        with _translated(self.where):
            found = self._client().search(["UID", f"{uid + 1}:*", "UNDELETED"])
        return sorted(u for u in (int(x) for x in found) if u > uid)  # n:* includes the last

    def half_moved(self) -> list[int]:
        """UIDs flagged \\Deleted in the watched folder of a server without MOVE: mails of a
        move that may have stopped after its COPY (or the flag), before the EXPUNGE."""
        if self.moves:
            return []
        with _translated(self.where):
            return sorted(int(u) for u in self._client().search(["DELETED"]))

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of `uids` (those still there), to fetch in bounded batches."""
        if not uids:
            return {}
        with _translated(self.where):
            data = self._client().fetch(list(uids), ["RFC822.SIZE"])
        return {int(u): int(item.get(b"RFC822.SIZE", 0)) for u, item in data.items()}

    def fetch(self, uids: Sequence[int], sizes: dict[int, int] | None = None) -> list[Fetched]:
        """Raw bytes (without setting \\Seen) and INTERNALDATE of `uids`; a mail over
        `max_fetch_mb` is fetched in part: its headers and text, the rest listed."""
        limit = int(self.settings.max_fetch_mb * 1_000_000)
        client = self._client()
        if sizes is None:
            sizes = self.sizes(uids)
        with _translated(self.where):
            small = [u for u in uids if u in sizes and sizes[u] <= limit]
            data = client.fetch(small, ["BODY.PEEK[]", "INTERNALDATE"]) if small else {}
        fetched = []
        for uid in uids:
            if uid not in sizes:  # expunged meanwhile by someone else
                continue
            if uid not in small:
                large = self._fetch_large(uid, sizes[uid], limit)
                if large is not None:
                    fetched.append(large)
                continue
            item = data.get(uid)
            if item is None:
                continue
            arrived = _aware(item.get(b"INTERNALDATE"))
            fetched.append(Fetched(uid=uid, raw=item.get(b"BODY[]") or b"", internaldate=arrived))
        return fetched

    def _fetch_large(self, uid: int, size: int, limit: int) -> Fetched | None:
        """The headers and text parts of a mail too large to fetch whole (BODYSTRUCTURE),
        as a mail of their own; what was left out is listed in `omitted`."""
        client = self._client()
        with _translated(self.where):
            info = client.fetch([uid], ["BODYSTRUCTURE", "BODY.PEEK[HEADER]", "INTERNALDATE"])
            item = info.get(uid)
            if item is None:
                return None
            texts, omitted = [], []
            budget = limit
            for section, part in _leaves(item[b"BODYSTRUCTURE"]):
                kind = _ctype(part)
                name = _part_name(part)
                part_size = _part_size(part)
                if kind in ("text/plain", "text/html") and not name and part_size <= budget:
                    texts.append((section, part))
                    budget -= part_size
                else:
                    omitted.append(Omitted(name or f"part-{section}", kind, part_size))
            bodies = client.fetch([uid], [f"BODY.PEEK[{s}]" for s, _ in texts]) if texts else {}
        got = bodies.get(uid, {})
        raw = _rebuild(item.get(b"BODY[HEADER]") or b"",
                       [(p, got.get(f"BODY[{s}]".encode()) or b"") for s, p in texts],
                       size, omitted)
        log.warning("mail uid=%s is %d bytes, over the fetch limit: took its text, left out %d "
                    "parts", uid, size, len(omitted))
        return Fetched(uid=uid, raw=raw, internaldate=_aware(item.get(b"INTERNALDATE")),
                       omitted=tuple(omitted))

    def move(self, uids: Sequence[int], folder: str, again: bool = False) -> None:
        """Move `uids` to `folder`: MOVE, else COPY + \\Deleted + UID EXPUNGE (EXPUNGE
        without UIDPLUS). `again`: an earlier move of these may have stopped half-way
        (a server without MOVE): those `folder` holds already are not copied twice."""
        if not uids:
            return
        client = self._client()
        with _translated(f"{self.where} move to {folder!r}"):
            if self.moves:
                client.move(list(uids), folder)
                return
            copied = self._copied(uids, folder) if again else set()
            if copies := [u for u in uids if u not in copied]:
                client.copy(copies, folder)
            client.add_flags(list(uids), [b"\\Deleted"], silent=True)
            if "UIDPLUS" in self.capabilities:
                client.uid_expunge(list(uids))
            else:
                client.expunge()

    def _copied(self, uids: Sequence[int], folder: str) -> set[int]:
        """Those of `uids` (in the watched folder) that `folder` holds a copy of: a mail of
        the same size and the same header block among its newest 50 of that size."""
        client = self._client()
        ours = client.fetch(list(uids), ["RFC822.SIZE", "BODY.PEEK[HEADER]"])
        client.select_folder(folder, readonly=True)
        found = set()
        for uid, item in ours.items():
            size = int(item.get(b"RFC822.SIZE", 0))
            same_size = sorted(int(u) for u in client.search(
                ["LARGER", str(max(size - 1, 0)), "SMALLER", str(size + 1)]))[-50:]
            theirs = client.fetch(same_size, ["BODY.PEEK[HEADER]"]) if same_size else {}
            if any(t.get(b"BODY[HEADER]") == item.get(b"BODY[HEADER]") for t in theirs.values()):
                found.add(int(uid))
        before = self.uidvalidity
        self.select()
        if self.uidvalidity != before:  # the UIDs in hand name other mails now
            raise ImapUnavailable(f"{self.where}: UIDVALIDITY of {self.settings.folder!r} "
                                  "changed during a move")
        return found

    def take_back(self, folder: str, message_id: str | None, raw: bytes,
                  to: str | None = None) -> str:
        """Bring a mail from `folder` (the quarantine) to `to` (default: the watched
        folder): moved when found by its Message-ID, else appended from our stored copy."""
        client = self._client()
        target = to or self.settings.folder
        with _translated(f"{self.where} folder {folder!r}"):
            client.select_folder(folder)
            found: list[int] = []
            if message_id:
                found = [int(u) for u in client.search(["HEADER", "Message-ID", message_id])]
            if not found:  # no or an unusable Message-ID: the same size, then the same bytes
                same_size = [int(u) for u in client.search(
                    ["LARGER", str(len(raw) - 1), "SMALLER", str(len(raw) + 1)])]
                if same_size:
                    data = client.fetch(same_size[:50], ["BODY.PEEK[]"])
                    found = [u for u in same_size[:50]
                             if data.get(u, {}).get(b"BODY[]") == raw]
            if found:
                self.move(found[:1], target)
                how = f"moved from {folder} to {target}"
            else:
                client.append(target, raw)
                how = f"not found in {folder}: appended to {target} from the stored copy"
        self.select()
        return how

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """Return when the folder may have changed, `seconds` passed or `stop` is set."""
        if not self.idles:
            stop.wait(seconds)
            return
        client = self._client()
        deadline = time.monotonic() + seconds
        bye: Any = None
        with _translated(f"{self.where} IDLE"):
            client.idle()
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    responses = client.idle_check(timeout=min(0.5, seconds))
                    # imapclient passes a BYE on as a response and then takes the closed
                    # link for a quiet one: without this we would wait deaf till the renewal.
                    bye = next((r for r in responses if _is_bye(r)), None)
                    if bye is not None or any(_is_change(r) for r in responses):
                        break
            finally:
                if bye is None:
                    client.idle_done()
            if bye is not None:
                said = " ".join(_word(w) for w in bye[1:])
                raise ImapUnavailable(f"{self.where} IDLE: the server said BYE {said}".rstrip())
            client.noop()  # proves the connection is alive after a quiet IDLE

    def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError, EOFError):
            try:
                client.shutdown()
            except (OSError, imaplib.IMAP4.error):
                pass


def _leaves(structure: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(IMAP section, part) of every non-multipart part of a BODYSTRUCTURE."""
    if getattr(structure, "is_multipart", False):
        children = structure[0] if isinstance(structure[0], list) else []
        found = []
        for number, child in enumerate(children, start=1):
            found.extend(_leaves(child, f"{prefix}{number}."))
        return found
    return [((prefix.rstrip(".") or "1"), structure)]


def _word(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value) if value is not None else ""


def _ctype(part: Any) -> str:
    try:
        return f"{_word(part[0])}/{_word(part[1])}".lower()
    except (IndexError, TypeError):
        return "application/octet-stream"


def _params(value: Any) -> dict[str, str]:
    if not isinstance(value, (list, tuple)):
        return {}
    items = [_word(v) for v in value]
    return {items[i].lower(): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _part_name(part: Any) -> str:
    try:
        name = _params(part[2]).get("name", "")
        disposition = part[8] if len(part) > 8 else None
        if isinstance(disposition, (list, tuple)) and len(disposition) > 1:
            name = _params(disposition[1]).get("filename", name)
            if _word(disposition[0]).lower() == "attachment" and not name:
                name = "attachment"
        return name
    except (IndexError, TypeError):
        return ""


def _part_size(part: Any) -> int:
    try:
        return int(part[6])
    except (IndexError, TypeError, ValueError):
        return 0


def _rebuild(header: bytes, texts: list[tuple[Any, bytes]], size: int,
             omitted: list[Omitted]) -> bytes:
    """A mail of the original headers and the fetched text parts (their transfer encoding
    kept), in a multipart/mixed of our own."""
    keep = [line for line in re.split(rb"\r?\n(?![ \t])", header.strip())
            if line and not line.lower().startswith((b"content-", b"mime-version"))]
    boundary = f"maild-partial-{secrets.token_hex(8)}".encode()
    out = [*keep, b"MIME-Version: 1.0",
           b'Content-Type: multipart/mixed; boundary="' + boundary + b'"',
           f"X-Maild-Partial: {size} bytes; {len(omitted)} parts left out".encode(), b""]
    for part, body in texts:
        charset = _params(part[2]).get("charset", "utf-8")
        encoding = _word(part[5]) or "7bit"
        out += [b"--" + boundary,
                f"Content-Type: {_ctype(part)}; charset=\"{charset}\"".encode(),
                f"Content-Transfer-Encoding: {encoding}".encode(), b"", body]
    out += [b"--" + boundary + b"--", b""]
    return b"\r\n".join(out)


def _is_bye(response: Any) -> bool:
    return isinstance(response, tuple) and bool(response) and response[0] == b"BYE"


def _is_change(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) > 1 and response[1] in (
        b"EXISTS", b"RECENT", b"EXPUNGE")


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def probe(settings: ImapSettings, call: Callable[[ImapMailbox], T],
          tokens: Tokens | None = None) -> T:
    """Connect, run `call`, close: for `maild check`."""
    box = ImapMailbox(settings, tokens)
    try:
        box.connect(create_folders=False)  # a check changes nothing
        return call(box)
    finally:
        box.close()

