"""``/health``, ``/ready`` and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from exporter.db import current_revision
from exporter.openapi import error
from exporter.routes.deps import EngineDep, JobStorageDep, MetricsDep, SchemaRevisionDep

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive: the process answers. Says nothing about the database."""
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={503: error("The database is unreachable, or the service's state is not "
                          "migrated to this code's revision.")},
)
async def ready(
    engine: EngineDep, expected: SchemaRevisionDep, storage: JobStorageDep
) -> JSONResponse:
    """Ready: the database answers, and the service's own state (the schema ``exporter``)
    is migrated to the revision this code expects. The job storage is reported too; one
    that does not answer makes the service ``degraded``, still 200: exports need only the
    database, and a load balancer must not take a replica out for a bucket every replica
    shares."""
    try:
        async with engine.connect() as conn:
            revision = await current_revision(conn)
    except Exception as exc:  # any failure to reach the database means "not ready"
        return _unready("database_unavailable", f"the database could not be reached: {exc}")
    if revision != expected:
        return _unready(
            "schema_not_migrated",
            f"the service's state (schema exporter) is at revision {revision!r}, this code "
            f"needs {expected!r}; run `exporter migrate`",
        )
    answer: dict[str, str] = {"status": "ready", "database": engine.dialect.name,
                              "job_storage": storage.description}
    if (problem := await storage.problem()) is not None:
        answer |= {"status": "degraded", "job_storage_problem": problem}
    return JSONResponse(answer)


def _unready(code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"status": "unavailable", "error": code, "message": message}, status_code=503
    )


@router.get(
    "/metrics", response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}},
                     "description": "The Prometheus text format."}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
