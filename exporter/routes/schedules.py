"""``/schedules``: cron schedules that start export jobs (see ``exporter/schedules.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel

from exporter import schedules
from exporter.openapi import BAD_BODY, DATABASE_BUSY, header, not_found
from exporter.routes.deps import CatalogDep, EngineDep, SettingsDep, StrictJsonBody, WorkerDep
from exporter.schedules import Schedule, ScheduleRequest

router = APIRouter(tags=["schedules"])


class ScheduleOut(BaseModel):
    id: str
    cron: str
    timezone: str
    job: dict[str, Any]
    keep_last: int
    next_run_at: datetime
    last_run_at: datetime | None
    created_at: datetime
    links: dict[str, str]


def schedule_out(schedule: Schedule) -> ScheduleOut:
    return ScheduleOut(
        id=schedule.id, cron=schedule.cron, timezone=schedule.timezone, job=schedule.job,
        keep_last=schedule.keep_last, next_run_at=schedule.next_run_at,
        last_run_at=schedule.last_run_at, created_at=schedule.created_at,
        links={"self": f"/schedules/{schedule.id}",
               "jobs": f"/jobs?schedule_id={schedule.id}"},
    )


NO_SCHEDULE = not_found("No such schedule.")


@router.post(
    "/schedules", status_code=201, dependencies=[StrictJsonBody],
    responses={201: {"description": "Created; it is at Location.",
                     "headers": {"Location": header("/schedules/<id>")}}}
    | BAD_BODY | DATABASE_BUSY,
)
async def create_schedule(
    body: ScheduleRequest, response: Response, engine: EngineDep, catalog: CatalogDep,
    worker: WorkerDep,
) -> ScheduleOut:
    """Run a job on a cron schedule, keeping the newest ``keep_last`` files."""
    schedule = await schedules.create_schedule(engine, catalog, body, datetime.now(UTC))
    if worker is not None:
        worker.wake()  # so that it sleeps until this schedule's first time, if sooner
    response.headers["Location"] = f"/schedules/{schedule.id}"
    return schedule_out(schedule)


@router.get("/schedules", responses=DATABASE_BUSY)
async def list_schedules(engine: EngineDep) -> list[ScheduleOut]:
    """Every schedule, newest first."""
    return [schedule_out(s) for s in await schedules.list_schedules(engine)]


@router.get("/schedules/{schedule_id}", responses=NO_SCHEDULE | DATABASE_BUSY)
async def get_schedule(schedule_id: str, engine: EngineDep) -> ScheduleOut:
    """One schedule, with when it runs next."""
    return schedule_out(await schedules.find_schedule(engine, schedule_id))


@router.delete(
    "/schedules/{schedule_id}", status_code=204,
    responses=NO_SCHEDULE | DATABASE_BUSY,
)
async def delete_schedule(schedule_id: str, engine: EngineDep, settings: SettingsDep) -> Response:
    """Stop the schedule. Its jobs stay, and expire like one-off jobs from now on."""
    await schedules.delete_schedule(
        engine, schedule_id, datetime.now(UTC), timedelta(seconds=settings.job_ttl_seconds)
    )
    return Response(status_code=204)
