"""``GET /exports/{table}.{format}`` (csv, ndjson, json, tsv, parquet): the streaming exports, of
any exposed table, and their live form (``follow=true``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import StreamingResponse

from exporter.catalog import Catalog
from exporter.config import Settings
from exporter.errors import (
    InvalidParameter,
    NotFound,
    echo,
)
from exporter.files import content_disposition
from exporter.follow import (
    FOLLOW,
    Followers,
    FollowResponse,
    check_followable,
    follow_rows,
    followed,
    ndjson_body,
)
from exporter.formats import BY_EXTENSION, FORMATS, Format
from exporter.formats.ndjson import Ndjson
from exporter.openapi import BAD_PARAMETER, EXPORT_MEDIA_TYPES, EXPORTS_BUSY, not_found
from exporter.params import boolean, parse_query
from exporter.pipeline import Progress, gzip_chunks, open_export
from exporter.queries import ExportQuery
from exporter.routes.deps import CatalogDep, EngineDep, MetricsDep, SettingsDep, SlotsDep
from exporter.storage import ChunkStream
from exporter.streaming import NO_BUFFERING, ExportResponse, observed, response_body

router = APIRouter(tags=["exports"])


def accepts_gzip(accept_encoding: str) -> bool:
    """True if the header allows gzip (RFC 9110 12.5.3: ``q=0`` means not acceptable)."""
    allowed: dict[str, bool] = {}
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        allowed[coding.strip()] = quality > 0
    return allowed.get("gzip", allowed.get("x-gzip", allowed.get("*", False)))


def export_filename(table: str, fmt: type[Format], now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{table}-{stamp}.{fmt.extension}"


def split_export_name(name: str) -> tuple[str, type[Format]]:
    """``users.csv`` -> ("users", Csv); a 404 listing the formats for another extension."""
    table, dot, extension = name.rpartition(".")
    if not dot or extension not in BY_EXTENSION:
        raise NotFound(
            f"{echo(name)!r} does not end in an export format's extension; valid: "
            f"{', '.join('.' + fmt.extension for fmt in FORMATS.values())}",
            valid=[fmt.extension for fmt in FORMATS.values()],
        )
    return table, BY_EXTENSION[extension]


MEDIA_TYPES: dict[str, dict[str, object]] = {media_type: {} for media_type in EXPORT_MEDIA_TYPES}


@router.get(
    # :path, so that a table whose name holds a slash (sent as %2F, which the server
    # decodes before routing) is still this route, as GET /tables links it.
    "/exports/{name:path}",
    response_class=ExportResponse,
    responses={200: {"content": MEDIA_TYPES,
                     "description": "The table, in the format its extension names."}}
    | not_found("No such table, or no such format: `valid` lists those there are.")
    | BAD_PARAMETER | EXPORTS_BUSY,
)
async def export_table(
    request: Request,
    name: Annotated[str, Path(
        description="`<table>.<csv|tsv|ndjson|json|parquet>`, e.g. users.csv")],
    settings: SettingsDep,
    engine: EngineDep,
    catalog: CatalogDep,
    metrics: MetricsDep,
    slots: SlotsDep,
) -> ExportResponse:
    """Stream a table in primary-key order, from one snapshot. Query parameters
    (Datasette's grammar): `fields=a,b`, `col=v1,v2`, `col__exact=`, `col__gt=`,
    `col__gte=`, `col__lt=`, `col__lte=`, `col__isnull=true|false`, `limit=`, `after=`;
    `.parquet` also takes `compression=zstd|snappy|gzip|none`. `GET /tables/{table}`
    lists a table's columns."""
    query, fmt, gzip, compression, follow = await _resolve(request, name, catalog)
    if follow:
        return await _follow(request, query, gzip, engine, settings)
    slots.acquire()
    on_batch, metrics_end = metrics.export_started(fmt.name)

    def on_end(outcome: str) -> None:
        slots.release()
        metrics_end(outcome)

    progress = Progress(on_batch=on_batch)
    count = prefers_exact_count(request.headers.getlist("prefer"))
    stream = open_export(engine, query, fmt, settings, gzip=gzip, progress=progress,
                         count=count, compression=compression)
    body = await response_body(observed(stream, progress, on_end))
    headers = export_headers(query.table.name, fmt, gzip)
    if count and progress.total is not None:  # counted before the first chunk, same snapshot
        headers |= {"Preference-Applied": "count=exact", TOTAL_COUNT: str(progress.total)}
    return ExportResponse(body, media_type=fmt.media_type, headers=headers)


TOTAL_COUNT = "X-Total-Count"


def prefers_exact_count(prefer: list[str]) -> bool:
    """Whether ``Prefer`` (RFC 7240, PostgREST's convention) asks for ``count=exact``: the
    rows the export will give, in ``X-Total-Count``. Preferences a server does not know are
    ignored, as the RFC says."""
    for header in prefer:
        for preference in header.split(","):
            token, _, value = preference.split(";")[0].partition("=")
            if token.strip().lower() == "count" and value.strip().strip('"').lower() == "exact":
                return True
    return False


@router.head("/exports/{name:path}", include_in_schema=False)
async def export_table_head(
    request: Request, name: str, catalog: CatalogDep,
) -> StreamingResponse:
    """The headers GET would send, after the same checks (404, 422), without reading a
    row: no snapshot, no export slot. The body is empty and chunked, as GET's would be,
    so that no Content-Length: 0 claims the export is empty."""
    query, fmt, gzip, _, follow = await _resolve(request, name, catalog)
    headers = export_headers(query.table.name, fmt, gzip) | (NO_BUFFERING if follow else {})
    return StreamingResponse(iter(()), media_type=fmt.media_type, headers=headers)


async def _resolve(
    request: Request, name: str, catalog: Catalog,
) -> tuple[ExportQuery, type[Format], bool, str | None, bool]:
    """The query, format, whether to gzip, the format's compression and whether to follow,
    from the name and the request: 404s and 422s the same for GET and HEAD."""
    table_name, fmt = split_export_name(name)
    table = await catalog.get(table_name)
    items = request.query_params.multi_items()
    errors: list[InvalidParameter] = []
    compression = None
    follow = False
    # A parameter of NDJSON's; on a table with a column so named, that column's filter.
    if not table.has(FOLLOW) and any(key == FOLLOW for key, _ in items):
        given = [value for key, value in items if key == FOLLOW]
        items = [(key, value) for key, value in items if key != FOLLOW]
        try:
            follow = _follows(fmt, given)
            if follow:  # resumed after=, and ordered, by the key a live stream follows
                table = followed(table, request.app.state.settings)
        except InvalidParameter as error:
            errors.append(error)
    if fmt.compressions:  # a parameter of the format's, not a filter on a column so named
        given = [value for key, value in items if key == COMPRESSION]
        items = [(key, value) for key, value in items if key != COMPRESSION]
        try:
            compression = format_compression(fmt, given)
        except InvalidParameter as error:
            errors.append(error)
    try:
        query = parse_query(table, items)
    except InvalidParameter as error:
        errors.append(error)
    if follow and not errors:
        try:
            check_followable(query, request.app.state.settings)
        except InvalidParameter as error:
            errors.append(error)
    if errors:
        raise InvalidParameter.combined(errors)
    accepted = ",".join(request.headers.getlist("accept-encoding"))
    gzip = fmt.compressible and accepts_gzip(accepted)
    return query, fmt, gzip, compression, follow


def _follows(fmt: type[Format], given: list[str]) -> bool:
    if len(given) > 1:
        raise InvalidParameter(FOLLOW, given[-1], "given more than once")
    follow = boolean(FOLLOW, given[0])
    if follow and fmt is not Ndjson:
        raise InvalidParameter(
            FOLLOW, given[0], f"a live stream is NDJSON: ask for .ndjson, or GET "
            f"/streams/{{table}} for Server-Sent Events (not .{fmt.extension})",
        )
    return follow


async def _follow(request: Request, query: ExportQuery, gzip: bool, engine: AsyncEngine,
                  settings: Settings) -> ExportResponse:
    """``follow=true``: the rows after ``after``, then each new one as it is committed."""
    followers: Followers = request.app.state.followers
    on_rows, on_end = followers.start("ndjson")
    rows = follow_rows(engine, followers.changes, query, settings)
    stream: ChunkStream = ndjson_body(rows, on_rows)
    if gzip:
        stream = gzip_chunks(stream, settings.gzip_level)
    body = await response_body(observed(stream, Progress(), on_end))
    return FollowResponse(
        body, media_type=Ndjson.media_type,
        headers=export_headers(query.table.name, Ndjson, gzip) | NO_BUFFERING,
        send_seconds=settings.follow_send_seconds,
        on_slow=followers.metrics.followers_slow.inc,
    )


COMPRESSION = "compression"


def format_compression(fmt: type[Format], given: list[str]) -> str | None:
    """``compression=`` of a format that compresses inside (Parquet); None: its default."""
    if not given:
        return None
    if len(given) > 1:
        raise InvalidParameter(COMPRESSION, given[-1], "given more than once")
    if given[0] not in fmt.compressions:
        raise InvalidParameter(COMPRESSION, given[0], f"not a compression {fmt.name} offers",
                               valid=fmt.compressions)
    return given[0]


def export_headers(table_name: str, fmt: type[Format], gzip: bool) -> dict[str, str]:
    headers = {
        "Content-Disposition": content_disposition(
            "attachment", export_filename(table_name, fmt)
        ),
        "Cache-Control": "no-store",
        "Vary": "Accept-Encoding, Prefer",
        "X-Content-Type-Options": "nosniff",
    }
    if gzip:
        headers["Content-Encoding"] = "gzip"
    return headers
