"""Cron schedules: each scheduled time makes one job, however many workers fire it.

A worker that finds a schedule due claims the tick by moving ``next_run_at`` on with a
conditional ``UPDATE ... WHERE next_run_at = <the value it read>``; only the worker whose
update matched inserts the job, in the same transaction, and the unique constraint on
(schedule_id, scheduled_for) refuses a second job for one time whatever else happens.

The job is for the latest scheduled time that has passed, and ``next_run_at`` moves to the
first time after now: a worker that was down (or late) makes one catch-up run, never one
per missed time (a choice: the contract's "one job per scheduled time" is kept for every
time that comes while a worker runs; a backlog of stale runs after an outage is not).
Workers sleep until the next time due, so on time they miss none. A time that comes while
the schedule's previous job is still queued or running makes its job all the same (the
contract: one job per scheduled time), and a warning says the schedule is falling behind:
a schedule faster than its export queues its jobs.

When a cron expression's times come is cron.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter.catalog import Catalog
from exporter.cron import CRON_LENGTH, CRON_SHAPE, latest_time, next_time, parse_cron, parse_zone
from exporter.errors import DATABASE_DOWN, InvalidParameter, NotFound
from exporter.jobs import (
    FINISHED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    JobRequest,
    insert_job,
    job_values,
    new_id,
)
from exporter.state import as_utc, export_jobs, schedules, utc_values

log = logging.getLogger("exporter.schedules")

MAX_KEEP_LAST = 10_000


class ScheduleRequest(BaseModel):
    """The body of ``POST /schedules``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"cron": "0 2 * * *", "timezone": "Europe/Berlin",
         "job": {"table": "users", "format": "csv"}, "keep_last": 7},
    ]})

    # The pattern is documented, not checked by pydantic: parse_cron says what is wrong.
    cron: Annotated[str, Field(
        max_length=CRON_LENGTH, description="Five fields, or six with seconds last; @daily.",
        json_schema_extra={"pattern": CRON_SHAPE},
    )]
    timezone: Annotated[str, Field(description="IANA name the cron is read in.")] = "UTC"
    job: JobRequest
    keep_last: Annotated[int, Field(
        strict=True, ge=1, le=MAX_KEEP_LAST, description="Succeeded runs kept, newest first.",
    )] = 7

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return parse_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        parse_zone(value)
        return value


@dataclass(frozen=True)
class Schedule:
    id: str
    cron: str
    timezone: str
    job: dict[str, Any]
    keep_last: int
    next_run_at: datetime
    last_run_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> Schedule:
        return cls(**utc_values(row))


async def create_schedule(
    engine: AsyncEngine, catalog: Catalog, request: ScheduleRequest, now: datetime
) -> Schedule:
    try:  # a 422 now rather than a failed job each night
        await request.job.spec().query(catalog)
    except InvalidParameter as exc:
        raise exc.within("job") from None  # its path in this body: job.filters.plan
    schedule_id = new_id()
    values = {
        "id": schedule_id, "cron": request.cron, "timezone": request.timezone,
        "job": request.job.model_dump(), "keep_last": request.keep_last,
        "next_run_at": next_time(request.cron, request.timezone, now), "created_at": now,
    }
    async with engine.begin() as conn:
        await conn.execute(insert(schedules).values(**values))
    return await find_schedule(engine, schedule_id)


async def find_schedule(engine: AsyncEngine, schedule_id: str) -> Schedule:
    async with engine.connect() as conn:
        row = (await conn.execute(
            select(schedules).where(schedules.c.id == schedule_id)
        )).first()
    if row is None:
        raise NotFound(
            f"no schedule with id {schedule_id!r}; GET /schedules lists the schedules there are"
        )
    return Schedule.from_row(row)


async def list_schedules(engine: AsyncEngine) -> list[Schedule]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(schedules).order_by(schedules.c.created_at.desc(), schedules.c.id)
        )
        return [Schedule.from_row(row) for row in rows]


async def delete_schedule(
    engine: AsyncEngine, schedule_id: str, now: datetime, ttl: timedelta
) -> None:
    """Its jobs stay, as one-off jobs now: the files of succeeded ones expire ``ttl`` from now,
    and queued or running ones expire ``ttl`` after they succeed (the worker sees that the
    schedule is gone; ``expire_unscheduled`` catches one that finished during this call)."""
    async with engine.begin() as conn:
        await conn.execute(
            update(export_jobs)
            .where(export_jobs.c.schedule_id == schedule_id, export_jobs.c.expires_at.is_(None),
                   export_jobs.c.status == SUCCEEDED)
            .values(expires_at=now + ttl)
        )
        result = await conn.execute(delete(schedules).where(schedules.c.id == schedule_id))
        if not result.rowcount:
            raise NotFound(f"no schedule with id {schedule_id!r}")


async def expire_unscheduled(engine: AsyncEngine, now: datetime, ttl: timedelta) -> int:
    """Succeeded jobs whose schedule is gone and that have no expiry yet get one, as one-off
    jobs have: those that finished just as their schedule was being deleted."""
    gone = ~select(schedules.c.id).where(schedules.c.id == export_jobs.c.schedule_id).exists()
    async with engine.begin() as conn:
        result = await conn.execute(
            update(export_jobs)
            .where(export_jobs.c.status == SUCCEEDED, export_jobs.c.expires_at.is_(None),
                   export_jobs.c.schedule_id.is_not(None), gone)
            .values(expires_at=now + ttl)
        )
    return int(result.rowcount)


