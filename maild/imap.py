"""The IMAP edge (blocking, run in a worker thread): fetch by UID, move, wait with IDLE.

imapclient's and imaplib's exceptions are translated here into `ImapUnavailable`
(reconnect and carry on) and `ImapRejected` (login, TLS or folder refused).
"""

from __future__ import annotations

import imaplib
import logging
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
from maild.errors import ImapRejected, ImapUnavailable
from maild.intake import Fetched

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except LoginError as exc:
        raise ImapRejected(f"{what}: login refused: {_text(exc)}") from exc
    except ssl.SSLError as exc:
        raise ImapRejected(f"{what}: TLS failed: {_text(exc)}") from exc
    except (imaplib.IMAP4.abort, OSError, EOFError) as exc:
        raise ImapUnavailable(f"{what}: {_text(exc)}") from exc
    except imaplib.IMAP4.error as exc:
        raise ImapUnavailable(f"{what}: {_text(exc)}") from exc


def _text(exc: BaseException) -> str:
    if exc.args and isinstance(exc.args[0], bytes):
        return exc.args[0].decode("utf-8", "replace")
    return str(exc) or type(exc).__name__


class ImapMailbox:
    """One connection to one watched folder."""

    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
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
            client.login(s.username, s.password)
            self.capabilities = frozenset(
                c.decode().upper() if isinstance(c, bytes) else str(c).upper()
                for c in client.capabilities()
            )
        if create_folders:
            self.ensure_folders()
        self.select()

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

    def _client(self) -> IMAPClient:
        if self.client is None:
            raise ImapUnavailable(f"{self.where}: not connected")
        return self.client

    def uids(self) -> list[int]:
        """UIDs of the mails in the watched folder not marked deleted, ascending."""
        with _translated(self.where):
            return sorted(int(u) for u in self._client().search(["UNDELETED"]))

    def fetch(self, uids: Sequence[int]) -> list[Fetched]:
        """Raw bytes (without setting \\Seen) and INTERNALDATE of `uids`."""
        with _translated(self.where):
            data = self._client().fetch(list(uids), ["BODY.PEEK[]", "INTERNALDATE"])
        fetched = []
        for uid in uids:
            item = data.get(uid)
            if item is None:  # expunged meanwhile by someone else
                continue
            arrived = _aware(item.get(b"INTERNALDATE"))
            fetched.append(Fetched(uid=uid, raw=item.get(b"BODY[]") or b"", internaldate=arrived))
        return fetched

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Move `uids` to `folder`: MOVE, else COPY + \\Deleted + UID EXPUNGE."""
        if not uids:
            return
        client = self._client()
        with _translated(f"{self.where} move to {folder!r}"):
            if "MOVE" in self.capabilities:
                client.move(list(uids), folder)
                return
            client.copy(list(uids), folder)
            client.add_flags(list(uids), [b"\\Deleted"], silent=True)
            if "UIDPLUS" in self.capabilities:
                client.uid_expunge(list(uids))
            else:
                client.expunge()

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
        if "IDLE" not in self.capabilities:
            stop.wait(seconds)
            return
        client = self._client()
        deadline = time.monotonic() + seconds
        with _translated(f"{self.where} IDLE"):
            client.idle()
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    responses = client.idle_check(timeout=min(0.5, seconds))
                    if any(_is_change(r) for r in responses):
                        break
            finally:
                client.idle_done()
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


def _is_change(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) > 1 and response[1] in (
        b"EXISTS", b"RECENT", b"EXPUNGE")


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def probe(settings: ImapSettings, call: Callable[[ImapMailbox], T]) -> T:
    """Connect, run `call`, close: for `maild check`."""
    box = ImapMailbox(settings)
    try:
        box.connect(create_folders=False)  # a check changes nothing
        return call(box)
    finally:
        box.close()

