"""``GET /exports/users.{csv,ndjson,json}``: the streaming exports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from exporter.db import UNREACHABLE
from exporter.errors import DatabaseUnavailable
from exporter.files import content_disposition
from exporter.formats import FORMATS, Encoder
from exporter.routes.deps import EngineDep, ExportQueryDep, MetricsDep, SettingsDep, SlotsDep
from exporter.streaming import (
    ExportResponse,
    Progress,
    export_chunks,
    gzip_chunks,
    observed,
    prime,
)

router = APIRouter(tags=["exports"])


def accepts_gzip(accept_encoding: str) -> bool:
    """True if the header allows gzip (RFC 9110 12.5.3: ``q=0`` means not acceptable)."""
    allowed: dict[str, bool] = {}
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        allowed[coding.strip()] = quality > 0
    return allowed.get("gzip", allowed.get("x-gzip", allowed.get("*", False)))


def export_filename(encoder: type[Encoder], now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"users-{stamp}.{encoder.extension}"


def _endpoint(fmt: str) -> Callable[..., Awaitable[ExportResponse]]:
    encoder_class = FORMATS[fmt]

    async def export_users(
        request: Request,
        query: ExportQueryDep,
        settings: SettingsDep,
        engine: EngineDep,
        metrics: MetricsDep,
        slots: SlotsDep,
    ) -> ExportResponse:
        gzip = accepts_gzip(request.headers.get("accept-encoding", ""))
        slots.acquire()
        metrics.exports_started.labels(fmt).inc()
        metrics.exports_in_progress.inc()
        rows_total = metrics.export_rows.labels(fmt)
        bytes_total = metrics.export_bytes.labels(fmt)

        def on_batch(rows: int, size: int) -> None:
            rows_total.inc(rows)
            bytes_total.inc(size)

        def on_end(outcome: str) -> None:
            slots.release()
            metrics.exports_in_progress.dec()
            metrics.exports_finished.labels(fmt, outcome).inc()

        progress = Progress(on_batch=on_batch)
        stream = export_chunks(
            engine,
            query,
            encoder_class(query.fields, query.kinds()),
            batch_rows=settings.batch_rows,
            chunk_bytes=settings.chunk_bytes,
            progress=progress,
        )
        if gzip:
            stream = gzip_chunks(stream, settings.gzip_level)
        try:
            body = await prime(observed(stream, progress, on_end))
        except UNREACHABLE as exc:
            raise DatabaseUnavailable(f"the database could not be read: {exc}") from exc
        filename = export_filename(encoder_class)
        headers = {
            "Content-Disposition": content_disposition("attachment", filename),
            "Cache-Control": "no-store",
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }
        if gzip:
            headers["Content-Encoding"] = "gzip"
        return ExportResponse(body, media_type=encoder_class.media_type, headers=headers)

    export_users.__name__ = f"export_users_{fmt}"
    export_users.__doc__ = f"Stream the users table as {fmt}, in ascending id, from one snapshot."
    return export_users


for _fmt, _encoder in FORMATS.items():
    router.add_api_route(
        f"/exports/users.{_encoder.extension}",
        _endpoint(_fmt),
        methods=["GET"],
        response_class=ExportResponse,
        responses={200: {"content": {_encoder.media_type.split(";")[0]: {}}}},
    )
