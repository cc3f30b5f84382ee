"""Turn raw mail bytes into a typed `InboundMail`; best effort, never raises on content."""

from __future__ import annotations

import email
import email.header
import email.utils
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message
from html import unescape
from typing import Any

from inscriptis import get_text

from maild.mail import structure

# A Message-ID we copy into our headers and logs: `<…>` of printable ASCII without spaces,
# at most a header line (998) long; anything else is treated as absent.
MAX_MSGID = 998
_ID_CHARS = r"[\x21-\x3b\x3d\x3f-\x7e]"  # printable ASCII but space, < and >
_MSGID = re.compile(rf"<{_ID_CHARS}{{1,{MAX_MSGID - 2}}}>")
_BARE_MSGID = re.compile(rf"{_ID_CHARS}{{1,{MAX_MSGID - 2}}}")
MAX_REFERENCES = 50  # the newest; the rest of a long thread adds nothing
_SEPARATOR = re.compile(rb"\r?\n\r?\n")
_TAG = re.compile(r"<[^<>]++>")  # an HTML tag, for when the HTML parser gives up
_FALLBACK_CHARSETS = ("utf-8", "cp1252")
_TRACE = ("received", "authentication-results")
# An address (checked whole with fullmatch); starting only where a word starts and with
# possessive parts it stays linear even when searched.
_ADDRESS_CHAR = r"[^\s@<>()\[\],;:\\\"\x00-\x1f\x7f]"
_ADDRESS = re.compile(rf"(?<!{_ADDRESS_CHAR}){_ADDRESS_CHAR}++@{_ADDRESS_CHAR}++")


@dataclass(frozen=True, slots=True)
class Part:
    """One attachment or inline file of a mail, decoded."""

    filename: str
    content_type: str
    data: bytes
    inline: bool
    content_id: str


@dataclass(frozen=True, slots=True)
class InboundMail:
    message_id: str | None
    subject: str
    from_addr: str
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: str
    date: datetime | None
    in_reply_to: str | None
    references: tuple[str, ...]
    headers: dict[str, str]
    content_type: str
    text: str
    html: str
    attachments: tuple[Part, ...]
    header_count: int
    has_body_separator: bool
    defects: tuple[str, ...]
    address_from: str = "From"  # the header the reply address came from ('' when none)
    encrypted: bool = False  # S/MIME or PGP/MIME encrypted (or opaque-signed): unreadable
    # Received and Authentication-Results headers in order, top first: (lower name, value).
    trace: tuple[tuple[str, str], ...] = ()
    # MIME parts not read: the mail had more than structure.MAX_PARTS parts or nested
    # deeper than MAX_DEPTH; they are in the raw mail only.
    parts_left_out: int = 0


class _ParsedOnce(HeaderRegistry):
    """The stdlib's header classes, each header value parsed once per mail: the stdlib
    parses a header anew on every read (`get_content_type` alone reads Content-Type a
    dozen times per mail, and `get_body` more). One per mail, so the parsed values go
    with the mail: nothing of one mail is kept for the next. A parsed value weighs some
    hundred times its text, so only short values are kept, up to a total per mail: a
    mail of many parts or long headers is parsed as the stdlib does, not held."""

    def __init__(self) -> None:
        super().__init__()
        self.parsed: dict[tuple[str, str], BaseHeader] = {}
        self.kept = 0  # characters of the values kept

    def __call__(self, name: str, value: str) -> BaseHeader:
        key = (name, value)
        found = self.parsed.get(key)
        if found is None:
            found = super().__call__(name, value)
            if len(value) <= _KEEP_VALUE and self.kept + len(value) <= _KEEP_TOTAL:
                self.parsed[key] = found
                self.kept += len(value)
        return found


_KEEP_VALUE = 1000  # characters: a Content-Type, a Content-Disposition with a long name
_KEEP_TOTAL = 100_000  # characters per mail: some 50 MB of parse trees at the most


def mail_policy() -> policy.EmailPolicy[EmailMessage]:
    """`policy.default`, with header values parsed once (a new one for each mail)."""
    return policy.default.clone(header_factory=_ParsedOnce())


