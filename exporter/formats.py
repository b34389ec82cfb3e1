"""Pure encoders: batches of rows in, bytes out. One registry, used by every sink.

Rows arrive already rendered by the query (money and timestamps as final text), so the
encoders decide only quoting and types: CSV per RFC 4180 (header, CRLF, quotes only
where needed, NULL as an empty field); NDJSON one object per ``\\n``; JSON one array,
one element per line. Each encoder works on a whole batch at once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from exporter.queries import Kind

Row = Sequence[Any]
Batch = Sequence[Row]

CSV_BOOLEANS = {True: "true", False: "false", None: None}


class Encoder:
    """Turns batches of rows with the given fields into bytes; one instance per export."""

    media_type: ClassVar[str]
    extension: ClassVar[str]

    def __init__(self, fields: Sequence[str], kinds: Sequence[Kind]) -> None:
        self.fields = [str(name) for name in fields]  # plain str: orjson rejects subclasses
        self.kinds = list(kinds)

    def begin(self) -> bytes:
        return b""

    def encode(self, rows: Batch) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        return b""


class CsvEncoder(Encoder):
    media_type = "text/csv; charset=utf-8"
    extension = "csv"

    def __init__(self, fields: Sequence[str], kinds: Sequence[Kind]) -> None:
        super().__init__(fields, kinds)
        self._booleans = [i for i, kind in enumerate(self.kinds) if kind is Kind.BOOLEAN]
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
        if self._booleans:
            rows = [self._with_booleans(row) for row in rows]
        self._writer.writerows(rows)
        return self._flush()

    def _with_booleans(self, row: Row) -> list[Any]:
        values = list(row)
        for i in self._booleans:
            values[i] = CSV_BOOLEANS[values[i]]
        return values


class _JsonObjects(Encoder):
    """Shared by NDJSON and the JSON array: rows as objects with the fields as keys."""

    def __init__(self, fields: Sequence[str], kinds: Sequence[Kind]) -> None:
        super().__init__(fields, kinds)
        self._money = [i for i, kind in enumerate(self.kinds) if kind is Kind.MONEY]

    def objects(self, rows: Batch) -> list[dict[str, Any]]:
        fields = self.fields
        if not self._money:
            return [dict(zip(fields, row, strict=True)) for row in rows]
        return [dict(zip(fields, self._with_money(row), strict=True)) for row in rows]

    def _with_money(self, row: Row) -> list[Any]:
        values = list(row)
        for i in self._money:
            if values[i] is not None:
                # Already "12.30" from the database: emit it as a JSON number, verbatim.
                values[i] = orjson.Fragment(values[i])
        return values


class NdjsonEncoder(_JsonObjects):
    media_type = "application/x-ndjson"
    extension = "ndjson"

    def encode(self, rows: Batch) -> bytes:
        if not rows:
            return b""
        return b"\n".join(map(orjson.dumps, self.objects(rows))) + b"\n"


class JsonArrayEncoder(_JsonObjects):
    media_type = "application/json"
    extension = "json"

    def __init__(self, fields: Sequence[str], kinds: Sequence[Kind]) -> None:
        super().__init__(fields, kinds)
        self._empty = True

    def begin(self) -> bytes:
        return b"["

    def encode(self, rows: Batch) -> bytes:
        if not rows:
            return b""
        body = b",\n".join(map(orjson.dumps, self.objects(rows)))
        lead = b"\n" if self._empty else b",\n"
        self._empty = False
        return lead + body

    def end(self) -> bytes:
        return b"]\n" if self._empty else b"\n]\n"


FORMATS: dict[str, type[Encoder]] = {
    "csv": CsvEncoder,
    "ndjson": NdjsonEncoder,
    "json": JsonArrayEncoder,
}
