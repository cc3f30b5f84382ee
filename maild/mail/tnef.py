"""Whether a winmail.dat (TNEF) may be handed to tnefparse: it trusts every count and
length in the file (2^32-1 values of one property fill memory, 2^32-1 properties loop
for hours) and copies the rest of the file for each object it reads. This walks the
same structure first, in time linear in the size, and says no when a count or length
does not fit the bytes there are, or the work would be out of proportion (pure)."""

from __future__ import annotations

import struct
from typing import Any

import tnefparse

MAX_FILES = 1000  # attachments in one winmail.dat
MAX_COPY = 2_000_000_000  # bytes tnefparse would copy (the rest of the file per object)
MAX_DEPTH = 3  # winmail.dat in an attached message in a winmail.dat …

_SIGNATURE = 0x223E9F78
_LEVEL_ATTACHMENT = 0x02
_RENDERING = 0x9002  # starts an attachment
_MAPI_PROPS = 0x9003
_RECIPIENTS = 0x9004
_ATTACHMENT = 0x9005
_DATA_OBJECT = 0x3701
_EMBEDDED = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
_MULTI = 0x1000
_NAMED = 0x8000
_FIXED = {0x0002: 2, 0x000B: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8, 0x0006: 8,
          0x0007: 8, 0x0014: 8, 0x0040: 8, 0x0048: 16}  # MAPI type → bytes per value
_VARIABLE = {0x0000, 0x000D, 0x001E, 0x001F, 0x0102}  # length-prefixed values


class _Unsound(Exception):
    """A count or length that does not fit, or too much work."""


class Unreadable(ValueError):
    """A winmail.dat whose counts or lengths do not fit its size."""


def read(data: bytes) -> Any:
    """tnefparse's reading of `data` (a `tnefparse.TNEF`), once `sound` has said yes."""
    if not sound(data):
        raise Unreadable(f"counts or lengths beyond its {len(data)} bytes")
    return tnefparse.TNEF(data)


def sound(data: bytes, depth: int = 0) -> bool:
    """Whether tnefparse can read `data` in bounded time and memory."""
    try:
        _check_file(data, depth)
    except (_Unsound, struct.error):
        return False
    return True


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def _check_file(data: bytes, depth: int) -> None:
    if depth > MAX_DEPTH or _u32(data, 0) != _SIGNATURE:
        raise _Unsound("not TNEF")
    offset, copied, files = 6, 0, 0
    while offset + 12 < len(data):  # the object loop of tnefparse.TNEF
        copied += len(data) - offset
        level, name = data[offset], _u16(data, offset + 1)
        length = min(len(data) - offset, _u32(data, offset + 5) + 11)
        body = data[offset + 9:offset + length - 2]
        offset += length
        files += name == _RENDERING
        if copied > MAX_COPY or files > MAX_FILES:
            raise _Unsound("out of proportion")
        if level == _LEVEL_ATTACHMENT:
            if name == _ATTACHMENT:
                _check_properties(body, 0, depth)
        elif name == _MAPI_PROPS:
            _check_properties(body, 0, depth)
        elif name == _RECIPIENTS:
            _check_rows(body, depth)


def _check_rows(body: bytes, depth: int) -> None:
    rows = _u32(body, 0)
    _fits(rows, len(body) - 4, 4)
    at = 4
    for _ in range(rows):
        at = _check_properties(body, at, depth)


def _fits(count: int, remaining: int, each: int) -> None:
    if count * each > remaining:
        raise _Unsound("count beyond the data")


def _check_properties(data: bytes, offset: int, depth: int) -> int:
    """Mirror of tnefparse.mapi.decode_mapi's walk; the offset after the properties."""
    count = _u32(data, offset)
    offset += 4
    _fits(count, len(data) - offset, 4)
    for _ in range(count):
        kind, name = _u16(data, offset), _u16(data, offset + 2)
        offset += 4
        if name >= _NAMED:
            offset += 20
            if _u32(data, offset - 4) == 0:
                offset += 4
            else:
                size = _u32(data, offset)
                offset += 4 + size + (-size % 4)
        values = None
        if kind & _MULTI:
            kind ^= _MULTI
            values = _u32(data, offset)
            offset += 4
            _fits(values, len(data) - offset, _FIXED.get(kind, 4))
        for _ in range(values or 1):
            offset = _check_value(data, offset, kind, name, values is not None, depth)
        if (values or 1) % 2 and kind in (0x0002, 0x000B):
            offset += 2
        if offset > len(data):
            raise _Unsound("property beyond the data")
    return offset


def _check_value(data: bytes, offset: int, kind: int, name: int, multi: bool,
                 depth: int) -> int:
    if kind in _FIXED:
        return offset + _FIXED[kind]
    if kind not in _VARIABLE:
        raise _Unsound(f"unknown MAPI type {kind:#06x}")
    values = 1
    if not multi:
        values = _u32(data, offset)
        offset += 4
        _fits(values, len(data) - offset, 4)
    for _ in range(values):
        size = _u32(data, offset)
        offset += 4
        size += -size % 4
        if offset + size > len(data):
            raise _Unsound("value beyond the data")
        item = data[offset:offset + size]
        if name == _DATA_OBJECT and item.startswith(_EMBEDDED):
            _check_file(item[len(_EMBEDDED):], depth + 1)
        offset += size
    return offset
