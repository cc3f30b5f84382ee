"""Subjects: strip reply/forward prefixes in German and English (`Re:`, `AW:`, `WG:` …)."""

from __future__ import annotations

import re

_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|antw|antwort|sv|fw|fwd|wg|wtr|tr|vs)(?:\s*\[\d+\]|\s*\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)


def strip_prefixes(subject: str) -> str:
    """'AW: Re[2]: WG: Drucker' → 'Drucker'."""
    return _PREFIX.sub("", subject).strip()
