"""Pure framing: rows the database already rendered in, one document's bytes out.

The database renders every row in its final form (see ``queries.Shape``): a CSV line
quoted per RFC 4180, or a JSON object, so no per-row Python runs on the hot path. An
encoder only joins rows into blocks and frames the document: CSV gets its header and a
CRLF after every row, NDJSON a ``\\n`` after every object, the JSON array its brackets and
one element per line. One registry serves every sink (HTTP, job files, the command line).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import ClassVar

from exporter.queries import Shape

Block = tuple[int, bytes]  # (rows in it, their bytes): whole rows, already joined


class Encoder:
    """Joins and frames rows for the given fields; one instance per export."""

    media_type: ClassVar[str]
    extension: ClassVar[str]
    shape: ClassVar[Shape]
    separator: ClassVar[bytes]  # between two rows
    terminator: ClassVar[bytes] = b""  # after every row

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = [str(name) for name in fields]

    def begin(self) -> bytes:
        return b""

    def frame(self, block: bytes) -> bytes:
        """What goes out for a block, given the blocks before it."""
        return block

    def end(self) -> bytes:
        return b""


class CsvEncoder(Encoder):
    media_type = "text/csv; charset=utf-8"
    extension = "csv"
    shape = Shape.CSV
    separator = terminator = b"\r\n"

    def begin(self) -> bytes:
        header = io.StringIO()
        csv.writer(header, lineterminator="\r\n").writerow(self.fields)
        return header.getvalue().encode()


class NdjsonEncoder(Encoder):
    media_type = "application/x-ndjson"
    extension = "ndjson"
    shape = Shape.JSON
    separator = terminator = b"\n"


class JsonArrayEncoder(Encoder):
    media_type = "application/json"
    extension = "json"
    shape = Shape.JSON
    separator = b",\n"

    def __init__(self, fields: Sequence[str]) -> None:
        super().__init__(fields)
        self._empty = True

    def begin(self) -> bytes:
        return b"["

    def frame(self, block: bytes) -> bytes:
        if not block:
            return b""
        lead = b"\n" if self._empty else b",\n"
        self._empty = False
        return lead + block

    def end(self) -> bytes:
        return b"]\n" if self._empty else b"\n]\n"


FORMATS: dict[str, type[Encoder]] = {
    "csv": CsvEncoder,
    "ndjson": NdjsonEncoder,
    "json": JsonArrayEncoder,
}
