"""The streaming plumbing on its own: closing, priming, gzip, slots."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from exporter.errors import ExportsBusy
from exporter.pipeline import gzip_chunks
from exporter.streaming import ExportResponse, ExportSlots, prime
from tests.conftest import Database


class Source:
    """An endless chunk stream that records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False
        self.sent = 0

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                self.sent += 1
                yield b"x" * 10
                await asyncio.sleep(0)
        finally:
            self.closed = True


async def test_a_response_closes_its_stream_when_the_client_disconnects() -> None:
    source = Source()
    stream = source.chunks()  # held here, so garbage collection cannot be what closes it
    response = ExportResponse(await prime(stream))
    sent: list[dict[str, Any]] = []
    disconnected = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 3:
            disconnected.set()
        await asyncio.sleep(0)

    await asyncio.wait_for(response({"type": "http", "asgi": {}}, receive, send), 5)
    assert source.closed
    assert not any(m.get("more_body") is False for m in sent), "must not look complete"


class SlowSource:
    """A stream that waits inside itself for its next chunk (a read in progress), and whose
    cleanup takes several awaits, as stopping reads and rolling back a snapshot do."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.cleaned = False

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                yield b"x" * 10
                await asyncio.sleep(self.wait)
        finally:
            for _ in range(5):
                await asyncio.sleep(0.01)
            self.cleaned = True


async def disconnect_during(response: ExportResponse, scope: dict[str, Any]) -> float:
    """Run the response, disconnect once its first chunk is sent; seconds until it ends."""
    sent = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message.get("body"):
            sent.set()

    started = time.monotonic()
    await asyncio.wait_for(response(scope, receive, send), 5)
    return time.monotonic() - started


async def test_a_disconnect_lets_the_stream_clean_up_in_full_and_at_once() -> None:
    # Below ASGI 2.4 (uvicorn says 2.3) Starlette streams in an anyio task group and cancels
    # its scope on a disconnect: anyio then cancels every await in that scope again, which
    # would cut the stream's cleanup short (a connection back in the pool mid-transaction).
    source = SlowSource(wait=30)
    stream = source.chunks()
    response = ExportResponse(await prime(stream))
    scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
    took = await disconnect_during(response, scope)
    assert source.cleaned, "the cleanup ran to its end"
    assert took < 2, "the read in progress was stopped, not waited for"


async def test_a_failure_before_the_first_chunk_is_raised_by_prime() -> None:
    closed = False

    async def failing() -> AsyncGenerator[bytes, None]:
        nonlocal closed
        try:
            raise ConnectionRefusedError("database down")
            yield b""
        finally:
            closed = True

    with pytest.raises(ConnectionRefusedError):
        await prime(failing())
    assert closed


async def test_gzip_chunks_can_be_decoded_as_each_one_arrives() -> None:
    async def parts() -> AsyncGenerator[bytes, None]:
        for i in range(5):
            yield f"part {i}\n".encode() * 100

    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    decoded = []
    async for chunk in gzip_chunks(parts(), level=6):
        decoded.append(decoder.decompress(chunk))
    # Every chunk but the trailer decodes to a whole part on its own (sync flush).
    assert [len(piece) for piece in decoded[:5]] == [700] * 5
    assert b"".join(decoded) + decoder.flush() == b"".join(
        f"part {i}\n".encode() * 100 for i in range(5)
    )
    assert decoder.eof


def test_export_slots_refuse_past_the_limit_and_free_on_release() -> None:
    slots = ExportSlots(limit=2, retry_after=7)
    slots.acquire()
    slots.acquire()
    with pytest.raises(ExportsBusy) as refused:
        slots.acquire()
    assert refused.value.headers() == {"Retry-After": "7"}
    slots.release()
    slots.acquire()


@pytest.mark.parametrize(
    "params", [[], [("country", "DE")], [("limit", "17")], [("after_id", "2990"), ("limit", "99")]]
)
async def test_counting_gives_the_number_of_rows_the_export_then_streams(
    database: Database, params: list[tuple[str, str]]
) -> None:
    from exporter.catalog import Catalog
    from exporter.formats import Ndjson
    from exporter.params import parse_query
    from exporter.pipeline import Progress, open_export

    engine = database.engine()
    progress = Progress()
    try:
        query = parse_query(await Catalog(engine).get("users"), params)
        data = b"".join([c async for c in open_export(
            engine, query, Ndjson, database.settings(), progress=progress, count=True
        )])
    finally:
        await engine.dispose()
    assert progress.total == progress.rows == data.count(b"\n")
    assert progress.total > 0
