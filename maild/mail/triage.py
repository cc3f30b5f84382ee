"""Priority by defined criteria: availability and stability first (outage words → urgent)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from maild.vocab import Priority

PRIORITIES = tuple(str(p) for p in Priority)


@lru_cache(maxsize=8)
def _pattern(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    if not keywords:
        return None
    words = "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE)


def priority(subject: str, text: str, urgent_keywords: Sequence[str],
             tier_priority: str = "") -> tuple[Priority, str]:
    """(priority, why): urgent on an outage word, else the customer tier's, else normal."""
    pattern = _pattern(tuple(urgent_keywords))
    found = pattern.search(f"{subject}\n{text}") if pattern else None
    if found:
        return Priority.URGENT, f"keyword {found.group(0)!r}"
    if tier_priority in PRIORITIES:
        return Priority(tier_priority), "customer tier"
    return Priority.NORMAL, "default"
