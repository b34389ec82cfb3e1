"""``Annotated`` dependency aliases shared by the routers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.catalog import Catalog
from exporter.config import Settings
from exporter.files import FileSender
from exporter.metrics import Metrics
from exporter.storage import DigestCache
from exporter.streaming import ExportSlots
from exporter.worker import Worker


def _state(attribute: str) -> Callable[[Request], Any]:
    """A dependency giving what the lifespan put on ``app.state`` under ``attribute``."""

    def dependency(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    return dependency



SettingsDep = Annotated[Settings, Depends(_state("settings"))]
EngineDep = Annotated[AsyncEngine, Depends(_state("engine"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
SlotsDep = Annotated[ExportSlots, Depends(_state("export_slots"))]
SchemaRevisionDep = Annotated[str, Depends(_state("schema_revision"))]
FileSenderDep = Annotated[FileSender, Depends(_state("file_sender"))]
DigestsDep = Annotated[DigestCache, Depends(_state("digests"))]
CatalogDep = Annotated[Catalog, Depends(_state("catalog"))]
WorkerDep = Annotated[Worker | None, Depends(_state("worker"))]
