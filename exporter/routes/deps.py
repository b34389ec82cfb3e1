"""``Annotated`` dependency aliases shared by the routers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.config import Settings
from exporter.files import FileSender
from exporter.metrics import Metrics
from exporter.queries import ExportQuery, parse_export_query
from exporter.storage import DigestCache
from exporter.streaming import ExportSlots
from exporter.worker import Worker


def _state(attribute: str) -> Callable[[Request], Any]:
    """A dependency giving what the lifespan put on ``app.state`` under ``attribute``."""

    def dependency(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    return dependency



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


SettingsDep = Annotated[Settings, Depends(_state("settings"))]
EngineDep = Annotated[AsyncEngine, Depends(_state("engine"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
SlotsDep = Annotated[ExportSlots, Depends(_state("export_slots"))]
SchemaRevisionDep = Annotated[str, Depends(_state("schema_revision"))]
FileSenderDep = Annotated[FileSender, Depends(_state("file_sender"))]
DigestsDep = Annotated[DigestCache, Depends(_state("digests"))]
ExportQueryDep = Annotated[ExportQuery, Depends(_export_query)]
WorkerDep = Annotated[Worker | None, Depends(_state("worker"))]
