"""How many MIME parts a mail has and how deep they nest, read from its raw bytes in one
linear pass before the stdlib parses it: a mail beyond `MAX_PARTS` or `MAX_DEPTH` is
parsed only up to the delimiter line where it goes over (the rest stays in the raw mail
we keep), so no mail of many or deeply nested parts costs the parser more than the caps.

The pass follows the boundaries a mail declares (`boundary=` anywhere, a declaration in
body text included) and the delimiter lines that use them, as the stdlib's parser does;
it may count a part too many, never one too few.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PARTS = 1_000  # MIME parts parsed per mail (delimiter lines of declared boundaries)
MAX_DEPTH = 20  # multiparts and attached mails (message/*) nested in each other
# Delimiter lines (`--boundary`, `--boundary--`; case counts) are found in the mail, the
# boundary parameters and the headers saying message/* (the stdlib parses such a part as
# a mail of its own, recursively) in its lower-case copy. Each pattern starts with a
# literal (the engine skips ahead to it) and is bounded in length.
_DELIMITER = re.compile(rb"\n--([^\r\n]{1,80}?)[ \t]*\r?$", re.MULTILINE)
_BOUNDARY = re.compile(rb'boundary[ \t]*=[ \t]*(?:"([^"\r\n]{1,80})"|([^\s;"]{1,80}))')
_MESSAGE = re.compile(rb"\ncontent-type:\s{0,80}message/")
_LINE, _DECLARED, _MESSAGE_PART = 0, 1, 2
Event = tuple[int, int, bytes]  # (offset, kind, boundary)


@dataclass(frozen=True, slots=True)
class Shape:
    """What the pass found: parts and the deepest nesting, and where to cut (0: nowhere)."""

    parts: int  # parts before the cut (all of them when there is none)
    depth: int  # the deepest nesting before the cut
    cut: int = 0  # the offset of the first line over a cap (0: none)
    parts_left_out: int = 0  # parts from the cut on


class _Walk:
    """The open multiparts (their boundaries, outermost first) and the attached mails
    open inside them (each as the number of multiparts open where it began)."""

    def __init__(self) -> None:
        self.declared: set[bytes] = set()  # every boundary declared
        self.stack: list[bytes] = []
        self.messages: list[int] = []

    @property
    def depth(self) -> int:
        return len(self.stack) + len(self.messages)

    def delimiter(self, line: bytes) -> bool:
        """Follow one delimiter line: whether it starts a part."""
        closing = line.endswith(b"--") and line[:-2] in self.stack
        name = line[:-2] if closing else line
        if name in self.stack:  # a part of an open multipart ends (and what it held)
            level = self.stack.index(name)
            self.messages = [m for m in self.messages if m <= level]
            del self.stack[level if closing else level + 1:]
            return not closing
        if name in self.declared:  # the first part of a new multipart
            self.stack.append(name)
            return True
        return False


def capped(raw: bytes, shape: Shape | None = None) -> bytes:
    """What of `raw` any parser of ours reads: all of it, or the part before the cut."""
    shape = shape or scan(raw)
    return raw[:shape.cut] if shape.cut else raw


def events(raw: bytes) -> list[Event]:
    """The mail's delimiter lines, boundary parameters and message/* headers, in order."""
    lower = raw.lower()  # (the same offsets: ASCII letters only)
    found: list[Event] = [(m.start() + 1, _LINE, m.group(1)) for m in _DELIMITER.finditer(raw)]
    for m in _BOUNDARY.finditer(lower):
        group = 1 if m.start(1) >= 0 else 2
        found.append((m.start(), _DECLARED, raw[m.start(group):m.end(group)]))
    found.extend((m.start() + 1, _MESSAGE_PART, b"") for m in _MESSAGE.finditer(lower))
    del lower
    found.sort()
    return found


def scan(raw: bytes, max_parts: int = MAX_PARTS, max_depth: int = MAX_DEPTH) -> Shape:
    """The shape of `raw`'s MIME structure, in time linear in its size (the nesting
    followed is at most `max_depth` + 1 deep; after the cut, parts are only counted)."""
    walk = _Walk()
    parts = depth = 0
    found = events(raw)
    for number, (offset, kind, name) in enumerate(found):
        if kind == _DECLARED:
            walk.declared.add(name)
            continue
        if kind == _MESSAGE_PART:
            walk.messages.append(len(walk.stack))
        elif not walk.delimiter(name):
            continue
        if (kind == _LINE and parts == max_parts) or walk.depth > max_depth:
            return Shape(parts, depth, offset, 1 + _left(found[number + 1:], walk))
        parts += kind == _LINE
        depth = max(depth, walk.depth)
    return Shape(parts, depth)


def _left(found: list[Event], walk: _Walk) -> int:
    """Parts after the cut: delimiter lines of declared boundaries, attached mails."""
    left = 0
    for _, kind, name in found:
        if kind == _MESSAGE_PART:
            left += 1
        elif kind == _DECLARED:
            walk.declared.add(name)
        elif not name.endswith(b"--") or name[:-2] not in walk.declared:
            left += name in walk.declared
    return left
