"""Parquet: typed columns, written one row group at a time as the rows arrive.

The database renders each row as a CSV line of its values' texts (``Shape.TEXTS``: the
texts CSV has, an empty one quoted so that it reads apart from NULL), so that every kind
follows the rules every format follows (a float's shortest digits, a numeric's scale,
timestamps in UTC); Arrow's CSV reader (C++) reads a row group's rows as string columns, and
Arrow's casts make them typed. The writer hands over the bytes of each row group as it is
written (zstd inside, so no gzip on the wire). No Python runs per row, except for bytes
columns (base64 decoded per value). (JSON objects of the texts, before: twice the bytes,
with every name again in every row, and Arrow's JSON reader took 1.3 s of CPU for 1M
users' rows where its CSV reader takes 0.5 s.)

A Parquet file is only readable once its footer is written, at the very end: a body cut
short can never be taken for a complete file.

Types: integers int64, floats double, numerics with a declared scale decimal128 (their
declared precision, else 38), booleans, dates date32, timestamps timestamp[us, UTC], times
time64[us], bytes binary, JSON and PostgreSQL arrays strings of their JSON (Arrow's JSON
type where pyarrow has it), everything else strings. SQLite lets a column hold values of
any kind: a column that holds, among the rows exported, a value not of its kind
(``render.sqlite_fits``, checked by one scan before the first row) is written as strings,
each value's text, so that nothing is lost and the column's type says what it holds.
"""

from __future__ import annotations

import asyncio
import importlib
from collections import deque
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from exporter.catalog import Column
from exporter.formats.base import DEFAULT_OPTIONS, Block, Format, Options
from exporter.formats.csv import COPY_ROW_END
from exporter.queries import ExportQuery, Shape, build_misfits, build_rowids

if TYPE_CHECKING:
    import pyarrow as pa

    from exporter.formats.arrow import Drain

ROW_GROUP_ROWS = 65_536  # rows per row group at most ...
# ... or Options.row_group_bytes of texts (EXPORTER_PARQUET_ROW_GROUP_MB), so that wide rows
# hold no more: a group's texts, the strings Arrow reads from them and their typed columns
# are in memory at once, two groups at a time (one typed and written while the next
# gathers). 3 MiB of CSV texts is 25k users (five batches), 40 row groups for 1M; the
# server's peak RSS above idle +58 MB (4 MiB: 29k users, +67-70 MB; 8 MiB: +85-92 MB), the
# file no larger (28.95 MB, 4 MiB: 28.97).


def _arrow() -> ModuleType:
    """formats/arrow.py, imported when first needed (pyarrow is heavy)."""
    return importlib.import_module("exporter.formats.arrow")