def parse(raw: bytes) -> InboundMail:
    """Parse `raw` with the stdlib (policy.default) and pull out what maild needs; of a
    mail with too many or too deeply nested parts, the part before the cap."""
    shape = structure.scan(raw)
    msg = email.message_from_bytes(structure.capped(raw, shape), policy=mail_policy())
    assert isinstance(msg, EmailMessage)
    headers = _headers(msg)
    named = _address_headers(msg)
    from_name, from_addr, address_from = _sender(headers, named)
    text_part, html_part = _body_parts(msg)
    html = _text_of(html_part) if html_part is not None else ""
    text = _text_of(text_part) if text_part is not None else ""
    if not html and (text_part is None or text_part is msg) and _broken_multiparts(msg):
        text = _salvage(msg) or text
    if not text.strip() and html:
        text = html_to_text(html)
    text, html = _no_nul(text), _no_nul(html)
    return InboundMail(
        message_id=_one_msgid(headers.get("message-id", "")),
        subject=_printable(" ".join(headers.get("subject", "").split())),
        from_addr=from_addr,
        from_name=_no_nul(from_name),
        to=_addresses(named.get("to", "")),
        cc=_addresses(named.get("cc", "")),
        reply_to=_first_address(named.get("reply-to", ""))[1],
        date=_date(headers.get("date", "")),
        in_reply_to=_one_msgid(headers.get("in-reply-to", "")),
        references=tuple(_MSGID.findall(headers.get("references", "")))[-MAX_REFERENCES:],
        headers=headers,
        content_type=_content_type(msg),
        text=text,
        html=html,
        attachments=tuple(_attachments(msg, {id(text_part), id(html_part)})),
        header_count=len(msg.keys()),
        has_body_separator=_SEPARATOR.search(raw) is not None,
        defects=tuple(_defects(msg)),
        address_from=address_from,
        encrypted=_encrypted(msg),
        trace=tuple((k.lower(), _unfold(str(v))[:2000]) for k, v in msg.raw_items()
                    if k.lower() in _TRACE),
        parts_left_out=shape.parts_left_out,
    )


def _sender(headers: dict[str, str], named: dict[str, str]) -> tuple[str, str, str]:
    """(name, address, header it came from): From, else Reply-To, else Sender, else the
    address in a From without brackets (`Name name@host`). The address is one the mail
    names (`named`: outside encoded words), the name is read from the decoded header."""
    decoded, from_header = headers.get("from", ""), named.get("from", "")
    addr = _first_address(from_header)[1]
    if addr:
        name, same = _first_address(decoded)
        return (name if same == addr else _without(_display_name(decoded), addr)), addr, "From"
    loose = _loose_address(from_header)
    display = _without(_display_name(decoded), loose) if loose else _display_name(decoded)
    for header_name in ("Reply-To", "Sender"):
        addr = _first_address(named.get(header_name.lower(), ""))[1]
        if addr:
            return display, addr, header_name
    return (display, loose, "From") if loose else (display, "", "")


def _without(name: str, addr: str) -> str:
    return " ".join(name.replace(addr, " ").split()).strip(" <>\"'")


# What of an address header may name an address: not an encoded word (RFC 2047 allows
# none in an address, and decoded it names whoever the sender typed in), not a run of
# ISO-2022-JP (JIS) bytes, whose escape `ESC ( B` would open a comment. Each becomes an
# empty quoted string (a display name), in linear time.
_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,75}+\?[bBqQ]\?[^?\s]{0,998}+\?=")
_JIS_RUN = re.compile(r"\x1b\$[@B][^\x1b]{0,998}+(?:\x1b\([BJ]|$)")


def _address_headers(msg: Message) -> dict[str, str]:
    """The first From, Reply-To, Sender, To and Cc as written, without encoded words and
    JIS runs: the addresses the mail names."""
    found: dict[str, str] = {}
    for name, raw in msg.raw_items():
        key = name.lower()
        if key in _ADDRESS_HEADERS and key not in found:
            value = _unfold(_capped(key, str(raw)))
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            found[key] = _JIS_RUN.sub('""', _ENCODED_WORD.sub('""', value))
    return found


_ADDRESS_HEADERS = frozenset({"from", "reply-to", "sender", "to", "cc"})


def _display_name(value: str) -> str:
    name = email.utils.parseaddr(value[:998])[0] or value[:998]
    return " ".join(name.replace("<>", "").split()).strip(" \"'")[:300]


def _loose_address(value: str) -> str:
    """An address standing in a header without the brackets it needs."""
    for word in value[:998].replace("<", " ").replace(">", " ").split():
        word = word.strip("\"'(),;").lower()
        if plausible_address(word):
            return word
    return ""


_ENCRYPTED = {"multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime"}


def _encrypted(msg: Message) -> bool:
    """Encrypted mail we cannot read: PGP/MIME, S/MIME enveloped (or opaque-signed) data."""
    return _content_type(msg) in _ENCRYPTED


