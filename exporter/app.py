"""``create_app(settings)``: the FastAPI application, its lifespan (engine, metrics, the
in-process job worker) and its error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from exporter.auth import Access
from exporter.catalog import Catalog
from exporter.config import Settings, load_settings
from exporter.db import create_engine, head_revision
from exporter.errors import (
    DATABASE_DOWN,
    REPORTED_ERRORS,
    DatabaseUnavailable,
    ExporterError,
    echo,
)
from exporter.files import FileSender
from exporter.follow import Followers
from exporter.job_storage import job_storage
from exporter.memory import MemoryTrimmer
from exporter.metrics import Metrics
from exporter.openapi import complete_document
from exporter.routes import exports, files, jobs, ops, pages, schedules, streams, tables
from exporter.storage import DigestCache
from exporter.streaming import ExportSlots
from exporter.worker import Worker

log = logging.getLogger("exporter")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # asked for a 405


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool_size, max_overflow = settings.pool(api=True)
        engine = create_engine(
            settings.resolved_database_url,
            state_path=settings.state_database_path,
            pool_size=pool_size,
            max_overflow=max_overflow,
            sqlite_nice=settings.sqlite_nice,
        )
        app.state.engine = engine
        app.state.catalog = Catalog.from_settings(engine, settings)
        app.state.schema_revision = head_revision()
        app.state.metrics = Metrics(engine)
        app.state.export_slots = ExportSlots(
            settings.max_concurrent_exports, settings.retry_after_seconds, MemoryTrimmer()
        )
        app.state.file_sender = FileSender(
            settings.file_chunk_bytes, settings.max_ranges, app.state.metrics
        )
        app.state.digests = DigestCache()
        app.state.followers = Followers(engine, settings, app.state.metrics)
        app.state.job_storage = job_storage(settings)
        app.state.worker = None
        _log_access(settings)
        try:
            # Each raises, and the service does not start, if jobs cannot work here at all.
            await app.state.job_storage.start(writing=settings.run_worker)
            if settings.run_worker:
                worker = Worker(engine, settings, app.state.metrics, app.state.catalog,
                                app.state.job_storage)
                await worker.start()
                app.state.worker = worker
            yield
        finally:
            if app.state.worker is not None:
                await app.state.worker.stop()
            await app.state.job_storage.close()
            await app.state.followers.close()
            await engine.dispose()

    app = FastAPI(
        title="exporter",
        summary=("Stream big tables out as CSV, TSV, NDJSON, JSON and Parquet: fast, safe, "
                 "resumable."),
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by routes/pages.py, without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(
        Access,
        keys=[key.get_secret_value() for key in settings.api_keys],
        allow_open=settings.allow_open,
    )
    app.include_router(tables.router)
    app.include_router(exports.router)
    app.include_router(streams.router)
    app.include_router(files.router)
    app.include_router(jobs.router)
    app.include_router(schedules.router)
    app.include_router(ops.router)
    app.include_router(pages.router)
    pages.mount_docs_assets(app)
    complete_document(app, settings)
    _add_error_handlers(app)
    return app


def _log_access(settings: Settings) -> None:
    if settings.api_keys:
        log.info("%d API key(s): every endpoint but /health and /ready needs one",
                 len(settings.api_keys))
    elif settings.allow_open:
        log.info("no API keys, and EXPORTER_ALLOW_OPEN=true: open to whoever reaches the port")
    else:
        log.info("no API keys: answering on loopback addresses only")


# Where a value came from, which pydantic puts first in its location: not part of its name.
SOURCES = ("body", "query", "path", "header", "cookie")


def _field(location: Any) -> str:
    """A field as the README names it: ``cron``, ``job.filters.plan``."""
    parts = [str(part) for part in location]
    if len(parts) > 1 and parts[0] in SOURCES:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _said(error: Any) -> str:
    """Pydantic's message without its own prefix: ``never comes``, not ``Value error, ...``."""
    message = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ExporterError)
    async def exporter_error(_request: Request, exc: ExporterError) -> JSONResponse:
        if exc.status == 500:  # a broken export: ours to look into (logged where it broke);
            # its message names keys and snapshots, which are not the client's to read
            return JSONResponse({"error": exc.code, "message": f"{exc.code}; see the log"},
                                status_code=500)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # A location holds the client's own keys: quoted back short and encodable, and only
        # the first few (a list of 100,000 bad items is 100,000 errors).
        errors = [{"loc": [echo(part) for part in e.get("loc", ())], "msg": _said(e),
                   "type": e.get("type")} for e in exc.errors()[:REPORTED_ERRORS]]
        first = errors[0] if errors else {}
        where = _field(first.get("loc", ()))
        # Every problem at once, each under the name the README gives it: `cron: ...`.
        message = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in errors) or "invalid"
        if first.get("type") == "json_invalid":  # loc is ("body", <character offset>)
            reason = (exc.errors()[0].get("ctx") or {}).get("error", "")
            message = (f"the body is not valid JSON ({reason} at character "
                       f"{where}); send a JSON object")
        return JSONResponse(
            {
                "error": "invalid_parameter",
                "message": message,
                "parameter": where,
                "errors": errors,
            },
            status_code=422,
        )

    # Anywhere else a database failure escapes to (jobs, schedules), it is still a 503.
    async def database_error(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database error: %s", exc)
        cause = getattr(exc, "orig", None) or exc
        error = DatabaseUnavailable(
            f"the database could not be used ({cause}); GET /ready tells whether it is "
            "reachable and migrated"
        )
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers())

    for down in DATABASE_DOWN:
        app.add_exception_handler(down, database_error)

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return JSONResponse(
            {"error": "internal_error", "message": f"unexpected {type(exc).__name__}; see the log"},
            status_code=500,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code, message, headers = "http_error", str(exc.detail), dict(exc.headers or {})
        if exc.status_code == 404:
            code = "not_found"
        elif exc.status_code == 405:
            allowed = _allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            code = "method_not_allowed"
            message = (f"{echo(request.method)} is not a method of {echo(request.url.path)}; "
                       f"its methods are {', '.join(allowed)}")
        elif exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's "There was an error parsing the body", for bytes that are no text
            code = "malformed_body"
            message = (f"the body is not JSON text in UTF-8 ({exc.__cause__}); send a JSON "
                       "object encoded in UTF-8")
        return JSONResponse(
            {"error": code, "message": message},
            status_code=exc.status_code,
            headers=headers,
        )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at this path. Starlette's 405 names only the first
    route's: GET /files and HEAD /files are two routes, as are GET and DELETE /jobs/{id}."""
    allowed = []
    for method in HTTP_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed
