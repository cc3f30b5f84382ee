"""The customer's new words, apart from quoted history and signature (German and English)."""

from __future__ import annotations

import logging
import re
from functools import cache

from mailparser_reply import EmailReplyParser

log = logging.getLogger(__name__)

# Separator lines the parser leaves behind at the end of the new part.
_TRAILING_SEPARATOR = re.compile(
    r"(?:\n\s*(?:-{3,}\s*(?:Original Message|Ursprüngliche Nachricht|Forwarded message"
    r"|Weitergeleitete Nachricht)\s*-{3,}|_{10,}|-{10,})\s*)+\Z",
    re.IGNORECASE,
)


@cache
def _parser() -> EmailReplyParser:
    return EmailReplyParser(languages=["en", "de"])


def latest_reply(text: str) -> str:
    """The new part of `text` (quote headers such as 'Am … schrieb …:', 'On … wrote:',
    Outlook's 'Von:/Gesendet:' and '-----Ursprüngliche Nachricht-----' end it); the whole
    text when nothing can be told apart. The full original is always kept elsewhere."""
    if not text.strip():
        return ""
    try:
        reply = str(_parser().read(text).latest_reply or "").strip()
    except Exception as exc:  # a third-party parser must not cost us the mail
        log.debug("reply parser failed, keeping the whole text: %s", exc)
        return text.strip()
    reply = _TRAILING_SEPARATOR.sub("", reply).strip()
    return reply or text.strip()