def _broken_multiparts(msg: Message) -> list[Message]:
    """Parts declared multipart whose boundary was never found (kept as one string)."""
    found: list[Message] = []
    stack = [msg]
    while stack and len(found) < 20:
        part = stack.pop()
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(p for p in reversed(payload) if isinstance(p, Message))
        elif _content_type(part).startswith("multipart/"):
            found.append(part)
    return found


_DELIMITER = re.compile(r"--([0-9A-Za-z'()+_,./:=?-]{1,70})[ \t]*")


def _salvage(msg: Message) -> str:
    """The text of a mail whose MIME structure broke: a multipart whose declared boundary
    never appears is split on the boundary its body does use; else its text as it is."""
    for part in _broken_multiparts(msg):
        body = _payload_bytes(part).decode("utf-8", "replace")
        for line in body[:100_000].splitlines()[:200]:
            found = _DELIMITER.fullmatch(line)
            if found:
                inner = email.message_from_string(
                    f'Content-Type: multipart/mixed; boundary="{found.group(1)}"\n\n{body}',
                    policy=mail_policy())
                assert isinstance(inner, EmailMessage)
                text_part, html_part = _body_parts(inner)
                if text_part is not None and text_part is not inner:
                    return _text_of(text_part)
                if html_part is not None:
                    return html_to_text(_text_of(html_part))
                break
        if body.strip():
            return body
    return ""


def _headers(msg: Message) -> dict[str, str]:
    """First value of each header, RFC 2047 words decoded; no header objects (they are slow)."""
    found: dict[str, str] = {}
    for name, raw in msg.raw_items():
        key = name.lower()
        if key not in found:
            found[key] = _no_nul(_lenient_decode(_unfold(_capped(key, str(raw)))))
    return found


MAX_HEADER = 16_000  # characters of one header value we decode (the stdlib's are quadratic)


def _capped(key: str, value: str) -> str:
    """A header value cut to MAX_HEADER (References keeps its newest end)."""
    if len(value) <= MAX_HEADER:
        return value
    return value[-MAX_HEADER:] if key == "references" else value[:MAX_HEADER]


def _printable(value: str) -> str:
    """Without control and format characters (category C*): a subject is copied into the
    headers of our mails, where they make invalid or misleading mail."""
    if value.isprintable():
        return value
    return "".join(c for c in value if c.isprintable() or c == " ")


def _no_nul(value: str) -> str:
    """NUL never means anything in mail text, and PostgreSQL cannot store it."""
    return value.replace("\x00", "") if "\x00" in value else value


def _unfold(value: str) -> str:
    return value.replace("\r\n", "").replace("\n", "").strip() if "\n" in value else value.strip()


def header(msg: Message, name: str) -> str:
    """The decoded value of header `name` ('' when absent), read leniently from the raw
    value: the stdlib's structured header parser is quadratic on long encoded words."""
    for key, raw in msg.raw_items():
        if key.lower() == name.lower():
            return _no_nul(_lenient_decode(_unfold(_capped(key.lower(), str(raw)))))
    return ""


