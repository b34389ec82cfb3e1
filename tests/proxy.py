"""A TCP proxy between a client and a real server that cuts connections: the network
failures the client must survive, made on purpose.

Each new connection takes the next budget from ``cuts``: once that many bytes have gone from
the server to the client, the connection is cut, alternately reset (RST) and closed
(FIN: a body that just stops). Connections past the last budget pass untouched. ``rate``
slows the server's bytes, so that a test can act while a download is under way;
``upload_rate`` slows the client's, so that it can act while an upload is."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from types import TracebackType
from urllib.parse import urlsplit


class CuttingProxy:
    def __init__(self, upstream: str, cuts: Sequence[int] = (), rate: float | None = None,
                 upload_rate: float | None = None) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cuts = list(cuts)
        self.rate = rate
        self.upload_rate = upload_rate
        self.sent = 0  # bytes passed from the server to clients
        self.cut = 0  # connections cut
        self.connections = 0
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> CuttingProxy:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(10)
        self.server = server
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        async def stop() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        budget = self.cuts.pop(0) if self.cuts else None
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.transport.abort()  # the server is down: so is the proxied connection
            return
        forward = asyncio.ensure_future(self._pipe(reader, up_writer))
        try:
            await self._back(up_reader, writer, budget)
        finally:
            forward.cancel()
            up_writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if self.upload_rate:
                await asyncio.sleep(len(data) / self.upload_rate)

    async def _back(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    budget: int | None) -> None:
        passed = 0
        try:
            while data := await reader.read(16384):
                if budget is not None and passed + len(data) >= budget:
                    writer.write(data[:budget - passed])
                    self.sent += budget - passed
                    await writer.drain()
                    self.cut += 1
                    if self.cut % 2:
                        writer.transport.abort()
                    else:
                        writer.close()
                    return
                writer.write(data)
                passed += len(data)
                self.sent += len(data)
                await writer.drain()
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)
            writer.close()
        except (ConnectionError, OSError):
            writer.transport.abort()
