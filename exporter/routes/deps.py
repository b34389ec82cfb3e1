"""``Annotated`` dependency aliases shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.config import Settings
from exporter.files import FileSender
from exporter.metrics import Metrics
from exporter.queries import ExportQuery, parse_export_query
from exporter.storage import DigestCache
from exporter.streaming import ExportSlots
from exporter.worker import Worker


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _engine(request: Request) -> AsyncEngine:
    return request.app.state.engine  # type: ignore[no-any-return]


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def _slots(request: Request) -> ExportSlots:
    return request.app.state.export_slots  # type: ignore[no-any-return]


def _schema_revision(request: Request) -> str:
    return request.app.state.schema_revision  # type: ignore[no-any-return]


def _file_sender(request: Request) -> FileSender:
    return request.app.state.file_sender  # type: ignore[no-any-return]


def _digests(request: Request) -> DigestCache:
    return request.app.state.digests  # type: ignore[no-any-return]


def _worker(request: Request) -> Worker | None:
    return getattr(request.app.state, "worker", None)


def _export_query(
    request: Request,
    # Declared for the OpenAPI page only: the values are read from the raw query string,
    # so that unknown and repeated parameters are errors rather than silently ignored.
    fields: Annotated[str | None, Query(description="Comma list of columns, in order.")] = None,
    country: Annotated[str | None, Query(description="Comma list of ISO codes: DE,FR.")] = None,
    plan: Annotated[str | None, Query(description="free, pro or enterprise; a comma list.")] = None,
    is_active: Annotated[str | None, Query(description="true or false.")] = None,
    created_from: Annotated[str | None, Query(description="ISO 8601, inclusive.")] = None,
    created_to: Annotated[str | None, Query(description="ISO 8601, exclusive.")] = None,
    after_id: Annotated[str | None, Query(description="Resume: only ids above this.")] = None,
    limit: Annotated[str | None, Query(description="At most this many rows.")] = None,
) -> ExportQuery:
    return parse_export_query(request.query_params.multi_items())


SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[AsyncEngine, Depends(_engine)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
SlotsDep = Annotated[ExportSlots, Depends(_slots)]
ExportQueryDep = Annotated[ExportQuery, Depends(_export_query)]
SchemaRevisionDep = Annotated[str, Depends(_schema_revision)]
FileSenderDep = Annotated[FileSender, Depends(_file_sender)]
DigestsDep = Annotated[DigestCache, Depends(_digests)]
WorkerDep = Annotated[Worker | None, Depends(_worker)]