class Parquet(Format):
    name = "parquet"
    media_type = "application/vnd.apache.parquet"
    extension = "parquet"
    shape = copy_shape = Shape.TEXTS
    separator = terminator = b"\n"
    # COPY's CSV, each row ending in the row-end column (formats/csv.py), which Arrow reads
    # as one column more and leaves out.
    copy_format = "csv"
    copy_row_end = COPY_ROW_END
    compressible = False
    compressions = ("zstd", "snappy", "gzip", "none")

    def __init__(self, columns: Sequence[Column], options: Options = DEFAULT_OPTIONS) -> None:
        super().__init__(columns, options)
        self.misfits: set[str] = set()
        self.row_end_column = False  # rows from COPY: with the row-end column
        self.pending: list[bytes] = []
        self.pending_rows = self.pending_bytes = 0
        self.out: Drain | None = None  # once Arrow is imported
        self.writer: Any = None  # pyarrow's ParquetWriter
        self.groups: deque[asyncio.Future[bytes]] = deque()  # oldest first

    @staticmethod
    def copy_rows(chunk: bytes) -> Block:
        return chunk.count(COPY_ROW_END), chunk

    async def prepare(self, conns: Sequence[AsyncConnection], query: ExportQuery) -> None:
        if conns[0].dialect.name != "sqlite":
            self.row_end_column = True
            return  # PostgreSQL's columns hold their type's values only
        found = build_misfits(query)
        if found is None:
            return
        statement, names = found
        parts = await self._parts(conns, query)
        if parts is None:
            found_flags = [(await conns[0].execute(statement)).one()]
        else:
            # The scan, cut by rowid into a part for each reader, runs on each at once:
            # SQLite reads in C, outside the GIL (1M users: 0.50 s alone -> 0.26 s on two).
            found_flags = await asyncio.gather(*(
                self._scan(conn, query, part)
                for conn, part in zip(conns[1:len(parts) + 1], parts, strict=True)))
        self.misfits = {name for name, *flags in zip(names, *found_flags, strict=True)
                        if any(flags)}

    @staticmethod
    async def _parts(conns: Sequence[AsyncConnection], query: ExportQuery
                     ) -> list[tuple[int, int]] | None:
        """Rowid ranges, one for each reader (the connections but the first), or None for
        one scan on the first: one reader, a limit, or no rowid."""
        bounds = build_rowids(query)
        readers = len(conns) - 1
        if readers < 2 or query.limit is not None or bounds is None:
            return None
        low, high = (await conns[0].execute(bounds)).one()
        if low is None:
            return None  # no rows
        step = (high - low) // readers + 1
        starts = [start for i in range(readers) if (start := low + i * step) <= high]
        return [(start, min(high, start + step - 1)) for start in starts]

    @staticmethod
    async def _scan(conn: AsyncConnection, query: ExportQuery, part: tuple[int, int]
                    ) -> Sequence[Any]:
        found = build_misfits(query, part)
        assert found is not None
        flags: Sequence[Any] = (await conn.execute(found[0])).one()
        return flags

    def schema(self) -> pa.Schema:
        schema: pa.Schema = _arrow().schema(self.columns, self.misfits)
        return schema

    async def frame(self, block: bytes) -> bytes:
        """Gather blocks into a row group; once full, it is typed and written on threads
        while the next one gathers (in order: each waits for the one before to be
        written). What goes out is the group before it, once written."""
        if not block:
            return b""
        self.pending.append(block)  # whole rows, each ending in a line feed
        self.pending_rows += block.count(b"\n")  # at least the rows (a text may hold one)
        self.pending_bytes += len(block)
        if (self.pending_rows < ROW_GROUP_ROWS
                and self.pending_bytes < self.options.row_group_bytes):
            return b""
        self._start_group()
        return await self.groups.popleft() if len(self.groups) > 1 else b""

    async def end(self) -> bytes:
        if self.pending:
            self._start_group()
        written = [await group for group in list(self.groups)]
        self.groups.clear()
        return b"".join(written) + await asyncio.to_thread(self._close)

    async def close(self) -> None:
        for group in self.groups:  # an export ended early: nothing more is written
            group.cancel()
        await asyncio.gather(*self.groups, return_exceptions=True)
        self.groups.clear()

    def _start_group(self) -> None:
        rows, count = _arrow().Rows(self.pending), self.pending_rows
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0
        before = self.groups[-1] if self.groups else None
        self.groups.append(asyncio.ensure_future(self._group(rows, count, before)))

    async def _group(self, rows: Any, count: int, before: asyncio.Future[bytes] | None
                     ) -> bytes:
        table = await asyncio.to_thread(_arrow().table, rows, self.schema(),
                                        self.row_end_column)
        if before is not None:
            await asyncio.wait({before})
            if before.cancelled() or before.exception() is not None:
                # Its failure is raised where it is awaited, first; never write after it.
                raise RuntimeError("the row group before this one was not written")
        return await asyncio.to_thread(self._write, table, count)

    def _writer(self) -> tuple[Any, Drain]:
        """pyarrow's ParquetWriter, and what it writes into."""
        if self.writer is None or self.out is None:
            arrow = _arrow()
            self.out = arrow.Drain()
            self.writer = arrow.writer(self.out, self.schema(),
                                       self.options.compression or self.compressions[0])
        return self.writer, self.out

    def _write(self, table: Any, rows: int) -> bytes:
        writer, out = self._writer()
        writer.write_table(table, row_group_size=rows)
        _arrow().give_back_freed_memory()
        return out.take()

    def _close(self) -> bytes:
        writer, out = self._writer()
        writer.close()  # the footer: only now is the file readable
        return out.take()

