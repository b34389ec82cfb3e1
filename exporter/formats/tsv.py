"""TSV: tab-separated values as PostgreSQL's text COPY writes and reads them, so that a file
loads back with ``\\copy table FROM file (FORMAT text, HEADER true)``.

A header row of the names, then one line per row, ``\\n`` after each; a backslash, tab, line
feed, carriage return, backspace, form feed and vertical tab in a value are written
``\\\\``, ``\\t``, ``\\n``, ``\\r``, ``\\b``, ``\\f``, ``\\v``; NULL is ``\\N``, and an empty
string an empty field. Values are the texts CSV has, but for two kinds whose CSV text would
not load back: bytes as bytea's hex (``\\\\x00ff``) and PostgreSQL arrays as its own literal
(``{1,2}``). PostgreSQL's COPY escapes them itself: its rows are this format's bytes as
they come.
"""

from __future__ import annotations

from exporter.formats.base import Block, Format
from exporter.queries import Shape
from exporter.render import tsv_escape


class Tsv(Format):
    name = "tsv"
    media_type = "text/tab-separated-values; charset=utf-8"
    extension = "tsv"
    shape = copy_shape = Shape.TSV
    separator = terminator = b"\n"
    copy_format = "text"
    copy_row_end = b"\n"

    @staticmethod
    def copy_rows(chunk: bytes) -> Block:
        return chunk.count(b"\n"), chunk  # a line feed in a value is written \n

    def begin(self) -> bytes:
        return ("\t".join(tsv_escape(name) for name in self.fields) + "\n").encode()