async def fire_due(
    engine: AsyncEngine, now: datetime, failing: dict[str, str] | None = None
) -> tuple[list[Job], datetime | None]:
    """Make the job of every schedule that is due, once; return the jobs this call made
    and the earliest time a schedule is due next.

    A schedule that cannot fire (its time zone is missing on this host, say) is logged
    and passed over, so that it stops neither the others nor the claiming of jobs;
    ``failing`` (schedule id -> error, kept by the caller) logs each error once."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(schedules))).all()
    made: list[Job] = []
    earliest: datetime | None = None
    failing = {} if failing is None else failing
    for row in rows:
        schedule = Schedule.from_row(row)
        try:
            upcoming = schedule.next_run_at
            if schedule.next_run_at <= now:
                job = await _fire(engine, schedule, row.next_run_at, now)
                if job is not None:
                    made.append(job)
                upcoming = next_time(schedule.cron, schedule.timezone, now)
        except DATABASE_DOWN:  # not DATABASE_UNREACHABLE: its OSError is also a zone file's
            raise  # not this schedule's fault: the worker reports it and tries again
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if failing.get(schedule.id) != error:
                log.error("schedule %s (%r in %s) cannot fire: %s; the other schedules and "
                          "the jobs go on", schedule.id, schedule.cron, schedule.timezone, error)
                failing[schedule.id] = error
            continue
        if failing.pop(schedule.id, None) is not None:
            log.info("schedule %s fires again", schedule.id)
        earliest = upcoming if earliest is None else min(earliest, upcoming)
    return made, earliest


async def _fire(
    engine: AsyncEngine, schedule: Schedule, stored_next: Any, now: datetime
) -> Job | None:
    scheduled_for = latest_time(schedule.cron, schedule.timezone, now, schedule.next_run_at)
    try:
        spec = JobRequest.model_validate(schedule.job).spec()
    except (ValueError, InvalidParameter) as exc:  # stored by an older version, say
        log.error("schedule %s: its job is no longer valid (%s); skipping %s",
                  schedule.id, exc, scheduled_for)
        spec = None
    try:
        async with engine.begin() as conn:
            claimed = await conn.execute(
                update(schedules)
                .where(schedules.c.id == schedule.id, schedules.c.next_run_at == stored_next)
                .values(next_run_at=next_time(schedule.cron, schedule.timezone, now))
            )
            if not claimed.rowcount or spec is None:
                return None  # another worker fired this tick (or there is nothing to run)
            busy = await _in_flight(conn, schedule.id)  # only to warn: the job is made anyway
            if busy is not None:
                log.warning("schedule %s is falling behind: its job %s for %s is still %s "
                            "as the job for %s is queued", schedule.id, busy.id,
                            as_utc(busy.scheduled_for), busy.status, scheduled_for)
            await conn.execute(update(schedules).where(schedules.c.id == schedule.id)
                               .values(last_run_at=scheduled_for))
            job = await insert_job(conn, job_values(spec, now, schedule.id, scheduled_for))
    except IntegrityError:
        log.info("schedule %s: the job for %s exists already", schedule.id, scheduled_for)
        return None
    log.info("schedule %s fired job %s for %s", schedule.id, job.id, scheduled_for)
    return job


async def _in_flight(conn: AsyncConnection, schedule_id: str) -> Row[Any, Any, Any] | None:
    """The schedule's job that is still queued or running, if any."""
    return (await conn.execute(
        select(export_jobs.c.id, export_jobs.c.status, export_jobs.c.scheduled_for)
        .where(export_jobs.c.schedule_id == schedule_id,
               export_jobs.c.status.in_((QUEUED, RUNNING)))
        .limit(1)
    )).first()


async def retention(engine: AsyncEngine, schedule_id: str, keep_last: int) -> list[Job]:
    """Delete a schedule's finished jobs beyond its newest ``keep_last`` succeeded ones
    (and beyond its newest ``keep_last`` failed, canceled or expired ones); returns the
    deleted jobs, whose files the caller removes."""
    newest = func.coalesce(export_jobs.c.scheduled_for, export_jobs.c.created_at)
    async with engine.connect() as conn:
        rows = (await conn.execute(
            select(export_jobs.c.id, export_jobs.c.status)
            .where(export_jobs.c.schedule_id == schedule_id, export_jobs.c.status.in_(FINISHED))
            .order_by(newest.desc(), export_jobs.c.id.desc())
        )).all()
    kept = {"succeeded": 0, "other": 0}
    doomed = []
    for row in rows:
        group = "succeeded" if row.status == SUCCEEDED else "other"
        kept[group] += 1
        if kept[group] > keep_last:
            doomed.append(row.id)
    if not doomed:
        return []
    async with engine.begin() as conn:
        deleted = await conn.execute(
            delete(export_jobs)
            .where(export_jobs.c.id.in_(doomed), export_jobs.c.status.in_(FINISHED))
            .returning(*export_jobs.c)
        )
        return [Job.from_row(row) for row in deleted]


async def all_retention(engine: AsyncEngine) -> list[Job]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(schedules.c.id, schedules.c.keep_last))).all()
    deleted = []
    for row in rows:
        deleted += await retention(engine, row.id, row.keep_last)
    return deleted
