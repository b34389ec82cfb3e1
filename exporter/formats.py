"""Pure encoders: batches of rows in, bytes out. One registry, used by every sink.

Values arrive rendered by the query (see ``queries.Shape``): CSV gets one text-ready
column per field, the JSON formats get each row as a finished JSON object built by the
database (SQLite's ``json_object``, PostgreSQL's ``row_to_json``), which runs outside
Python's GIL. So an encoder only frames: CSV per RFC 4180 (header, CRLF, quotes only where
needed, NULL as an empty field); NDJSON one object per ``\\n``; JSON one array, one element
per line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any, ClassVar

from exporter.queries import Shape

Batch = Sequence[Any]  # rows (Shape.VALUES) or JSON object strings (Shape.JSON)


class Encoder:
    """Turns batches into bytes for the given fields; one instance per export."""

    media_type: ClassVar[str]
    extension: ClassVar[str]
    shape: ClassVar[Shape]

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = [str(name) for name in fields]

    def begin(self) -> bytes:
        return b""

    def encode(self, rows: Batch) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        return b""


class CsvEncoder(Encoder):
    media_type = "text/csv; charset=utf-8"
    extension = "csv"
    shape = Shape.VALUES

    def __init__(self, fields: Sequence[str]) -> None:
        super().__init__(fields)
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def _flush(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode()

    def begin(self) -> bytes:
        self._writer.writerow(self.fields)
        return self._flush()

    def encode(self, rows: Batch) -> bytes:
        self._writer.writerows(rows)
        return self._flush()


class NdjsonEncoder(Encoder):
    media_type = "application/x-ndjson"
    extension = "ndjson"
    shape = Shape.JSON

    def encode(self, rows: Batch) -> bytes:
        if not rows:
            return b""
        return ("\n".join(rows) + "\n").encode()


class JsonArrayEncoder(Encoder):
    media_type = "application/json"
    extension = "json"
    shape = Shape.JSON

    def __init__(self, fields: Sequence[str]) -> None:
        super().__init__(fields)
        self._empty = True

    def begin(self) -> bytes:
        return b"["

    def encode(self, rows: Batch) -> bytes:
        if not rows:
            return b""
        lead = "\n" if self._empty else ",\n"
        self._empty = False
        return (lead + ",\n".join(rows)).encode()

    def end(self) -> bytes:
        return b"]\n" if self._empty else b"\n]\n"


FORMATS: dict[str, type[Encoder]] = {
    "csv": CsvEncoder,
    "ndjson": NdjsonEncoder,
    "json": JsonArrayEncoder,
}
