"""The customer's new words, apart from quoted history and signature (German and English)."""

from __future__ import annotations

import logging
import re
from functools import cache

from mailparser_reply import EmailReplyParser

from maild.mail.bounded import head

log = logging.getLogger(__name__)

# A separator line the parser leaves behind at the end of the new part.
_SEPARATOR_LINE = re.compile(
    r"-{3,}+\s*+(?:Original Message|Ursprüngliche Nachricht|Forwarded message"
    r"|Weitergeleitete Nachricht)\s*+-{3,}+|_{10,}+|-{10,}+",
    re.IGNORECASE,
)
# mail-parser-reply's own normalisation: a line of 32 '_' or '-' after a blank line goes.
_OUTLOOK_SEPARATOR = re.compile(r"([^\n])\n{2,}+ ?[_-]{32,}+")
# Lines that may take part in a quote header ("On … wrote:", "Am … schrieb …:", Outlook's
# "From:/Von:" block, "-----Original Message-----"). The parser's own patterns take time
# cubic in a line's length, so it sees only these lines (short, and not too many of them);
# every other line reaches it as a one-character stand-in.
_HEADER_HINT = re.compile(
    r"wrote|schrieb|original message|^[>* ]*+(?:on|am)\b"
    r"|^[>* ]*+(?:from|sent|to|subject|date|cc|organi[sz]ation|von|gesendet|an|betreff"
    r"|datum)[ *]*+:",
    re.IGNORECASE,
)
_HINT_LINE = 200  # longer lines are no quote headers
_MAX_HINTS = 64  # lines shown to the parser as they are, per mail
_MAX_BLANKS = 3  # a longer run of blank lines reaches the parser as this many
_STAND_IN = "x"


@cache
def _parser() -> EmailReplyParser:
    return EmailReplyParser(languages=["en", "de"])


def latest_reply(text: str) -> str:
    """The new part of `text` (quote headers such as 'Am … schrieb …:', 'On … wrote:',
    Outlook's 'Von:/Gesendet:' and '-----Ursprüngliche Nachricht-----' end it); the whole
    text when nothing can be told apart. The full original is always kept elsewhere.
    Reads at most the first `bounded.MAX_TEXT` characters."""
    text = head(text)
    if not text.strip():
        return ""
    lines = _normalised(text)
    shadow, origin = _shadow(lines)
    shadow_text = "\n".join(shadow)
    try:
        found = str(_parser().read(shadow_text).latest_reply or "").strip()
    except Exception as exc:  # a third-party parser must not cost us the mail
        log.debug("reply parser failed, keeping the whole text: %s", exc)
        return text.strip()
    reply = _without_trailing_separators(_original(found, shadow_text, origin, lines))
    return reply or text.strip()


def _normalised(text: str) -> list[str]:
    """The lines of `text` as the parser normalises them (stripped, Outlook rules gone)."""
    stripped = "\n".join(line.strip() for line in text.replace("\r\n", "\n").split("\n"))
    return _OUTLOOK_SEPARATOR.sub("\\1\n", stripped, count=8).split("\n")


def _shadow(lines: list[str]) -> tuple[list[str], list[int]]:
    """What the parser is shown, and for each of its lines the index of the line it
    stands for."""
    shadow: list[str] = []
    origin: list[int] = []
    blanks = hints = 0
    for index, line in enumerate(lines):
        blanks = blanks + 1 if not line else 0
        if blanks > _MAX_BLANKS:
            continue
        hint = bool(line) and len(line) <= _HINT_LINE and hints < _MAX_HINTS \
            and _HEADER_HINT.search(line) is not None
        hints += hint
        shadow.append(line if hint or not line else _STAND_IN)
        origin.append(index)
    return shadow, origin


def _original(found: str, shadow_text: str, origin: list[int], lines: list[str]) -> str:
    """The lines of the text that `found` (a part of the parser's view) stands for."""
    start = shadow_text.find(found) if found else -1
    if start < 0:
        return ""
    first = shadow_text.count("\n", 0, start)
    last = shadow_text.count("\n", 0, start + len(found))
    return "\n".join(lines[origin[first]:origin[last] + 1]).strip()


def _without_trailing_separators(reply: str) -> str:
    """`reply` without the separator lines ('-----Original Message-----', '______') and
    blank lines at its end (the first line always stays)."""
    lines = reply.split("\n")
    end = len(lines)
    while end > 1 and (not lines[end - 1].strip()
                       or _SEPARATOR_LINE.fullmatch(lines[end - 1].strip())):
        end -= 1
    return "\n".join(lines[:end]).strip()


REPLY_ABOVE = "please reply above this line"  # the marker line atop every mail to agents
# "… schrieb …:" ending the line, or "Von:"/"From:" starting it. From a keyword the scan
# stops at the next keyword (that one is tried on its own), so each character is read once.
_QUOTE_HEADER = re.compile(r"(schrieb|wrote|a écrit|escribió)"
                           r"(?:(?!schrieb|wrote|a écrit|escribió)[^:])*+:\s*+$|^\s*+(von|from):",
                           re.IGNORECASE)


def agent_words(text: str) -> str:
    """What the agent wrote: above our "reply above this line" marker (whatever the mail
    client did with the quote, the notification's internal text never reaches a customer),
    then without quoted history and signature."""
    lines = text.replace("\r\n", "\n").split("\n")
    for index, line in enumerate(lines):
        if REPLY_ABOVE in line.lower():
            lines = lines[:index]
            while lines and (not lines[-1].strip() or _QUOTE_HEADER.search(lines[-1])):
                lines.pop()  # the client's "Am … schrieb …:" before the quoted marker
            break
    return latest_reply("\n".join(lines))
