"""The ``Range`` header (RFC 9110 section 14): byte ranges in, body pieces out.

``parse_range`` answers one of three ways, as the RFC asks:

- ``None``: ignore the header and send the whole file with 200. That is the answer to
  anything malformed (garbage, ``bytes=5-1``, other units, signs, inner spaces) and to
  more than ``max_ranges`` ranges (14.2: a server MAY ignore a Range header).
- ``RangeNotSatisfiable`` (416): a valid header none of whose ranges overlaps the file.
- The ranges to send: clipped to the file, in ascending order, overlapping and adjacent
  ones merged (15.3.7.2 allows coalescing), so ``bytes=0-,0-,0-`` cannot multiply a
  download and one resulting range is never sent as multipart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from exporter.errors import RangeNotSatisfiable

# Positions with more digits than this are beyond any file, so they are not converted:
# int() of a 5000-digit string raises in Python >= 3.11, and it would be wasted work.
MAX_POSITION_DIGITS = 18
BEYOND_ANY_FILE = 10**MAX_POSITION_DIGITS
RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)


class ByteRange(NamedTuple):
    start: int  # the first byte sent
    end: int  # one past the last byte sent

    @property
    def length(self) -> int:
        return self.end - self.start


Piece = bytes | ByteRange  # a body is literal bytes (multipart framing) and file ranges
Pieces = Sequence[Piece]


def parse_range(header: str, size: int, max_ranges: int) -> list[ByteRange] | None:
    """The ranges of a ``Range`` header to send from a ``size``-byte file, or None to
    ignore the header; raises ``RangeNotSatisfiable`` if no range overlaps the file."""
    unit, equals, range_set = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    specs = [spec.strip() for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]  # RFC 9110 5.6.1: empty list elements are fine
    if not specs or len(specs) > max_ranges:
        return None
    ranges = []
    for spec in specs:
        match = RANGE_SPEC.fullmatch(spec)
        if match is None or match.group() == "-":
            return None
        first, last = match.groups()
        if first and last and _position(last) < _position(first):
            return None  # 14.1.1: last-pos below first-pos makes the header invalid
        selected = _select(first, last, size)
        if selected is not None:
            ranges.append(selected)
    if not ranges:
        raise RangeNotSatisfiable(header, size)
    return coalesce(ranges)


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= MAX_POSITION_DIGITS else BEYOND_ANY_FILE


def _select(first: str, last: str, size: int) -> ByteRange | None:
    """The bytes one valid range-spec selects, or None if it is unsatisfiable."""
    if not first:  # suffix range: the last N bytes
        length = _position(last)
        return ByteRange(max(size - length, 0), size) if length and size else None
    start = _position(first)
    if start >= size:
        return None
    end = size if not last else min(_position(last) + 1, size)
    return ByteRange(start, end)


def coalesce(ranges: Sequence[ByteRange]) -> list[ByteRange]:
    """Sorted, with overlapping and adjacent ranges merged."""
    merged: list[ByteRange] = []
    for current in sorted(ranges):
        if merged and current.start <= merged[-1].end:
            merged[-1] = ByteRange(merged[-1].start, max(merged[-1].end, current.end))
        else:
            merged.append(current)
    return merged


def content_range(byte_range: ByteRange, size: int) -> str:
    return f"bytes {byte_range.start}-{byte_range.end - 1}/{size}"


def multipart_pieces(
    ranges: Sequence[ByteRange], size: int, content_type: str, boundary: str
) -> list[Piece]:
    """A ``multipart/byteranges`` body (RFC 9110 14.6, RFC 2046 5.1.1): each part with its
    Content-Type and Content-Range. The CRLF before each delimiter belongs to it."""
    pieces: list[Piece] = []
    for index, byte_range in enumerate(ranges):
        head = (
            f"--{boundary}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Range: {content_range(byte_range, size)}\r\n\r\n"
        ).encode("latin-1")
        pieces += [head if index == 0 else b"\r\n" + head, byte_range]
    pieces.append(f"\r\n--{boundary}--\r\n".encode("latin-1"))
    return pieces


def body_length(pieces: Pieces) -> int:
    return sum(len(piece) if isinstance(piece, bytes) else piece.length for piece in pieces)
