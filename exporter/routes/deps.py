"""``Annotated`` dependency aliases shared by the routers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.catalog import Catalog
from exporter.config import Settings
from exporter.errors import InvalidParameter
from exporter.files import FileSender
from exporter.job_storage import JobStorage
from exporter.metrics import Metrics
from exporter.storage import DigestCache
from exporter.streaming import ExportSlots


def _state(attribute: str) -> Callable[[Request], Any]:
    """A dependency giving what the lifespan put on ``app.state`` under ``attribute``."""

    def dependency(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    return dependency


class Waker(Protocol):
    """What a route needs of this process's worker (worker.Worker): a job was queued, so it
    need not wait for its next poll. The routes stay apart from the worker's machinery."""

    def wake(self) -> None: ...


SettingsDep = Annotated[Settings, Depends(_state("settings"))]
EngineDep = Annotated[AsyncEngine, Depends(_state("engine"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
SlotsDep = Annotated[ExportSlots, Depends(_state("export_slots"))]
SchemaRevisionDep = Annotated[str, Depends(_state("schema_revision"))]
FileSenderDep = Annotated[FileSender, Depends(_state("file_sender"))]
DigestsDep = Annotated[DigestCache, Depends(_state("digests"))]
CatalogDep = Annotated[Catalog, Depends(_state("catalog"))]
WorkerDep = Annotated[Waker | None, Depends(_state("worker"))]
JobStorageDep = Annotated[JobStorage, Depends(_state("job_storage"))]


class _Members(list[tuple[str, Any]]):
    """A JSON object's members in order, duplicates kept (``json``'s pairs hook)."""


def _first_duplicate(value: Any, path: str) -> tuple[str, Any] | None:
    if isinstance(value, _Members):
        seen: set[str] = set()
        for key, member in value:
            where = f"{path}.{key}" if path else key
            if key in seen:
                return where, member
            seen.add(key)
            found = _first_duplicate(member, where)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_duplicate(item, f"{path}[{index}]")
            if found:
                return found
    return None


async def unique_json_keys(request: Request) -> None:
    """A 422 for a JSON body that names a key twice in one object: ``json`` would keep the
    last value silently (``{"format": "csv", "format": "json"}`` would export JSON), and
    which one a client meant cannot be known. A body that is not JSON is left to FastAPI's
    own error."""
    try:
        parsed = json.loads(await request.body(), object_pairs_hook=_Members)
    except ValueError:
        return
    found = _first_duplicate(parsed, "")
    if found:
        where, member = found
        raise InvalidParameter(
            where, member if isinstance(member, str | int | float | bool) else "...",
            "this key is given more than once in one JSON object; give it once",
        )


StrictJsonBody = Depends(unique_json_keys)

