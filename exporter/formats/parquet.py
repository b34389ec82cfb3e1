"""Parquet: typed columns, written one row group at a time as the rows arrive.

The database renders each row as a JSON object of its values' texts (``Shape.TEXTS``: the
texts CSV has), so that every kind follows the rules every format follows (a float's
shortest digits, a numeric's scale, timestamps in UTC); Arrow's JSON reader (C++) reads a
row group's rows as string columns, and Arrow's casts make them typed. The writer hands
over the bytes of each row group as it is written (zstd inside, so no gzip on the wire).
No Python runs per row, except for bytes columns (base64 decoded per value).

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
import base64
import io
from collections import deque
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from sqlalchemy.ext.asyncio import AsyncConnection

from exporter.catalog import Column, Kind
from exporter.errors import Unrepresentable
from exporter.formats.base import DEFAULT_OPTIONS, Block, Format, Options
from exporter.formats.ndjson import copy_json_rows
from exporter.queries import ExportQuery, Shape, build_misfits
from exporter.render import DECIMAL_DIGITS, numeric_precision

ROW_GROUP_ROWS = 65_536  # rows per row group at most ...
# ... or Options.row_group_bytes of texts (EXPORTER_PARQUET_ROW_GROUP_MB), so that wide rows
# hold no more: a group's texts, the strings Arrow reads from them and their typed columns
# are in memory at once, two groups at a time (one typed and written while the next
# gathers). 1M users' export, peak RSS above idle and time: 8 MiB +100 MB, 2.85 s (one
# group at a time: +80 MB, 3.0 s); 4 MiB +90 MB, 2.8 s but 67 row groups of 15k rows;
# 16 MiB (one at a time) +210 MB.
COMPRESSION = "zstd"
# Arrow's default allocator (jemalloc) keeps what a row group freed: with malloc's, the peak
# RSS of 1M users' export went from +169 MB above idle to +83 MB, no slower.
pa.set_memory_pool(pa.system_memory_pool())
JSON_BLOCK_BYTES = 4 << 20  # Arrow's JSON reader reads blocks of this size on its threads
DECIMAL256_PRECISION = 76  # beyond: the numeric's text


class _Drain:
    """Where the writer writes: its bytes, taken as each row group is done."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class _Rows(io.RawIOBase):
    """A row group's blocks of texts, read by Arrow's JSON reader one block at a time (it
    carries a row cut at a read's end over to the next)."""

    def __init__(self, blocks: list[bytes]) -> None:
        super().__init__()
        self.blocks = blocks[::-1]  # popped from the end
        self.largest = max(map(len, blocks), default=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.blocks:
            return 0
        block = self.blocks.pop()
        size = min(len(buffer), len(block))
        buffer[:size] = block[:size]
        if size < len(block):
            self.blocks.append(block[size:])
        return size


def _json_type(storage: pa.DataType) -> pa.DataType:
    """Arrow's JSON type (written as Parquet's JSON logical type) where pyarrow has it."""
    maker = getattr(pa, "json_", None)
    return maker(storage) if maker is not None else storage


def arrow_type(column: Column) -> pa.DataType:
    kind = column.kind
    if kind is Kind.INTEGER:
        return pa.int64()
    if kind is Kind.FLOAT:
        return pa.float64()
    if kind is Kind.NUMERIC and column.scale is not None:
        precision = numeric_precision(column) or DECIMAL_DIGITS
        if precision > DECIMAL256_PRECISION:  # PostgreSQL allows 1000 digits
            return pa.string()
        if precision > DECIMAL_DIGITS:
            return pa.decimal256(precision, column.scale)
        return pa.decimal128(precision, column.scale)
    if kind is Kind.BOOLEAN:
        return pa.bool_()
    if kind is Kind.DATE:
        return pa.date32()
    if kind is Kind.TIMESTAMP:
        return pa.timestamp("us", tz="UTC")
    if kind is Kind.TIME:
        return pa.time64("us")
    if kind is Kind.BYTES:
        return pa.binary()
    if kind in (Kind.JSON, Kind.ARRAY):
        return _json_type(pa.string())
    return pa.string()


def _typed(texts: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    """A column of texts as ``to``."""
    if to == pa.string():
        return texts
    if to == pa.binary():
        return pa.chunked_array([pa.array(
            [None if text is None else base64.b64decode(text) for text in texts.to_pylist()],
            pa.binary())])
    if isinstance(to, pa.BaseExtensionType):
        return pa.chunked_array([pa.ExtensionArray.from_storage(to, chunk)
                                 for chunk in texts.chunks], type=to)
    if to == pa.time64("us"):  # Arrow casts no text to a time: through a timestamp
        return pc.cast(pc.strptime(texts, format="%H:%M:%S", unit="us"), to)
    return pc.cast(texts, to)


def _texts(kind: pa.DataType) -> bool:
    storage = kind.storage_type if isinstance(kind, pa.BaseExtensionType) else kind
    return bool(pa.types.is_string(storage) or pa.types.is_binary(storage))


class Parquet(Format):
    name = "parquet"
    media_type = "application/vnd.apache.parquet"
    extension = "parquet"
    shape = copy_shape = Shape.TEXTS
    separator = terminator = b"\n"
    copy_format = "text"
    copy_row_end = b"\n"
    copy_rows = staticmethod(copy_json_rows)
    compressible = False
    compressions = ("zstd", "snappy", "gzip", "none")

    def __init__(self, columns: Sequence[Column], options: Options = DEFAULT_OPTIONS) -> None:
        super().__init__(columns, options)
        self.misfits: set[str] = set()
        self.pending: list[bytes] = []
        self.pending_rows = self.pending_bytes = 0
        self.out = _Drain()
        self.writer: pq.ParquetWriter | None = None
        self.groups: deque[asyncio.Future[bytes]] = deque()  # oldest first

    async def prepare(self, conn: AsyncConnection, query: ExportQuery) -> None:
        if conn.dialect.name != "sqlite":
            return  # PostgreSQL's columns hold their type's values only
        found = build_misfits(query)
        if found is None:
            return
        statement, names = found
        flags = (await conn.execute(statement)).one()
        self.misfits = {name for name, flag in zip(names, flags, strict=True) if flag}

    def schema(self) -> pa.Schema:
        return pa.schema([
            (column.name, pa.string() if column.name in self.misfits else arrow_type(column))
            for column in self.columns
        ])

    async def frame(self, block: bytes) -> bytes:
        """Gather blocks into a row group; once full, it is typed and written on threads
        while the next one gathers (in order: each waits for the one before to be
        written). What goes out is the group before it, once written."""
        if not block:
            return b""
        self.pending.append(block if block.endswith(b"\n") else block + b"\n")
        self.pending_rows += block.count(b"\n") + (not block.endswith(b"\n"))
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
        rows, count = _Rows(self.pending), self.pending_rows
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0
        before = self.groups[-1] if self.groups else None
        self.groups.append(asyncio.ensure_future(self._group(rows, count, before)))

    async def _group(self, rows: _Rows, count: int, before: asyncio.Future[bytes] | None
                     ) -> bytes:
        table = await asyncio.to_thread(self._table, rows, self.schema())
        if before is not None:
            await asyncio.wait({before})
            if before.cancelled() or before.exception() is not None:
                # Its failure is raised where it is awaited, first; never write after it.
                raise RuntimeError("the row group before this one was not written")
        return await asyncio.to_thread(self._write, table, count)

    def _writer(self) -> pq.ParquetWriter:
        if self.writer is None:
            schema = self.schema()
            self.writer = pq.ParquetWriter(
                self.out, schema, compression=self.options.compression or COMPRESSION,
                # Integers and moments by their differences: 1M users' ids take 2.8 MB
                # plain, almost nothing so; the file 35 -> 27 MB, and faster to write.
                use_dictionary=[f.name for f in schema if f.name not in self._deltas(schema)],
                column_encoding={name: "DELTA_BINARY_PACKED" for name in self._deltas(schema)},
                # A string's min and max cost half the write (1M users: 8 of 16 ms a group),
                # and readers skip row groups by numbers and moments far more than by text.
                write_statistics=[f.name for f in schema if not _texts(f.type)],
            )
        return self.writer

    def _write(self, table: pa.Table, rows: int) -> bytes:
        self._writer().write_table(table, row_group_size=rows)
        return self.out.take()

    def _close(self) -> bytes:
        self._writer().close()  # the footer: only now is the file readable
        return self.out.take()

    @staticmethod
    def _deltas(schema: pa.Schema) -> list[str]:
        return [field.name for field in schema
                if pa.types.is_integer(field.type) or pa.types.is_timestamp(field.type)
                or pa.types.is_date(field.type) or pa.types.is_time(field.type)]

    def _table(self, rows: _Rows, schema: pa.Schema) -> pa.Table:
        texts = pa.schema([(field.name, pa.string()) for field in schema])
        read = pa_json.read_json(
            rows,
            # Each read ends at a block's end or gives a whole block: with blocks no larger
            # than a read, a row is cut by one read's end at most, which Arrow carries over
            # (a row over two reads' ends fails: a 5 MB BLOB in one row did).
            read_options=pa_json.ReadOptions(block_size=max(JSON_BLOCK_BYTES, rows.largest + 1)),
            parse_options=pa_json.ParseOptions(explicit_schema=texts,
                                               unexpected_field_behavior="error"),
        )
        return pa.Table.from_arrays(
            [_column(read.column(i), field) for i, field in enumerate(schema)], schema=schema)


def _column(texts: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    try:
        return _typed(texts, field.type)
    except (pa.ArrowInvalid, ValueError) as error:  # PostgreSQL's infinite dates, NaN...
        raise Unrepresentable(
            f"column {field.name!r} holds a value that Parquet's {field.type} cannot hold "
            f"({error}); export it as CSV or NDJSON, or leave that row out with a filter",
            column=field.name,
        ) from error


__all__ = ["Block", "Parquet"]
