"""``/health``, ``/ready`` and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from exporter.routes.deps import EngineDep, MetricsDep

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive: the process answers. Says nothing about the database."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "the database is unreachable"}})
async def ready(engine: EngineDep) -> JSONResponse:
    """Ready: the database answers a query."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the database means "not ready"
        return JSONResponse(
            {"status": "unavailable", "error": "database_unavailable", "message": str(exc)},
            status_code=503,
        )
    return JSONResponse({"status": "ready", "database": engine.dialect.name})


@router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
