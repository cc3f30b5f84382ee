"""How much of a mail's text the extractors read: every mail may be hostile, so each one
(facts, reply splitting, bounce reading, agent commands) sees at most the first
`MAX_TEXT` characters, in lines of at most `MAX_LINE` characters."""

from __future__ import annotations

MAX_TEXT = 100_000  # characters of text an extractor reads (the whole text is stored)
MAX_LINE = 4_000  # characters per line an extractor reads


def head(text: str, limit: int = MAX_TEXT) -> str:
    """The first `limit` characters of `text`."""
    return text if len(text) <= limit else text[:limit]


def bounded(text: str) -> str:
    """The first MAX_TEXT characters of `text`, each line cut at MAX_LINE characters."""
    text = head(text)
    lines = text.split("\n")
    if all(len(line) <= MAX_LINE for line in lines):
        return text
    return "\n".join(line[:MAX_LINE] for line in lines)
