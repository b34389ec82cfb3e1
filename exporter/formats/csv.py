"""CSV (RFC 4180): a header row, CRLF after every row, quotes only where csv.writer puts them.

PostgreSQL's ``COPY ... (FORMAT csv)`` quotes exactly the fields csv.writer quotes and
doubles quotes the same way; it differs in row ends (LF; and a quoted field may hold a bare
LF too). Every row gets one more column, a lone CR, which COPY writes quoted: a row ends in
``,"\\r"\\n``, which cannot occur anywhere else (inside a quoted field every quote is
doubled), so splitting on it gives the rows, joined again with CRLF. Empty strings and a
lone field are rendered in SQL (render.pg_csv_value).
"""

from __future__ import annotations

import csv
import io

from exporter.formats.base import Block, Format
from exporter.queries import Shape

COPY_ROW_END = b',"\r"\n'  # the lone-CR column, as COPY writes it, and the row end


class Csv(Format):
    name = "csv"
    media_type = "text/csv; charset=utf-8"
    extension = "csv"
    shape = Shape.CSV
    separator = terminator = b"\r\n"
    copy_shape = Shape.VALUES
    copy_format = "csv"
    copy_row_end = COPY_ROW_END

    @staticmethod
    def copy_rows(chunk: bytes) -> Block:
        rows = chunk.split(COPY_ROW_END)  # one pass; replace() would search twice
        return len(rows) - 1, b"\r\n".join(rows)

    def begin(self) -> bytes:
        header = io.StringIO()
        csv.writer(header, lineterminator="\r\n").writerow(self.fields)
        return header.getvalue().encode()
