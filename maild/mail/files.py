"""What becomes of a mail's attachments: safe names, sniffed types, TNEF unpacked, limits.

Pure: parts in, a plan out. Each planned file says whether its bytes are stored (within
the per-file and per-mail limits) and, if not, why; the caller stores and records them.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import unicodedata
from dataclasses import dataclass

import puremagic

from maild.mail import tnef
from maild.mail.parse import Part

log = logging.getLogger(__name__)
# tnefparse logs a warning per property it skips (billions, in a hostile file): its
# findings reach our log as one line per file instead.
logging.getLogger("tnefparse").setLevel(logging.CRITICAL)
TNEF = tnef.read  # the decoder: tnefparse, bounded

_TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}
_GENERIC = {"application/octet-stream", "application/zip", "text/plain", ""}
MAX_NAME = 150


@dataclass(frozen=True, slots=True)
class Limits:
    max_file_bytes: int
    max_mail_bytes: int
    max_count: int = 100  # files per mail; the ones after it are recorded, not stored


@dataclass(frozen=True, slots=True)
class Planned:
    filename: str
    content_type: str
    declared_type: str
    data: bytes
    sha256: str
    size: int
    inline: bool
    store: bool
    note: str = ""


def safe_filename(name: str, fallback: str = "attachment") -> str:
    """A name that cannot escape a folder or fool a terminal: no path, no control or
    bidi characters, no leading dots, bounded length with the extension kept."""
    base = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    cleaned = cleaned.lstrip(". ").rstrip(". ")
    if len(cleaned) > MAX_NAME:
        stem, dot, ext = cleaned.rpartition(".")
        ext = ext[:16] if dot and stem else ""
        cleaned = cleaned[:MAX_NAME - len(ext) - 1].rstrip() + (f".{ext}" if ext else "")
    return cleaned or fallback


def sniff(data: bytes, declared: str) -> str:
    """The content's real MIME type where it can be told, else the declared one."""
    try:
        found = str(puremagic.from_string(data[:8192], mime=True) or "")
    except (puremagic.PureError, ValueError, IndexError):
        found = ""
    declared = declared.lower()
    if not found:
        return declared or "application/octet-stream"
    if declared and declared not in _GENERIC and (
            found.startswith("application/vnd.openxmlformats") or found == "application/zip"):
        return declared  # an Office file is a ZIP; the declared type says which one
    return found.lower()


def unpack_tnef(part: Part) -> list[Part]:
    """The files inside a winmail.dat (TNEF) part; the part itself if it cannot be read
    (damaged, or counts and lengths that do not fit its size: see `tnef.sound`)."""
    try:
        decoded = TNEF(part.data)
        files = [Part(filename=a.long_filename() or a.name or "attachment",
                      content_type="", data=bytes(a.data), inline=False, content_id="")
                 for a in decoded.attachments]
    except Exception as exc:  # tnefparse raises assorted errors on damaged data
        log.info("winmail.dat not readable, kept as it is: %s", exc)
        return [part]
    return files or [part]


def forwarded_subject(part: Part) -> str | None:
    """The subject of an attached mail (message/rfc822 or a .eml file), else None."""
    if part.content_type != "message/rfc822" and not part.filename.lower().endswith(".eml"):
        return None
    head = part.data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0][:20000]
    try:
        msg = email.message_from_bytes(head + b"\n\n", policy=email.policy.default)
        return " ".join(str(msg.get("subject", "")).split())[:200]
    except Exception:  # a broken header is no reason to lose the attachment
        return ""


def _is_tnef(part: Part) -> bool:
    return part.content_type in _TNEF_TYPES or part.filename.lower() == "winmail.dat"


def plan(parts: tuple[Part, ...], limits: Limits) -> list[Planned]:
    """Decide, per file, its name, type and whether its bytes are kept."""
    expanded: list[Part] = []
    for part in parts:
        expanded.extend(unpack_tnef(part) if _is_tnef(part) else [part])
    planned: list[Planned] = []
    kept = 0
    for number, part in enumerate(expanded, start=1):
        if number > limits.max_count:
            planned.append(_over_count(part, number, limits.max_count))
            continue
        size = len(part.data)
        note = ""
        kept_it = False
        if size > limits.max_file_bytes:
            note = f"too large: {_mb(size)} over the limit of {_mb(limits.max_file_bytes)}"
        elif kept + size > limits.max_mail_bytes:
            note = f"mail limit of {_mb(limits.max_mail_bytes)} reached"
        else:
            kept += size
            kept_it = True
            subject = forwarded_subject(part)
            if subject is not None:
                note = f"forwarded mail: {subject or '(no subject)'}"
        planned.append(Planned(
            filename=safe_filename(part.filename, f"attachment-{number}"),
            content_type=sniff(part.data, part.content_type)[:255],
            declared_type=part.content_type[:255],
            data=part.data, sha256=hashlib.sha256(part.data).hexdigest(), size=size,
            inline=part.inline, store=kept_it, note=note,
        ))
    return planned


def _over_count(part: Part, number: int, max_count: int) -> Planned:
    """A file after the first `max_count` of a mail: recorded by name and size only."""
    return Planned(
        filename=safe_filename(part.filename, f"attachment-{number}"),
        content_type=(part.content_type or "application/octet-stream")[:255],
        declared_type=part.content_type[:255], data=b"", sha256="", size=len(part.data),
        inline=part.inline, store=False, note=f"limit of {max_count} files per mail reached",
    )


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def left_out(filename: str, content_type: str, size: int) -> Planned:
    """A file of a mail too large to fetch whole: recorded by name and size, not stored."""
    return Planned(
        filename=safe_filename(filename), content_type=content_type[:255],
        declared_type=content_type[:255], data=b"", sha256="", size=size, inline=False,
        store=False, note="not fetched: the mail was over the size limit for a whole mail",
    )
