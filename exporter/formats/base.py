"""``Format``: everything about one export format, in one class.

The database renders every row in its final form (queries.Shape): a CSV line quoted per
RFC 4180, or a JSON object, so no per-row Python runs on the hot path. A format says which
shape it asks each backend for, how PostgreSQL's COPY output becomes its bytes, and how
blocks of rows are framed into one document (a header, separators, brackets). One instance
frames one export; the class is what the edges (route, job, command line) resolve a name to
and pass down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from sqlalchemy.ext.asyncio import AsyncConnection

from exporter.catalog import Column
from exporter.queries import ExportQuery, Shape

Block = tuple[int, bytes]  # (rows in it, their bytes): whole rows, already joined
MiB = 1 << 20


@dataclass(frozen=True)
class Options:
    """How a format writes, beyond its rows: the request's ``compression=`` (a format that
    compresses inside offers a choice: ``Format.compressions``) and the settings."""

    compression: str | None = None  # None: the format's first
    row_group_bytes: int = 3 * MiB  # Parquet (Settings.parquet_row_group_mb)


DEFAULT_OPTIONS = Options()


class Format:
    name: ClassVar[str]
    media_type: ClassVar[str]
    extension: ClassVar[str]
    # SQLite: what each row of the statement is, and what joins and ends rows in a batch.
    shape: ClassVar[Shape]
    separator: ClassVar[bytes]  # between two rows
    terminator: ClassVar[bytes] = b""  # after every row
    # PostgreSQL: what COPY is asked for, and what ends each of its rows.
    copy_shape: ClassVar[Shape]
    copy_format: ClassVar[str]
    copy_row_end: ClassVar[bytes]

    # gzip on the wire, when the client accepts it (a format compressed inside: no).
    compressible: ClassVar[bool] = True
    # What compression= may name (the first is the default); none: no such parameter.
    compressions: ClassVar[tuple[str, ...]] = ()

    def __init__(self, columns: Sequence[Column], options: Options = DEFAULT_OPTIONS) -> None:
        self.columns = list(columns)
        self.fields = [column.name for column in self.columns]
        self.options = options

    async def prepare(self, conns: Sequence[AsyncConnection], query: ExportQuery) -> None:
        """Read what the format must know of the rows before the first byte, on the export's
        connections (all in its snapshot, idle until its rows are read)."""

    @staticmethod
    def copy_rows(chunk: bytes) -> Block:
        """A COPY chunk (whole rows) -> its row count and its rows' final bytes."""
        raise NotImplementedError

    @staticmethod
    def copy_join(parts: list[bytes]) -> bytes:
        """Final COPY chunks -> one block of rows, as ``separator`` would join them."""
        return b"".join(parts)

    def begin(self) -> bytes:
        return b""

    async def frame(self, block: bytes) -> bytes:
        """What goes out for a block, given the blocks before it (a coroutine, so that a
        format may do its work off the event loop: Parquet)."""
        return block

    async def end(self) -> bytes:
        return b""

    async def close(self) -> None:
        """Let go of what an export that ended early left behind (always called)."""
