"""A JSON array, streamed element by element: ``[``, one object per line joined by ``,\\n``,
``]``. Its rows come from COPY as NDJSON's do."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.catalog import Column
from exporter.formats.base import DEFAULT_OPTIONS, Format, Options
from exporter.formats.ndjson import copy_json_rows
from exporter.queries import Shape


class JsonArray(Format):
    name = "json"
    media_type = "application/json"
    extension = "json"
    shape = copy_shape = Shape.JSON
    separator = b",\n"
    copy_format = "text"
    copy_row_end = b"\n"
    copy_rows = staticmethod(copy_json_rows)

    def __init__(self, columns: Sequence[Column], options: Options = DEFAULT_OPTIONS) -> None:
        super().__init__(columns, options)
        self._empty = True

    @staticmethod
    def copy_join(parts: list[bytes]) -> bytes:
        return b"".join(parts)[:-1].replace(b"\n", b",\n")

    def begin(self) -> bytes:
        return b"["

    async def frame(self, block: bytes) -> bytes:
        if not block:
            return b""
        lead = b"\n" if self._empty else b",\n"
        self._empty = False
        return lead + block

    async def end(self) -> bytes:
        return b"]\n" if self._empty else b"\n]\n"
