"""File bodies and their headers: the one component every download goes through.

``FileSender.response(request, file, etag=..., ...)`` takes a file opened by
``storage.open_within`` and answers as RFC 9110 asks: 304 and 412 from the conditional
headers (``preconditions.py``), then 200, 206 or 416 from Range and If-Range
(``ranges.py``). Every 200 and 206 carries Accept-Ranges, Content-Length, ETag,
Last-Modified, Cache-Control and Content-Disposition; HEAD gets the very headers GET would,
Range included, and no body.

The body is read with aiofiles in chunks of ``chunk_bytes`` and handed to the server one
at a time, so memory per download stays about two chunks whatever the file size. On a
client disconnect Starlette cancels the task sending the body, which stops the reads at
the next await; the response then closes its chunk generator and the file itself, as
Starlette never closes the iterator (the same reason as ``streaming.ExportResponse``).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from contextlib import aclosing
from urllib.parse import quote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from exporter.metrics import Metrics
from exporter.preconditions import Conditions, Validators, not_modified, range_applies
from exporter.ranges import (
    ByteRange,
    Pieces,
    body_length,
    content_range,
    multipart_pieces,
    parse_range,
)
from exporter.storage import ChunkStream, StoredFile

UNSAFE_IN_QUOTED = re.compile(r'[^\x20-\x7e]|["\\%]')
BOUNDARY_BYTES = 16  # random bytes in a multipart boundary: it cannot occur in the data


def content_disposition(disposition: str, filename: str) -> str:
    """RFC 6266 with an ASCII ``filename`` fallback and an RFC 8187 ``filename*``."""
    fallback = UNSAFE_IN_QUOTED.sub("_", filename)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def strong_etag(sha256_hex: str) -> str:
    """The content's own digest: the same bytes have the same ETag on every replica."""
    return f'"{sha256_hex}"'


class FileSender:
    """Turns an open file and what is known about it into the right response."""

    def __init__(
        self,
        chunk_bytes: int,
        max_ranges: int,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.chunk_bytes = chunk_bytes
        self.max_ranges = max_ranges
        self.metrics = metrics
        self.clock = clock

    async def response(
        self,
        request: Request,
        file: StoredFile,
        *,
        etag: str,
        content_type: str,
        disposition: str,
        filename: str,
        cache_control: str,
    ) -> Response:
        """The answer to a GET or HEAD of ``file``. Takes over the file: it is closed here,
        or by the response once its body is sent."""
        try:
            response = self._respond(
                request.method,
                Conditions.from_headers(request.headers),
                file,
                Validators(etag, int(file.mtime)),
                {
                    "Content-Type": content_type,
                    "Content-Disposition": content_disposition(disposition, filename),
                    "Cache-Control": cache_control,
                },
            )
        except BaseException:
            await file.close()
            raise
        if not isinstance(response, FileBodyResponse):
            await file.close()
        return response

    def _respond(
        self,
        method: str,
        conditions: Conditions,
        file: StoredFile,
        validators: Validators,
        described: dict[str, str],
    ) -> Response:
        headers = {
            "ETag": validators.etag,
            "Last-Modified": validators.http_last_modified,
            "Cache-Control": described["Cache-Control"],
        }
        if not_modified(method, conditions, validators):
            return Response(status_code=304, headers=headers)  # 15.4.5: validators repeated
        headers |= described
        headers |= {"Accept-Ranges": "bytes", "X-Content-Type-Options": "nosniff"}
        status, pieces = self._select(conditions, validators, file.size, headers)
        headers["Content-Length"] = str(body_length(pieces))
        if method == "HEAD":
            return Response(status_code=status, headers=headers)
        return FileBodyResponse(file, pieces, self.chunk_bytes, status, headers, self.metrics)

    def _select(
        self, conditions: Conditions, validators: Validators, size: int, headers: dict[str, str]
    ) -> tuple[int, Pieces]:
        """200 with the whole file or 206 with the ranges asked for; sets their headers."""
        ranges = None
        # An empty file has no byte to select: its whole, empty body is the only answer.
        if conditions.range is not None and size > 0:
            if range_applies(conditions.if_range, validators, self.clock()):
                ranges = parse_range(conditions.range, size, self.max_ranges)
        if ranges is None:
            return 200, [ByteRange(0, size)]
        if len(ranges) == 1:
            headers["Content-Range"] = content_range(ranges[0], size)
            return 206, ranges
        boundary = secrets.token_hex(BOUNDARY_BYTES)
        pieces = multipart_pieces(ranges, size, headers["Content-Type"], boundary)
        headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
        return 206, pieces


class FileBodyResponse(StreamingResponse):
    """Streams pieces of an open file (with Content-Length, never chunked), and closes the
    file whatever happens: completion, failure or the client going away."""

    def __init__(
        self,
        file: StoredFile,
        pieces: Pieces,
        chunk_bytes: int,
        status: int,
        headers: dict[str, str],
        metrics: Metrics | None,
    ) -> None:
        self.file = file
        self.pieces = pieces
        self.chunk_bytes = chunk_bytes
        self.metrics = metrics
        self.finished = False
        self.chunks = self._read()
        super().__init__(self.chunks, status_code=status, headers=headers)

    async def _read(self) -> ChunkStream:
        for piece in self.pieces:
            if isinstance(piece, bytes):
                yield piece
                continue
            async with aclosing(self.file.read(piece.start, piece.length,
                                               self.chunk_bytes)) as chunks:
                async for chunk in chunks:
                    if self.metrics is not None:
                        self.metrics.file_bytes_sent.inc(len(chunk))
                    yield chunk
        self.finished = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = "failed"
        if self.metrics is not None:
            self.metrics.file_bodies_in_progress.inc()
        try:
            await super().__call__(scope, receive, send)
            # A disconnect cancels the body task quietly: only the reader knows it ended.
            outcome = "completed" if self.finished else "disconnected"
        except ClientDisconnect:
            outcome = "disconnected"
            raise
        finally:
            try:
                await self.chunks.aclose()
            finally:
                await self.file.close()
                if self.metrics is not None:
                    self.metrics.file_bodies_in_progress.dec()
                    self.metrics.file_bodies_finished.labels(outcome).inc()
