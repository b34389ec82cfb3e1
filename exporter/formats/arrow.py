"""Arrow's part of Parquet: typing a row group's texts and writing it, in C++.

Imported on the first Parquet export (formats/parquet.py), not before: pyarrow costs the
service 38 MB of memory and 0.3 s of start when no one asks for Parquet.
"""

from __future__ import annotations

import base64
import ctypes
import io
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from exporter.catalog import Column, Kind
from exporter.errors import Unrepresentable
from exporter.render import DECIMAL_DIGITS

# Arrow's default allocator (jemalloc) keeps what a row group freed: with malloc's, the peak
# RSS of 1M users' export went from +169 MB above idle to +83 MB, no slower.
pa.set_memory_pool(pa.system_memory_pool())
# glibc's malloc does not give back what its heaps freed: a row group's texts and buffers,
# of sizes that vary (SQLite's batches grow by doubling), leave holes the next ones do not
# fit, and at the peak of 1M users' export 100 of its 145 MB of heap were free. Each
# written group gives back the free pages (malloc_trim): the server's RSS peak above idle,
# 4 MiB groups, +88-99 -> +62-70 MB, at about 0.1 s. Pinning glibc's mmap threshold
# instead (every buffer above 128 KiB a mapping of its own) gave +50 MB but cost 0.5 s of
# page faults. Not glibc (musl, macOS): nothing to call.
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)


def give_back_freed_memory() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


READ_BLOCK_BYTES = 4 << 20  # Arrow's CSV reader reads blocks of this size on its threads
DECIMAL256_PRECISION = 76  # beyond: the numeric's text


class Drain:
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


class Rows(io.RawIOBase):
    """A row group's blocks of texts, read by Arrow's CSV reader one block at a time (it
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
        precision = column.precision or DECIMAL_DIGITS
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


def schema(columns: Sequence[Column], misfits: set[str]) -> pa.Schema:
    return pa.schema([
        (column.name, pa.string() if column.name in misfits else arrow_type(column))
        for column in columns
    ])


def writer(out: Drain, schema: pa.Schema, compression: str) -> pq.ParquetWriter:
    deltas = [field.name for field in schema
              if pa.types.is_integer(field.type) or pa.types.is_timestamp(field.type)
              or pa.types.is_date(field.type) or pa.types.is_time(field.type)]
    return pq.ParquetWriter(
        out, schema, compression=compression,
        # Integers and moments by their differences: 1M users' ids take 2.8 MB plain,
        # almost nothing so; the file 35 -> 27 MB, and faster to write.
        use_dictionary=[f.name for f in schema if f.name not in deltas],
        column_encoding={name: "DELTA_BINARY_PACKED" for name in deltas},
        # A string's min and max cost half the write (1M users: 8 of 16 ms a group), and
        # readers skip row groups by numbers and moments far more than by text.
        write_statistics=[f.name for f in schema if not _texts(f.type)],
    )


def table(rows: Rows, schema: pa.Schema, row_end_column: bool = False) -> pa.Table:
    """A row group's rows (CSV lines of texts, an empty one quoted, NULL as nothing, after
    an empty first field) as a table of ``schema``; ``row_end_column``: each line ends in
    one column more (COPY's). The first field keeps a line from being empty (a lone NULL),
    which the reader would skip, and from starting with a value's text, whose leading
    U+FEFF it would take for a byte-order mark at the start of its input."""
    # Named by position: a table's own names may be anything, even alike in CSV.
    names = [f"c{i}" for i in range(1 + len(schema) + row_end_column)]
    read = pa_csv.read_csv(
        rows,
        # Each read ends at a block's end or gives a whole block: with blocks no larger
        # than a read, a row is cut by one read's end at most, which Arrow carries over
        # (a 5 MB BLOB in one row is read).
        read_options=pa_csv.ReadOptions(column_names=names,
                                         block_size=max(READ_BLOCK_BYTES, rows.largest + 1)),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            include_columns=names[1:1 + len(schema)],
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
        ),
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

