"""Blocks of rendered rows -> chunks -> (gzip) -> the response body, failure modes decided.

- One snapshot: ``export_chunks`` opens its connection(s) inside the generator and reads
  blocks by the backend's route (SQLite's batches in cursors.py, PostgreSQL's COPY in
  pg_copy.py), so closing the generator (``aclose``) ends the read and returns the
  connections, whoever closes it.
- Between batches the loop gets control back (``await asyncio.sleep(0)``).
- Before the first byte: ``prime`` runs the query up to its first chunk while the route can
  still answer with a JSON error status.
- After the first byte: an exception propagates to the server, which closes the connection
  without the last chunk, so every client sees an incomplete body. Nothing is ever written
  that would make a truncated export look complete.
- Disconnects: Starlette cancels the body task but never closes the iterator, so
  ``ExportResponse`` closes it itself.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from exporter.config import Settings
from exporter.cursors import sqlite_blocks
from exporter.db import backend_name, shared_snapshot
from exporter.errors import DATABASE_UNREACHABLE, DatabaseUnavailable, ExportsBusy
from exporter.formats import Block, Format, Options
from exporter.formats.base import DEFAULT_OPTIONS, MiB
from exporter.memory import MemoryTrimmer
from exporter.pg_copy import copy_blocks, copy_ranges, ends_idle_transactions
from exporter.queries import ExportQuery, build_count, order_key
from exporter.render import sqlite_calls_python
from exporter.storage import ChunkStream

log = logging.getLogger("exporter.streaming")

GZIP_WINDOW = 16 + zlib.MAX_WBITS  # zlib's way of asking for a gzip header and trailer
CLOSE_WAIT = 10.0  # seconds a closed export may take to unwind (stop its reads, roll back)
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
        conn, blocks
    ):
        if count:
            count_rows = build_count(query, backend_name(engine))
            progress.total = (await conn.execute(count_rows)).scalar_one()
        await encoder.prepare(conn, query)
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
) -> AsyncIterator[tuple[AsyncConnection, AsyncGenerator[Block, None]]]:
    """The export's blocks, by each backend's fastest route, and a connection in the same
    snapshot to count on: SQLite's parallel readers (cursors.py), PostgreSQL's COPY
    (pg_copy.py). What has no key to cut ranges by is read by one statement."""
    backend = backend_name(engine)
    if not order_key(query):
        readers = 1
    if backend == "sqlite" and sqlite_calls_python(map(query.table.column, query.fields)):
        readers = 1
    if readers > 1 and backend == "postgresql" and await ends_idle_transactions(engine):
        readers = 1
    # One reader plans and renders on one connection; more readers need a planner of their
    # own, so that planning never waits behind a batch.
    async with shared_snapshot(engine, readers + 1 if readers > 1 else 1) as (
        planner, *renderers
    ):
        fmt = type(encoder)
        if backend == "sqlite":
            readers_ = renderers or [planner]
            yield planner, sqlite_blocks(planner, readers_, query, encoder, batch_rows)
        elif renderers:
            yield planner, copy_ranges(
                planner, renderers, query, fmt,
                chunk_bytes=chunk_bytes, range_rows=batch_rows * PG_RANGE_BATCHES,
            )
        else:
            yield planner, copy_blocks(planner, query, fmt, chunk_bytes=chunk_bytes)


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


async def observed(
    chunks: ChunkStream, progress: Progress, on_end: Callable[[str], None]
) -> ChunkStream:
    """Pass chunks through; tell ``on_end`` how the export ended, and log an abort."""
    outcome = "failed"
    try:
        async with aclosing(chunks) as source:
            async for chunk in source:
                yield chunk
        outcome = "completed"
    except (GeneratorExit, asyncio.CancelledError):
        outcome = "disconnected"
        raise
    except Exception:
        if progress.bytes:
            log.exception(
                "export failed after %d rows (%d bytes); aborting the response so that the "
                "client sees an incomplete body", progress.rows, progress.bytes,
            )
        else:
            log.warning("export failed before its first byte", exc_info=True)
        raise
    finally:
        on_end(outcome)


class ExportSlots:
    """At most ``limit`` exports at once; the next one is refused, not queued."""

    def __init__(self, limit: int, retry_after: int,
                 trimmer: MemoryTrimmer | None = None,
                 busy: type[ExportsBusy] = ExportsBusy) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.in_use = 0
        self.trimmer = trimmer
        self.busy = busy  # the 503 a refused one gets

    def acquire(self) -> None:
        if self.in_use >= self.limit:
            raise self.busy(self.limit, self.retry_after)
        self.in_use += 1
        if self.trimmer is not None:
            self.trimmer.busy()

    def release(self) -> None:
        self.in_use -= 1
        if self.in_use == 0 and self.trimmer is not None:
            self.trimmer.idle()


Item = TypeVar("Item")


class PrimedStream(Generic[Item]):
    """A stream whose first chunk was already produced, so that failures before it
    could still become an error status. ``aclose`` closes the underlying stream.

    Each later chunk is made in a task of its own and awaited through a shield. Starlette
    iterates the body inside an anyio cancel scope that it cancels on a disconnect, and
    anyio cancels again at every await until the scope is left: code unwinding inside the
    stream (stopping COPYs, rolling back the snapshot) would be cut short at each step,
    and a connection could go back to the pool mid-transaction. Shielded, the chunk being
    made goes on until ``aclose``, outside the scope, cancels it once, so that the stream
    unwinds in order."""

    def __init__(self, first: Item, rest: AsyncGenerator[Item, None]) -> None:
        self.first = first
        self.rest = rest
        self.step: asyncio.Future[Item] | None = None

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Item]:
        yield self.first
        while True:
            self.step = asyncio.ensure_future(anext(self.rest))
            try:
                chunk = await asyncio.shield(self.step)
            except StopAsyncIteration:
                return
            yield chunk

    async def aclose(self) -> None:
        step = self.step
        if step is not None and not step.done():
            # Cancelled once, outside Starlette's scope, the stream unwinds in order.
            step.cancel()
            await asyncio.wait({step}, timeout=CLOSE_WAIT)
            if not step.done():
                log.error("an export did not end within %s s of being closed; it is left "
                          "to end on its own", CLOSE_WAIT)
                return
        if step is not None and not step.cancelled():
            step.exception()  # retrieved: it was raised in _iterate, or is moot now
        await self.rest.aclose()


@overload
async def prime(stream: ChunkStream) -> PrimedStream[bytes]: ...
@overload
async def prime(stream: AsyncGenerator[Item, None], empty: Item) -> PrimedStream[Item]: ...


async def prime(stream: AsyncGenerator[Any, None], empty: Any = b"") -> PrimedStream[Any]:
    """The stream with its first item made (``empty`` if it has none: no bytes), while a
    failure can still be an error status."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = empty
    except BaseException:
        await stream.aclose()
        raise
    return PrimedStream(first, stream)


@overload
async def response_body(stream: ChunkStream) -> PrimedStream[bytes]: ...
@overload
async def response_body(stream: AsyncGenerator[Item, None], empty: Item
                        ) -> PrimedStream[Item]: ...


async def response_body(stream: AsyncGenerator[Any, None], empty: Any = b""
                        ) -> PrimedStream[Any]:
    """A route's body, primed: a database that could not be read before the first byte
    is a 503 with Retry-After."""
    try:
        return await prime(stream, empty)
    except DATABASE_UNREACHABLE as exc:
        raise DatabaseUnavailable(f"the database could not be read: {exc}") from exc


# A proxy that buffers a response (nginx does by default) would hold a stream's rows.
NO_BUFFERING = {"X-Accel-Buffering": "no"}
EVENT_STREAM_HEADERS = {"Cache-Control": "no-cache", **NO_BUFFERING}


class ExportResponse(StreamingResponse):
    """A streaming response that always closes its stream: on completion, on failure and
    on a client disconnect (where Starlette only cancels the task that iterates it)."""

    body_iterator: PrimedStream[bytes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
