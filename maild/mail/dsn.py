"""What a bounce says (RFC 3464 delivery status, and the plain-text notices of MTAs that
send none): which recipients failed, how (permanent 5.x.x or temporary 4.x.x), and which
mail of ours it was about. Pure and best effort: never raises on content; reads at most
`bounded.MAX_TEXT` characters of the notice's text."""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message

from maild.mail import structure
from maild.mail.bounded import bounded

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"(?:^|\s)([45])\d\d[ -]", re.MULTILINE)
_MSGID = re.compile(r"<(?=[^<>\s]{4,501}>)[^<>\s]{3,250}@[^<>\s]{1,250}+>")
# An address in prose: its local part starts where a word does (or after an '@'), and
# neither part holds an '@', so no character is read by more than two attempts.
_ADDRESS = re.compile(r"(?<![^\s<>;:\"'(),\[\]@])[^\s<>;:\"'(),\[\]@]++@"
                      r"[^\s<>;:\"'(),\[\]@]+\.[A-Za-z]{2,}+")
_BLANK_LINE = re.compile(r"\r?\n(?:[^\S\n]*+\n)++")  # a newline, blanks, a newline


@dataclass(frozen=True, slots=True)
class Failure:
    recipient: str
    status: str  # "5.1.1", or "" when the notice gives none
    action: str  # failed, delayed, delivered, relayed, expanded, or ""
    diagnostic: str

    @property
    def permanent(self) -> bool:
        if self.status:
            return self.status.startswith("5")
        return self.action == "failed"


@dataclass(frozen=True, slots=True)
class Report:
    failures: tuple[Failure, ...] = ()
    # Message-IDs the bounce names: of the returned original first, then any others.
    message_ids: tuple[str, ...] = field(default_factory=tuple)
    structured: bool = False  # an RFC 3464 message/delivery-status part was found

    @property
    def permanent(self) -> bool:
        return any(f.permanent for f in self.failures)


def read(raw: bytes, own_domain: str = "") -> Report:
    """The report in the bounce `raw`; `own_domain` helps pick our Message-IDs from text."""
    try:
        # (within the part caps, as parse reads it: a bounce may be a MIME bomb too)
        msg = email.message_from_bytes(structure.capped(raw), policy=policy.compat32)
    except Exception:
        return Report()
    failures: list[Failure] = []
    ids: list[str] = []
    structured = False
    texts: list[str] = []
    for part in _walk(msg):
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            structured = True
            failures.extend(_delivery_status(part))
        elif ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            first = inner[0] if isinstance(inner, list) and inner else None
            if isinstance(first, Message):
                ids.extend(_MSGID.findall(str(first.get("Message-ID", ""))))
        elif ctype in ("text/rfc822-headers", "text/global-headers"):
            text = _text(part)
            headers = email.message_from_string(text, policy=policy.compat32)
            ids.extend(_MSGID.findall(str(headers.get("Message-ID", ""))))
            texts.append(text)
        elif ctype.startswith("text/"):
            texts.append(_text(part))
    body = bounded("\n".join(texts))
    # Plain-text notices: Message-ID lines of the returned headers, our own IDs anywhere.
    for line in body.splitlines():
        if line.lower().lstrip("> ").startswith("message-id:"):
            ids.extend(_MSGID.findall(line))
    if own_domain:
        ids.extend(i for i in _MSGID.findall(body) if i.lower().endswith(f"@{own_domain}>"))
    for name in ("In-Reply-To", "References"):
        ids.extend(_MSGID.findall(str(msg.get(name, ""))))
    if not failures:
        failures = _from_text(body)
    return Report(tuple(failures), tuple(dict.fromkeys(ids)), structured)


def _walk(msg: Message) -> list[Message]:
    try:
        return list(msg.walk())
    except Exception:
        return [msg]


def _text(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        charset = part.get_content_charset() or "utf-8"
        try:
            return payload.decode(charset, "replace")
        except (LookupError, ValueError):  # (a name with a NUL is a ValueError)
            return payload.decode("utf-8", "replace")
    raw = part.get_payload()
    return raw if isinstance(raw, str) else ""


def _delivery_status(part: Message) -> list[Failure]:
    """Per-recipient blocks of a message/delivery-status part."""
    payload = part.get_payload()
    blocks: list[Message] = []
    if isinstance(payload, list):
        blocks = [b for b in payload if isinstance(b, Message)]
    elif isinstance(payload, str):  # some parsers leave it as text: split on blank lines
        blocks = [email.message_from_string(chunk, policy=policy.compat32)
                  for chunk in _BLANK_LINE.split(payload) if chunk.strip()]
    found = []
    for block in blocks:
        recipient = _address(str(block.get("Final-Recipient", "")
                                 or block.get("Original-Recipient", "")))
        if not recipient:
            continue
        status = _STATUS.search(str(block.get("Status", "")))
        found.append(Failure(
            recipient=recipient,
            status=".".join(status.groups()) if status else "",
            action=str(block.get("Action", "")).strip().lower(),
            diagnostic=" ".join(str(block.get("Diagnostic-Code", "")).split())[:500],
        ))
    return found


def _from_text(body: str) -> list[Failure]:
    """A notice without delivery-status: the first status code or SMTP reply, and the
    addresses it mentions (the caller keeps those of the mail we sent)."""
    status = _STATUS.search(body)
    code = _SMTP_CODE.search(body)
    status_text = ".".join(status.groups()) if status else (f"{code.group(1)}.0.0" if code else "")
    action = {"5": "failed", "4": "delayed"}.get(status_text[:1], "")
    return [Failure(a, status_text, action, "")
            for a in dict.fromkeys(m.lower() for m in _ADDRESS.findall(body))][:50]


def _address(value: str) -> str:
    """'rfc822; user@example.com' → 'user@example.com'."""
    _, _, addr = value.rpartition(";")
    addr = addr.strip().strip("<>").strip().lower()
    return addr if "@" in addr else ""
