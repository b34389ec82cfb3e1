"""schedules.py's firing and retention on their own: a due schedule makes the job of its
latest time once, however many workers race to fire it, warns when its last job is still in
flight, passes over a schedule that cannot fire, and keeps only its newest jobs. On SQLite
and PostgreSQL, in conftest's ``empty_database`` (emptied before each test by ``engines``).

Cron times are in ``test_cron.py``; the schedules API in ``test_jobs.py`` and, to the
second on real servers, in ``test_jobs_server.py``."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

import exporter.schedules as schedules_module
from exporter import jobs, leases
from exporter.catalog import Catalog
from exporter.cron import next_time
from exporter.db import downgrade_all, migrate
from exporter.schedules import (
    ScheduleRequest,
    create_schedule,
    find_schedule,
    fire_due,
    retention,
)
from exporter.state import schedules
from tests.conftest import (
    LEASE,
    Database,
    at,
    finished_by_worker,
    queue,
    worker_settings,
)

# The database's side of schedules and retention, raced (``empty_database`` and
# ``engines`` are conftest's).

async def test_a_tick_fired_by_racing_workers_makes_one_job_and_a_missed_day_one_catch_up(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = at("2026-03-10T09:30:00")
    request = ScheduleRequest.model_validate(
        {"cron": "0 2 * * *", "job": {"format": "csv"}, "keep_last": 2}
    )
    schedule = await create_schedule(engines[0], Catalog(engines[0]), request, now)
    # The service was down for five days: five 02:00s passed.
    async with engines[0].begin() as conn:
        await conn.execute(update(schedules).values(next_run_at=at("2026-03-05T02:00:00")))
    results = await asyncio.gather(*(
        fire_due(engines[i % 2], now) for i in range(8)
    ))
    made = [job for jobs_made, _ in results for job in jobs_made]
    assert len(made) == 1
    assert made[0].scheduled_for == at("2026-03-10T02:00:00"), "one run, for the latest"
    assert {next_due for _, next_due in results} == {at("2026-03-11T02:00:00")}
    assert [job.id for job in await jobs.list_jobs(engines[0], 10, schedule_id=schedule.id)] \
        == [made[0].id]


async def test_retention_keeps_the_newest_succeeded_jobs_of_a_schedule(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    request = ScheduleRequest.model_validate(
        {"cron": "* * * * *", "job": {"format": "csv"}, "keep_last": 2}
    )
    schedule = await create_schedule(engines[0], Catalog(engines[0]), request, now)
    statuses = [jobs.SUCCEEDED, jobs.FAILED, jobs.SUCCEEDED, jobs.SUCCEEDED, jobs.RUNNING,
                jobs.SUCCEEDED, jobs.FAILED, jobs.FAILED, jobs.FAILED]
    spec = request.job.spec()
    async with engines[0].begin() as conn:
        for minute, status in enumerate(statuses):
            values = jobs.job_values(spec, now, schedule.id, now + timedelta(minutes=minute))
            values["status"] = status
            await jobs.insert_job(conn, values)
    deleted = await retention(engines[0], schedule.id, schedule.keep_last)
    left = await jobs.list_jobs(engines[0], 100, schedule_id=schedule.id)
    by_status: dict[str, list[datetime]] = {}
    for job in left:
        assert job.scheduled_for is not None
        by_status.setdefault(job.status, []).append(job.scheduled_for)
    assert sorted(by_status[jobs.SUCCEEDED]) == [now + timedelta(minutes=m) for m in (3, 5)]
    assert sorted(by_status[jobs.FAILED]) == [now + timedelta(minutes=m) for m in (7, 8)]
    assert by_status[jobs.RUNNING] == [now + timedelta(minutes=4)]  # never deleted
    assert sorted(job.scheduled_for for job in deleted) == [  # type: ignore[type-var]
        now + timedelta(minutes=m) for m in (0, 1, 2, 6)
    ]


async def test_every_tick_makes_its_job_while_the_one_before_is_queued_or_running(
    engines: tuple[AsyncEngine, AsyncEngine], caplog: pytest.LogCaptureFixture,
) -> None:
    engine, now = engines[0], at("2026-03-10T09:30:00.5")
    request = ScheduleRequest.model_validate({"cron": "* * * * * *", "job": {"format": "csv"}})
    schedule = await create_schedule(engine, Catalog(engine), request, now)

    async def fire(seconds: int) -> list[datetime | None]:
        made, _ = await fire_due(engine, now + timedelta(seconds=seconds))
        return [job.scheduled_for for job in made]

    assert await fire(1) == [at("2026-03-10T09:30:01")]
    with caplog.at_level(logging.WARNING, logger="exporter.schedules"):
        assert await fire(2) == [at("2026-03-10T09:30:02")], "the 09:30:01 job is queued"
    assert "falling behind" in caplog.text
    first = await leases.claim_job(engine, "worker", now, LEASE, 3)
    assert first is not None
    assert await fire(3) == [at("2026-03-10T09:30:03")], "and then running"
    assert await leases.finish(engine, first.id, "worker", jobs.FAILED, now)
    assert await fire(4) == [at("2026-03-10T09:30:04")]
    stored = await find_schedule(engine, schedule.id)
    assert stored.last_run_at == at("2026-03-10T09:30:04")
    assert stored.next_run_at == at("2026-03-10T09:30:05")
    listed = await jobs.list_jobs(engine, 10, schedule_id=schedule.id)
    assert sorted(job.scheduled_for for job in listed) == [  # type: ignore[type-var]
        at(f"2026-03-10T09:30:0{second}") for second in (1, 2, 3, 4)
    ]


async def test_two_due_schedules_each_fire_their_own_job_and_record_their_own_last_run(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    engine = engines[0]
    created, now = at("2026-03-01T00:00:00"), at("2026-03-10T09:30:00")
    nightly, early = [
        await create_schedule(engine, Catalog(engine), ScheduleRequest.model_validate(
            {"cron": cron, "job": {"format": "csv"}}), created)
        for cron in ("0 2 * * *", "30 3 * * *")
    ]
    made, upcoming = await fire_due(engine, now)
    assert sorted((job.schedule_id, job.scheduled_for) for job in made) == sorted([
        (nightly.id, at("2026-03-10T02:00:00")), (early.id, at("2026-03-10T03:30:00")),
    ])
    assert upcoming == at("2026-03-11T02:00:00")
    for schedule, ran, due in ((nightly, "2026-03-10T02:00", "2026-03-11T02:00"),
                               (early, "2026-03-10T03:30", "2026-03-11T03:30")):
        found = await find_schedule(engine, schedule.id)
        assert (found.last_run_at, found.next_run_at) == (at(ran), at(due))


async def test_a_schedule_whose_stored_job_no_longer_validates_skips_its_time_and_moves_on(
    engines: tuple[AsyncEngine, AsyncEngine], caplog: pytest.LogCaptureFixture,
) -> None:
    engine = engines[0]
    created, now = at("2026-03-01T00:00:00"), at("2026-03-10T09:30:00")
    schedule = await create_schedule(engine, Catalog(engine), ScheduleRequest.model_validate(
        {"cron": "0 2 * * *", "job": {"format": "csv"}}), created)
    async with engine.begin() as conn:  # as an older version might have stored it
        await conn.execute(update(schedules).values(job={"format": "xml"}))
    caplog.set_level(logging.INFO, logger="exporter.schedules")
    assert await fire_due(engine, now) == ([], at("2026-03-11T02:00:00"))
    assert (await find_schedule(engine, schedule.id)).next_run_at == at("2026-03-11T02:00:00")
    assert await scheduled_jobs(engine, schedule.id) == []
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = logged.getMessage()
    assert message.startswith(f"schedule {schedule.id}: its job is no longer valid (")
    assert "xml" in message and message.endswith("; skipping 2026-03-10 02:00:00+00:00")


async def test_a_schedule_whose_last_job_is_still_queued_fires_anyway_and_warns(
    engines: tuple[AsyncEngine, AsyncEngine], caplog: pytest.LogCaptureFixture,
) -> None:
    engine = engines[0]
    created = at("2026-03-10T09:00:30")
    busy, idle = [
        await create_schedule(engine, Catalog(engine), ScheduleRequest.model_validate(
            {"cron": cron, "job": {"format": "csv"}}), created)
        for cron in ("* * * * *", "*/2 * * * *")
    ]
    [first], _ = await fire_due(engine, at("2026-03-10T09:01:00"))  # busy's job, left queued
    caplog.set_level(logging.WARNING, logger="exporter.schedules")
    made, _ = await fire_due(engine, at("2026-03-10T09:02:00"))
    assert sorted(job.schedule_id for job in made) == sorted([busy.id, idle.id])
    assert [r.getMessage() for r in caplog.records] == [
        f"schedule {busy.id} is falling behind: its job {first.id} for 2026-03-10 "
        "09:01:00+00:00 is still queued as the job for 2026-03-10 09:02:00+00:00 is queued"
    ]


async def test_a_schedule_whose_last_job_has_ended_fires_without_a_warning(
    engines: tuple[AsyncEngine, AsyncEngine], caplog: pytest.LogCaptureFixture,
) -> None:
    engine = engines[0]
    await create_schedule(engine, Catalog(engine), ScheduleRequest.model_validate(
        {"cron": "* * * * *", "job": {"format": "csv"}}), at("2026-03-10T09:00:30"))
    [first], _ = await fire_due(engine, at("2026-03-10T09:01:00"))
    now = datetime.now(UTC)
    assert await leases.claim_job(engine, "worker", now, LEASE, 3) is not None
    assert await leases.finish(engine, first.id, "worker", jobs.SUCCEEDED, now)
    caplog.set_level(logging.WARNING, logger="exporter.schedules")
    made, _ = await fire_due(engine, at("2026-03-10T09:02:00"))
    assert len(made) == 1 and caplog.records == []


async def test_a_schedule_that_cannot_fire_stops_neither_the_others_nor_the_jobs(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, now = engines[0], datetime.now(UTC)
    every_minute = {"cron": "* * * * *", "job": {"format": "csv"}}
    request = ScheduleRequest.model_validate(every_minute)
    broken = await create_schedule(engine, Catalog(engine), request, now)
    healthy = await create_schedule(engine, Catalog(engine), request, now)
    async with engine.begin() as conn:  # as on a replica whose zone database lacks the zone
        await conn.execute(update(schedules).where(schedules.c.id == broken.id)
                           .values(timezone="Nowhere/Atlantis"))
    later = now + timedelta(minutes=2)
    failing: dict[str, str] = {}
    caplog.set_level(logging.INFO, logger="exporter.schedules")
    made, next_due = await fire_due(engine, later, failing)
    assert [job.schedule_id for job in made] == [healthy.id]
    assert next_due == next_time("* * * * *", "UTC", later)
    error = "ZoneInfoNotFoundError: 'No time zone found with key Nowhere/Atlantis'"
    assert failing == {broken.id: error}
    await fire_due(engine, later + timedelta(minutes=1), failing)
    # What an operator reads: the schedule, its cron and zone and the error, logged once
    # however often it fails the same way; every job the others make; and when it recovers.
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"schedule {broken.id} ('* * * * *' in Nowhere/Atlantis) cannot fire: {error}; the "
        "other schedules and the jobs go on"]
    assert sum("fired job" in r.getMessage() for r in caplog.records) == 2
    caplog.clear()
    async with engine.begin() as conn:
        await conn.execute(update(schedules).where(schedules.c.id == broken.id)
                           .values(timezone="UTC"))
    await fire_due(engine, later + timedelta(minutes=2), failing)
    assert failing == {}
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO
            and "fired job" not in r.getMessage()] == [f"schedule {broken.id} fires again"]
    # The worker fires schedules before it claims jobs: a one-off job still runs.
    (job_id,) = await queue(engine, 1, datetime.now(UTC))
    job = await finished_by_worker(engine, worker_settings(empty_database, tmp_path), job_id)
    assert job.status == jobs.SUCCEEDED


# A scheduled time makes one job through two safeguards, each enough alone: the conditional
# UPDATE of next_run_at (a worker that read a stale value claims nothing) and the unique
# (schedule_id, scheduled_for). Each test below defeats one and shows the other holds.

async def scheduled_jobs(engine: AsyncEngine, schedule_id: str) -> list[jobs.Job]:
    return await jobs.list_jobs(engine, limit=100, schedule_id=schedule_id)


async def due_schedule(engine: AsyncEngine) -> tuple[str, datetime]:
    """A schedule due a minute ago; its id and the stored next_run_at."""
    now = datetime.now(UTC)
    request = ScheduleRequest.model_validate({"cron": "* * * * *", "job": {"format": "csv"}})
    schedule = await create_schedule(engine, Catalog(engine), request, now - timedelta(minutes=2))
    async with engine.connect() as conn:
        stored = (await conn.execute(select(schedules.c.next_run_at)
                                     .where(schedules.c.id == schedule.id))).scalar_one()
    return schedule.id, stored


async def test_the_unique_tick_alone_refuses_a_second_job_when_the_claim_is_defeated(
    engines: tuple[AsyncEngine, AsyncEngine], caplog: pytest.LogCaptureFixture,
) -> None:
    engine = engines[0]
    schedule_id, stored = await due_schedule(engine)
    caplog.set_level(logging.INFO, logger="exporter.schedules")
    made, _ = await fire_due(engine, datetime.now(UTC))
    assert len(made) == 1
    tick = made[0].scheduled_for
    async with engine.begin() as conn:  # as if a second worker's UPDATE still matched
        await conn.execute(update(schedules).where(schedules.c.id == schedule_id)
                           .values(next_run_at=stored))
    again, _ = await fire_due(engine, datetime.now(UTC))
    assert again == []
    assert len(await scheduled_jobs(engine, schedule_id)) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        f"schedule {schedule_id} fired job {made[0].id} for {tick}",
        f"schedule {schedule_id}: the job for {tick} exists already"]


async def test_the_conditional_claim_alone_makes_one_job_for_two_workers_that_read_alike(
    engines: tuple[AsyncEngine, AsyncEngine], empty_database: Database,
) -> None:
    if empty_database.backend != "postgresql":
        pytest.skip("SQLite cannot drop a table's unique constraint")
    first, second = engines
    async with first.begin() as conn:
        await conn.execute(text("ALTER TABLE exporter.export_jobs "
                                "DROP CONSTRAINT uq_export_jobs_schedule_tick"))
    try:
        schedule_id, _ = await due_schedule(first)
        schedule = await find_schedule(first, schedule_id)
        async with first.connect() as conn:  # both workers read the same row
            stored = (await conn.execute(select(schedules.c.next_run_at)
                                         .where(schedules.c.id == schedule_id))).scalar_one()
        now = datetime.now(UTC)
        made = [await schedules_module._fire(engine, schedule, stored, now)
                for engine in (first, second)]
        assert [job is not None for job in made] == [True, False]
        assert len(await scheduled_jobs(first, schedule_id)) == 1
    finally:
        await downgrade_all(first)  # the next test's migrate makes the constraint again
        await migrate(first)
