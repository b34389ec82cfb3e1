"""The export's HTTP response body: failure modes decided, slots counted.

- Before the first byte: ``prime`` runs the query up to its first chunk while the route can
  still answer with a JSON error status (``response_body``: a database that could not be
  read is the 503).
- After the first byte: an exception propagates to the server, which closes the connection
  without the last chunk, so every client sees an incomplete body. Nothing is ever written
  that would make a truncated export look complete.
- Disconnects: Starlette cancels the body task but never closes the iterator, so
  ``ExportResponse`` closes it itself.
- ``ExportSlots``: at most so many exports at once; the next is refused, not queued.

The bytes themselves come from pipeline.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Generic, TypeVar, overload

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from exporter.errors import DATABASE_UNREACHABLE, DatabaseUnavailable, ExportsBusy
from exporter.memory import MemoryTrimmer
from exporter.pipeline import Progress
from exporter.storage import ChunkStream

log = logging.getLogger("exporter.streaming")

CLOSE_WAIT = 10.0  # seconds a closed export may take to unwind (stop its reads, roll back)


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
