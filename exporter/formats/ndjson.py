"""NDJSON: one JSON object per line, each ending in ``\\n``.

PostgreSQL's COPY text format writes one ``row_to_json`` object per line. JSON escapes every
control character, so the only COPY text escape an object can hold is a doubled backslash,
undone with one ``replace``.
"""

from __future__ import annotations

from exporter.formats.base import Block, Format
from exporter.queries import Shape


def copy_json_rows(chunk: bytes) -> Block:
    rows = chunk.count(b"\n")
    return rows, chunk.replace(b"\\\\", b"\\") if b"\\" in chunk else chunk


class Ndjson(Format):
    name = "ndjson"
    media_type = "application/x-ndjson"
    extension = "ndjson"
    shape = copy_shape = Shape.JSON
    separator = terminator = b"\n"
    copy_format = "text"
    copy_row_end = b"\n"
    copy_rows = staticmethod(copy_json_rows)
