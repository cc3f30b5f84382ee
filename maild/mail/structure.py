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
MAX_DEPTH = 20  # multiparts nested in each other
# A delimiter line (`--boundary`, `--boundary--`), or a boundary parameter. Each branch
# is bounded in length, and a delimiter line is tried only where a line starts.
_EVENT = re.compile(
    rb'^--(?P<line>[^\r\n]{1,80}?)[ \t]*\r?$'
    rb'|boundary[ \t]*=[ \t]*(?:"(?P<quoted>[^"\r\n]{1,80})"|(?P<token>[^\s;"]{1,80}))',
    re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Shape:
    """What the pass found: parts and the deepest nesting, and where to cut (0: nowhere)."""

    parts: int  # parts before the cut (all of them when there is none)
    depth: int  # the deepest nesting before the cut
    cut: int = 0  # the offset of the first delimiter line over a cap (0: none)
    parts_left_out: int = 0  # parts from the cut on


def scan(raw: bytes, max_parts: int = MAX_PARTS, max_depth: int = MAX_DEPTH) -> Shape:
    """The shape of `raw`'s MIME structure, in time linear in its size (the nesting
    followed is at most `max_depth` + 1 deep; after the cut, parts are only counted)."""
    declared: set[bytes] = set()  # every boundary declared
    stack: list[bytes] = []  # open multiparts, outermost first
    parts = depth = cut = left = 0
    for found in _EVENT.finditer(raw):
        line = found.group("line")
        if line is None:
            declared.add(found.group("quoted") or found.group("token"))
        elif cut:
            left += line in declared
        elif _opens_part(line, stack, declared):
            if parts == max_parts or len(stack) > max_depth:
                cut, left = found.start(), 1
            else:
                parts += 1
                depth = max(depth, len(stack))
    return Shape(parts, depth, cut, left)


def _opens_part(line: bytes, stack: list[bytes], declared: set[bytes]) -> bool:
    """Follow one delimiter line: whether it starts a part (`stack` updated)."""
    if line.endswith(b"--") and line[:-2] in stack:  # a close delimiter
        del stack[stack.index(line[:-2]):]
        return False
    if line in stack:  # the next part of an open multipart (inner ones end)
        del stack[stack.index(line) + 1:]
        return True
    if line in declared:  # the first part of a new multipart
        stack.append(line)
        return True
    return False
