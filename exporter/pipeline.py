"""The one export pipeline: blocks of rendered rows -> chunks -> (gzip), whatever the sink
(the HTTP response, ``exporter export``, a job's file).

- One snapshot: ``export_chunks`` opens its connection(s) inside the generator and reads
  blocks by the backend's route (SQLite's batches in cursors.py, PostgreSQL's COPY in
  pg_copy.py), so closing the generator (``aclose``) ends the read and returns the
  connections, whoever closes it.
- Between batches the loop gets control back (``await asyncio.sleep(0)``).
- A failure raises out of the generator, mid-stream or not: the sink decides what the
  reader sees (streaming.py aborts the response; a job's file is never renamed complete).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter import sqlite_functions
from exporter.config import Settings
from exporter.cursors import sqlite_blocks
from exporter.db import backend_name, shared_snapshot
from exporter.formats import Block, Format, Options
from exporter.formats.base import DEFAULT_OPTIONS, MiB
from exporter.pg_copy import copy_blocks, copy_ranges, ends_idle_transactions
from exporter.queries import ExportQuery, build_count, order_key
from exporter.storage import ChunkStream

GZIP_WINDOW = 16 + zlib.MAX_WBITS  # zlib's way of asking for a gzip header and trailer
# A COPY costs a round trip or two to start: PostgreSQL's ranges are this many batches long.
PG_RANGE_BATCHES = 4


@dataclass
class Progress:
    """What one export has produced so far; ``on_batch`` lets metrics follow along."""

    rows: int = 0
    bytes: int = 0
    total: int | None = None  # rows the export will give, when it was asked to count them
    on_batch: Callable[[int, int], None] | None = field(default=None, repr=False)

    def add(self, rows: int, size: int) -> None:
        self.rows += rows
        self.bytes += size
        if self.on_batch is not None:
            self.on_batch(rows, size)


async def export_chunks(
    engine: AsyncEngine,
    query: ExportQuery,
    fmt: type[Format],
    *,
    batch_rows: int,
    chunk_bytes: int,
    readers: int = 1,
    progress: Progress | None = None,
    count: bool = False,
    options: Options = DEFAULT_OPTIONS,
) -> ChunkStream:
    """Encoded bytes of one export, in chunks of about ``chunk_bytes``.

    The first chunk goes out as soon as the first batch is encoded, so that the client
    sees bytes at once; after that, batches are gathered into larger chunks. With
    ``count``, ``progress.total`` is set first, counted in the same snapshot as the rows.
    """
    progress = progress or Progress()
    encoder = fmt([query.table.column(name) for name in query.fields], options)
    async with _blocks(engine, query, encoder, batch_rows, chunk_bytes, readers) as (
        conns, blocks
    ):
        if count:
            count_rows = build_count(query, backend_name(engine))
            progress.total = (await conns[0].execute(count_rows)).scalar_one()
        await encoder.prepare(conns, query)
        pending = [encoder.begin()]
        pending_size = len(pending[0])
        first = True
        try:
            async with aclosing(blocks):
                async for rows, block in blocks:
                    data = await encoder.frame(block)
                    progress.add(rows, len(data))
                    pending.append(data)
                    pending_size += len(data)
                    # The first bytes go out at once (a format may hold its first blocks back).
                    if (first and pending_size) or pending_size >= chunk_bytes:
                        yield b"".join(pending)
                        pending.clear()
                        pending_size = 0
                        first = False
                    await asyncio.sleep(0)
            pending.append(await encoder.end())
        finally:
            await encoder.close()
        yield b"".join(pending)


@asynccontextmanager
async def _blocks(
    engine: AsyncEngine,
    query: ExportQuery,
    encoder: Format,
    batch_rows: int,
    chunk_bytes: int,
    readers: int,
) -> AsyncIterator[tuple[list[AsyncConnection], AsyncGenerator[Block, None]]]:
    """The export's blocks, by each backend's fastest route, and its connections, all in
    the same snapshot and idle until the blocks are read (the first plans, and counts):
    SQLite's parallel readers (cursors.py), PostgreSQL's COPY (pg_copy.py). What has no key
    to cut ranges by is read by one statement."""
    backend = backend_name(engine)
    if not order_key(query):
        readers = 1
    if backend == "sqlite" and sqlite_functions.calls_python(map(query.table.column, query.fields)):
        readers = 1
    if readers > 1 and backend == "postgresql" and await ends_idle_transactions(engine):
        readers = 1
    # One reader plans and renders on one connection; more readers need a planner of their
    # own, so that planning never waits behind a batch.
    async with shared_snapshot(engine, readers + 1 if readers > 1 else 1) as (
        planner, *renderers
    ):
        fmt = type(encoder)
        conns = [planner, *renderers]
        if backend == "sqlite":
            readers_ = renderers or [planner]
            yield conns, sqlite_blocks(planner, readers_, query, encoder, batch_rows)
        elif renderers:
            yield conns, copy_ranges(
                planner, renderers, query, fmt,
                chunk_bytes=chunk_bytes, range_rows=batch_rows * PG_RANGE_BATCHES,
            )
        else:
            yield conns, copy_blocks(planner, query, fmt, chunk_bytes=chunk_bytes)


def open_export(
    engine: AsyncEngine,
    query: ExportQuery,
    fmt: type[Format],
    settings: Settings,
    *,
    gzip: bool = False,
    progress: Progress | None = None,
    count: bool = False,
    compression: str | None = None,
) -> ChunkStream:
    """The one export pipeline, whatever the sink: HTTP, the command line, a job file.
    ``compression``: the format's own, for one that compresses inside (Parquet)."""
    stream = export_chunks(
        engine,
        query,
        fmt,
        batch_rows=settings.batch_rows,
        chunk_bytes=settings.chunk_bytes,
        readers=settings.readers,
        progress=progress,
        count=count,
        options=Options(compression, row_group_bytes=int(settings.parquet_row_group_mb * MiB)),
    )
    return gzip_chunks(stream, settings.gzip_level) if gzip else stream


async def gzip_chunks(chunks: ChunkStream, level: int) -> ChunkStream:
    """gzip a stream, flushing each chunk so the client can decode as bytes arrive."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, GZIP_WINDOW)
    async with aclosing(chunks) as source:
        async for chunk in source:
            out = compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH)
            if out:
                yield out
    yield compressor.flush(zlib.Z_FINISH)