def _lenient_decode(raw: str) -> str:
    if "\x1b$" in raw:  # ISO-2022-JP (JIS) written raw, as old Japanese mailers do
        try:
            raw = raw.encode("ascii").decode("iso-2022-jp")
        except (UnicodeError, ValueError):
            pass
    if "=?" not in raw:
        return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        chunks = email.header.decode_header(raw)
    except Exception:
        return raw
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
        else:
            out.append(decode_bytes(chunk, charset))
    return "".join(out)


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset, then UTF-8, then cp1252; never raises."""
    for name in (charset, *_FALLBACK_CHARSETS):
        if not name:
            continue
        try:
            return data.decode(name)
        except (LookupError, ValueError):  # (a name with a NUL is a ValueError)
            continue
    return data.decode("latin-1")


def plausible_address(addr: str) -> bool:
    """One @, something on both sides, nothing SMTP cannot carry (spaces, brackets, …)."""
    return _ADDRESS.fullmatch(addr) is not None


# Providers that ignore the dots of the local part (and whose two domains are one).
DOTLESS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def person(addr: str) -> str:
    """The mailbox behind `addr`: lower case, without a +tag, and for Gmail without the
    dots and with one domain, so `Anna.B+x@googlemail.com` is `annab@gmail.com`. What
    answer limits count and blocks hold on (bounces stay per address: a provider that
    drops plus addresses may bounce `anna+x@` and deliver `anna@`)."""
    local, at, domain = addr.strip().lower().rpartition("@")
    if not at or not local:
        return addr.strip().lower()
    base = local.split("+", 1)[0] or local
    if domain in DOTLESS:
        base, domain = base.replace(".", "") or base, DOTLESS[domain]
    return f"{base}@{domain}"


def _first_address(value: str) -> tuple[str, str]:
    pairs = [(n, a) for n, a in email.utils.getaddresses([value]) if plausible_address(a)]
    if not pairs:
        return "", ""
    name, addr = pairs[0]
    return name.strip(), addr.strip().lower()


def _addresses(value: str) -> tuple[str, ...]:
    pairs = email.utils.getaddresses([value])
    return tuple(a.strip().lower() for _, a in pairs if plausible_address(a.strip()))


def _one_msgid(value: str) -> str | None:
    found = _MSGID.search(value)
    if found:
        return found.group(0)
    value = value.strip()
    return f"<{value}>" if _BARE_MSGID.fullmatch(value) else None


def valid_message_id(value: str) -> bool:
    """Whether `value` is a Message-ID we may copy into our headers and logs."""
    return _MSGID.fullmatch(value) is not None


def _date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else None


def _content_type(msg: Message) -> str:
    try:
        return msg.get_content_type()
    except Exception:
        return "text/plain"


def _body_parts(msg: EmailMessage) -> tuple[Message | None, Message | None]:
    try:
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
    except Exception:
        return (msg if not msg.is_multipart() else None), None
    if text is None and html is None and not msg.is_multipart():
        # A text part, or a multipart whose boundary was never found: the parser keeps
        # the body as one string, which is the best text there is.
        if msg.get_content_maintype() in {"text", "multipart"}:
            return msg, None
    return text, html


def _text_of(part: Message) -> str:
    charset = None
    try:
        charset = part.get_content_charset()
    except Exception:
        pass
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        # 8-bit text without a declared charset (old clients): undecodable as ASCII, so
        # try UTF-8 and cp1252 on the bytes rather than keep replacement characters.
        if isinstance(content, str) and not (
                "\ufffd" in content and charset in (None, "us-ascii")):
            return content
    except Exception:
        pass
    payload = _payload_bytes(part)
    return decode_bytes(payload, None if charset == "us-ascii" else charset)


def _payload_bytes(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def html_to_text(html: str) -> str:
    """Readable text of `html`; deeply nested markup (which the HTML parser gives up on)
    falls back to the text between the tags."""
    text = ""
    if len(html) <= MAX_HTML:  # the HTML renderer takes ~150 times the markup in memory
        try:
            text = str(get_text(html)).strip()
        except Exception:
            text = ""
    if text or not html.strip():
        return text
    return " ".join(unescape(_TAG.sub(" ", html)).split())


MAX_HTML = 1_000_000  # characters rendered as HTML; a larger body is read between the tags


def _attachments(msg: Message, body_ids: set[int]) -> list[Part]:
    found: list[Part] = []
    _collect(msg, body_ids, found)
    return found


def _collect(part: Message, body_ids: set[int], found: list[Part]) -> None:
    if id(part) in body_ids:
        return
    ctype = _content_type(part)
    if part.is_multipart() and ctype != "message/rfc822":
        payload = part.get_payload()
        for child in payload if isinstance(payload, list) else []:
            if isinstance(child, Message):
                _collect(child, body_ids, found)
        return
    disposition = _disposition(part)
    filename = _filename(part)
    if ctype.startswith(("text/", "multipart/")) and not filename and disposition != "attachment":
        return  # body text, or a multipart whose boundary broke (its text is salvaged)
    data = _rfc822_bytes(part) if ctype == "message/rfc822" else _payload_bytes(part)
    if ctype == "message/rfc822" and not filename:
        filename = _attached_subject(part) + ".eml"
    found.append(Part(
        filename=filename,
        content_type=ctype,
        data=data,
        inline=disposition == "inline",
        content_id=header(part, "content-id").strip(),
    ))


def _disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:
        return ""


def _filename(part: Message) -> str:
    try:
        return str(part.get_filename() or "")
    except Exception:
        return ""


def _rfc822_bytes(part: Message) -> bytes:
    payload: Any = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if isinstance(inner, Message):
        try:
            return inner.as_bytes(policy=policy.SMTP)
        except Exception:
            return bytes(inner)
    return _payload_bytes(part)


def _attached_subject(part: Message) -> str:
    payload: Any = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    subject = header(inner, "subject") if isinstance(inner, Message) else ""
    return " ".join(subject.split())[:100] or "forwarded message"


def _defects(msg: Message) -> list[str]:
    names: list[str] = []
    stack = [msg]
    while stack:
        part = stack.pop()
        names.extend(type(d).__name__ for d in getattr(part, "defects", []))
        payload = part.get_payload() if part.is_multipart() else None
        if isinstance(payload, list):
            stack.extend(p for p in payload if isinstance(p, Message))
    return names
