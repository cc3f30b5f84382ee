"""A mail as the IMAP adapter hands it over: the bytes and what the server said of them.

Plain values, shared by the IMAP adapter (which makes them) and the intake (which takes
them), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Omitted:
    """A part of a mail too large to fetch whole that was not fetched."""

    filename: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class Fetched:
    """A mail as fetched from IMAP (in part, when `omitted` lists what was left out)."""

    uid: int
    raw: bytes
    internaldate: datetime | None
    omitted: tuple[Omitted, ...] = ()
