"""Jobs and schedules in-process: what a body may say, the database's side of ticks and
retention, raced between workers on SQLite and PostgreSQL, and the worker that runs jobs.

Claiming, heartbeats and the other lease changes (leases.py) are in ``test_leases.py``.

What needs a real server (files, Server-Sent Events, cancel, kill -9, replicas) is in
``test_jobs_server.py``."""

from __future__ import annotations

import asyncio
import errno
import gzip
import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import exporter.schedules as schedules_module
from exporter import jobs, leases, worker
from exporter.app import create_app
from exporter.catalog import Catalog
from exporter.config import Settings, load_settings
from exporter.db import downgrade_all, driver_connection, migrate
from exporter.errors import is_transient
from exporter.job_storage import JobStorage, job_storage
from exporter.jobs import JobRequest
from exporter.leases import Beat
from exporter.params import parse_query
from exporter.schedules import (
    ScheduleRequest,
    create_schedule,
    delete_schedule,
    find_schedule,
    fire_due,
    latest_time,
    next_time,
    retention,
)
from exporter.state import schedules
from exporter.worker import Worker, utcnow
from tests.conftest import (
    LEASE,
    SEED,
    SEEDED_USERS,
    Database,
    app_client,
    build_database,
    queue,
    reflected,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# What a body may say: validated as the live export validates its query string.

async def test_job_filters_and_fields_are_the_export_query_parameters(
    sqlite_database: Database,
) -> None:
    request = JobRequest.model_validate({
        "format": "csv", "fields": ["id", "email"],
        "filters": {"country": ["de", "FR"], "is_active": True, "limit": 5,
                    "created_from": "2024-01-01"},
    })
    spec = request.spec()
    assert spec.filters == {"country": "de,FR", "is_active": "true", "limit": "5",
                            "created_from": "2024-01-01"}
    engine = sqlite_database.engine()
    try:
        table = await reflected(engine)
        assert await spec.query(Catalog(engine)) == parse_query(
            table, [("country", "de,FR"), ("is_active", "true"), ("limit", "5"),
                    ("created_from", "2024-01-01"), ("fields", "id,email")]
        )
    finally:
        await engine.dispose()
    assert spec.extension == "csv" and spec.media_type == "text/csv; charset=utf-8"
    gzip = JobRequest(format="ndjson", compression="gzip").spec()
    assert gzip.extension == "ndjson.gz" and gzip.media_type == "application/gzip"


BAD_JOBS: list[tuple[dict[str, Any], str, str]] = [
    ({"format": "xml"}, "format", "csv"),
    ({}, "format", "required"),
    ({"format": "csv", "compression": "zip"}, "compression", "gzip"),
    ({"format": "parquet", "compression": "gzip"}, "compression", "compressed inside"),
    ({"format": "csv", "fields": []}, "fields", "at least 1"),
    ({"format": "csv", "fields": "id"}, "fields", "list"),
    ({"format": "csv", "fields": ["id", "nope"]}, "fields", "'nope'"),
    ({"format": "csv", "fields": ["id", "id"]}, "fields", "twice"),
    ({"format": "csv", "fields": ["id,email"]}, "fields", "own list item"),
    ({"format": "csv", "filters": {"plan": "gold"}}, "filters.plan", "'gold'"),
    ({"format": "csv", "filters": {"limt": 5}}, "filters.limt", "unknown parameter"),
    ({"format": "csv", "filters": {"fields": "id"}}, "filters.fields", "top-level"),
    ({"format": "csv", "filters": {"limit": -1}}, "filters.limit", "whole number"),
    ({"format": "csv", "filters": {"limit": 1.5}}, "filters.limit", "whole number"),
    ({"format": "csv", "filters": {"country": ["DE", 1]}}, "filters.country", "strings"),
    ({"format": "csv", "filters": {"country": ["DE,FR"]}}, "filters.country", "commas"),
    ({"format": "csv", "filters": {"country": ["D"]}}, "filters.country", "alpha-2"),
    ({"format": "csv", "filters": {"is_active": "maybe"}}, "filters.is_active", "boolean"),
    ({"format": "csv", "filters": {"created_from": "2024-02-01", "created_to": "2024-01-01"}},
     "filters.created_to", "swapped"),
    ({"format": "csv", "filter": {}}, "filter", "Extra"),
    ({"format": "csv", "filters": []}, "filters", "dictionary"),
]


@pytest.mark.parametrize(("body", "parameter", "says"), BAD_JOBS)
async def test_a_bad_job_body_is_a_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], parameter: str, says: str
) -> None:
    response = await client.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "invalid_parameter"
    assert error["parameter"] == parameter
    assert parameter.removeprefix("") in error["message"]
    assert says in response.text


async def test_a_body_that_is_not_json_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs", content=b"{format: csv", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


GOOD_JOB = {"format": "ndjson", "compression": "gzip"}
BAD_SCHEDULES: list[tuple[dict[str, Any], str, str]] = [
    ({"cron": "61 * * * *", "job": GOOD_JOB}, "cron", "not a valid cron"),
    ({"cron": "* * * *", "job": GOOD_JOB}, "cron", "has 4 fields"),
    ({"cron": "* * * * * * *", "job": GOOD_JOB}, "cron", "has 7 fields"),
    ({"cron": "@reboot", "job": GOOD_JOB}, "cron", "@daily"),
    ({"cron": "0 2 * * *", "timezone": "Mars/Olympus", "job": GOOD_JOB}, "timezone",
     "IANA"),
    ({"cron": "0 2 * * *", "timezone": "../../etc/passwd", "job": GOOD_JOB}, "timezone",
     "IANA"),
    ({"cron": "0 0 30 2 *", "job": GOOD_JOB}, "cron", "never comes"),
    ({"cron": "0 0 31 4 *", "job": GOOD_JOB}, "cron", "never comes"),
    ({"cron": "0 0 31 2,4 * *", "job": GOOD_JOB}, "cron", "never comes"),
    ({"cron": "R * * * *", "job": GOOD_JOB}, "cron", "random (R) or hashed (H)"),
    ({"cron": "0 H(0-5) * * *", "job": GOOD_JOB}, "cron", "random (R) or hashed (H)"),
    ({"cron": "* * * * * r/10", "job": GOOD_JOB}, "cron", "random (R) or hashed (H)"),
    ({"cron": "0 " * 128, "job": GOOD_JOB}, "cron", "at most 255"),
    ({"cron": "0 2 * * *", "timezone": "A" * 300, "job": GOOD_JOB}, "timezone", "IANA"),
    ({"cron": "0 2 * * *", "timezone": "localtime", "job": GOOD_JOB}, "timezone", "IANA"),
    ({"cron": "0 2 * * *", "timezone": "posixrules", "job": GOOD_JOB}, "timezone",
     "IANA"),
    ({"cron": "0 2 * * *", "timezone": "Factory", "job": GOOD_JOB}, "timezone", "IANA"),
    ({"cron": "0 2 * * *", "timezone": "/usr/share/zoneinfo/UTC", "job": GOOD_JOB},
     "timezone", "IANA"),
    ({"cron": "0 2 * * *", "job": GOOD_JOB, "keep_last": 0}, "keep_last", "1"),
    ({"cron": "0 2 * * *", "job": GOOD_JOB, "keep_last": 10_001}, "keep_last", "10000"),
    ({"cron": "0 2 * * *", "job": GOOD_JOB, "keep_last": "7"}, "keep_last", "integer"),
    ({"cron": "0 2 * * *", "job": GOOD_JOB, "keep_last": True}, "keep_last", "integer"),
    ({"cron": "0 2 * * *", "job": GOOD_JOB, "keep_last": 7.5}, "keep_last", "integer"),
    ({"cron": "0 2 * * *"}, "job", "required"),
    ({"cron": "0 2 * * *", "job": {"format": "csv", "filters": {"plan": "gold"}}},
     "job.filters.plan", "'gold'"),
    ({"cron": "0 2 * * *", "job": {"format": "csv", "filters": {"limt": 5}}},
     "job.filters.limt", "unknown parameter"),
    ({"cron": "0 2 * * *", "job": {"format": "csv", "fields": ["id", "nope"]}},
     "job.fields", "'nope'"),
    ({"cron": "0 2 * * *", "job": {"format": "xml"}}, "job.format", "csv"),
]


@pytest.mark.parametrize(("body", "parameter", "says"), BAD_SCHEDULES)
async def test_a_bad_schedule_body_is_a_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], parameter: str, says: str
) -> None:
    response = await client.post("/schedules", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["parameter"] == parameter
    assert response.json()["message"].startswith(f"{parameter}")
    assert "Value error" not in response.json()["message"]
    assert says in response.text


async def test_every_bad_field_of_a_body_is_named_at_once(client: httpx.AsyncClient) -> None:
    response = await client.post("/schedules", json={
        "cron": "0 0 30 2 *", "timezone": "Mars/Olympus", "job": {"format": "xml"}})
    assert response.status_code == 422
    message = response.json()["message"]
    for field in ("cron: ", "timezone: ", "job.format: "):
        assert field in message, message
    job = await client.post("/jobs", json={
        "format": "csv", "filters": {"plan": "gold", "limt": 5, "country": "Germany"}})
    assert job.status_code == 422
    named = [error["parameter"] for error in job.json()["errors"]]
    assert named == ["filters.plan", "filters.limt", "filters.country"]
    assert all(name in job.json()["message"] for name in named)


# Hostile bodies: a short 422, never a 500, and nothing stored.
LONG = "x" * 100_000
HOSTILE_JOBS: list[dict[str, Any]] = [
    {"format": "csv", "filters": {"\ud800": 1}},
    {"format": "csv", "filters": {LONG: 1}},
    {"format": "csv", "filters": {"plan": LONG}},
    {"format": "csv", "filters": {"limit": 10**40}},
    {"format": "csv", "filters": {"after_id": "9" * 40}},
    {"format": "csv", "filters": {"country": ["\ud800"]}},
    {"format": "csv", "fields": ["\ud800" * 1000]},
    {"format": "csv", "fields": [LONG]},
    {"format": "csv", "fields": [1] * 100_000},
    {"format": "csv", "\ud800": 1},
    {"format": "csv", LONG: 1},
    {"format": "\ud800"},
]
HOSTILE_SCHEDULES: list[dict[str, Any]] = [
    {"cron": "0 0 * * *", "timezone": "\ud800", "job": GOOD_JOB},
    {"cron": "0 0 * * *", "timezone": "Europe/Berlin\x00", "job": GOOD_JOB},
    {"cron": "0 0 * * *", "timezone": LONG, "job": GOOD_JOB},
    {"cron": LONG, "job": GOOD_JOB},
    {"cron": "\ud800 * * * *", "job": GOOD_JOB},
    {"cron": "0 0 * * *", "job": GOOD_JOB, "keep_last": 10**40},
    {"cron": "0 0 * * *", "job": GOOD_JOB, LONG: 1},
    *({"cron": "0 0 * * *", "job": job} for job in HOSTILE_JOBS),
]


@pytest.mark.parametrize(("path", "body"), [
    *(("/jobs", body) for body in HOSTILE_JOBS),
    *(("/schedules", body) for body in HOSTILE_SCHEDULES),
], ids=lambda value: value if isinstance(value, str) else "")
async def test_a_hostile_body_is_a_short_422_never_a_500(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    listed = len((await client.get(path)).json())
    response = await client.post(  # \ud800 escaped, as a client's JSON would send it
        path, content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text[:500]
    assert response.json()["error"] == "invalid_parameter"
    assert len(response.content) < 4096, response.text[:500]
    assert len((await client.get(path)).json()) == listed, "nothing stored"


@pytest.mark.parametrize(("path", "raw", "parameter"), [
    ("/jobs", '{"format": "csv", "format": "json"}', "format"),
    ("/jobs", '{"format": "csv", "filters": {"limit": 5, "limit": 6}}', "filters.limit"),
    ("/schedules", '{"cron": "0 2 * * *", "job": {"format": "csv", "format": "csv"}}',
     "job.format"),
])
async def test_a_key_given_twice_in_a_json_body_is_a_422_not_the_last_value(
    client: httpx.AsyncClient, path: str, raw: str, parameter: str
) -> None:
    listed = len((await client.get(path)).json())
    response = await client.post(path, content=raw,
                                 headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["parameter"] == parameter
    assert "more than once" in response.json()["message"]
    assert len((await client.get(path)).json()) == listed, "nothing stored"


async def test_a_queued_job_is_canceled_at_once_and_canceling_it_again_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    """No worker runs in-process here, so the job is certainly still queued (a finished
    job's 409 is in ``test_jobs_server.py``)."""
    job = (await client.post("/jobs", json={"format": "csv"})).json()
    assert job["status"] == "queued"
    canceled = await client.post(f"/jobs/{job['id']}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled" and canceled.json()["finished_at"]
    again = await client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json() == canceled.json()
    download = await client.get(f"/jobs/{job['id']}/download")
    assert download.status_code == 409 and download.json()["status"] == "canceled"
    said = download.json()["message"]
    assert "was canceled" in said and "never will" in said and "once it has" not in said
    assert (await client.delete(f"/jobs/{job['id']}")).status_code == 204


async def test_a_queued_jobs_download_says_it_comes_once_the_job_succeeded(
    client: httpx.AsyncClient,
) -> None:
    job = (await client.post("/jobs", json={"format": "csv"})).json()
    try:
        download = await client.get(f"/jobs/{job['id']}/download")
        assert download.status_code == 409 and download.json()["status"] == "queued"
        assert "once it has succeeded" in download.json()["message"]
        assert f"/jobs/{job['id']}/events" in download.json()["message"]
    finally:
        await client.delete(f"/jobs/{job['id']}")


@pytest.mark.parametrize("path", [
    "/jobs/0123", "/jobs/0123/events", "/jobs/0123/download", "/schedules/0123",
])
async def test_unknown_ids_are_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert "0123" in response.json()["message"]
    assert (await client.post("/jobs/0123/cancel")).status_code == 404
    assert (await client.delete("/jobs/0123")).status_code == 404
    assert (await client.delete("/schedules/0123")).status_code == 404


@pytest.mark.parametrize("query", ["status=done", "limit=0", "limit=1001", "limit=x"])
async def test_bad_job_list_parameters_are_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/jobs?{query}")
    assert response.status_code == 422
    assert query.split("=")[0] in response.json()["parameter"]


async def test_a_schedule_reports_its_next_time_in_utc(client: httpx.AsyncClient) -> None:
    created = await client.post("/schedules", json={
        "cron": "30 2 * * *", "timezone": "Asia/Tokyo", "job": GOOD_JOB, "keep_last": 3,
    })
    assert created.status_code == 201, created.text
    schedule = created.json()
    try:
        assert created.headers["location"] == f"/schedules/{schedule['id']}"
        assert schedule["next_run_at"].endswith("17:30:00Z")  # 02:30 in Tokyo (UTC+9)
        assert schedule["job"]["compression"] == "gzip"
        listed = (await client.get("/schedules")).json()
        assert schedule["id"] in [s["id"] for s in listed]
    finally:
        assert (await client.delete(f"/schedules/{schedule['id']}")).status_code == 204
    assert (await client.get(f"/schedules/{schedule['id']}")).status_code == 404


# Cron times.

def test_the_sixth_cron_field_is_seconds() -> None:
    assert next_time("* * * * * */2", "UTC", at("2026-01-01T12:00:00.500")) == at(
        "2026-01-01T12:00:02"
    )
    assert next_time("* * * * * */2", "UTC", at("2026-01-01T12:00:02")) == at(
        "2026-01-01T12:00:04"
    )


def test_cron_times_are_read_in_the_schedule_time_zone() -> None:
    winter, summer = at("2026-01-10T12:00:00"), at("2026-07-10T12:00:00")
    assert next_time("0 2 * * *", "Europe/Berlin", winter) == at("2026-01-11T01:00:00")
    assert next_time("0 2 * * *", "Europe/Berlin", summer) == at("2026-07-11T00:00:00")


def test_missed_times_collapse_into_the_latest_one() -> None:
    due = at("2026-01-01T12:00:00")
    assert latest_time("* * * * * */2", "UTC", at("2026-01-01T12:00:01.9"), due) == due
    assert latest_time("* * * * * */2", "UTC", at("2026-01-01T12:00:07.3"), due) == at(
        "2026-01-01T12:00:06"
    )
    assert latest_time("* * * * * */2", "UTC", at("2026-01-01T12:00:08"), due) == at(
        "2026-01-01T12:00:08"
    )
    assert latest_time("0 2 * * *", "UTC", at("2026-01-05T09:00:00"), at("2026-01-02T02:00")) \
        == at("2026-01-05T02:00:00")


def test_the_latest_time_counts_now_itself_and_is_read_in_the_schedule_time_zone() -> None:
    due = at("2026-01-01T12:00:00")
    assert latest_time("* * * * * */2", "UTC", at("2026-01-01T12:00:02"), due) == at(
        "2026-01-01T12:00:02"
    )
    # 02:00 in Berlin is 01:00 UTC in winter: five days late, the latest is this morning's
    assert latest_time("0 2 * * *", "Europe/Berlin", at("2026-01-05T09:00:00"),
                       at("2026-01-01T01:00:00")) == at("2026-01-05T01:00:00")


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


async def test_a_job_whose_export_fails_ends_failed_with_the_error_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    database = await build_database("sqlite", tmp_path, SEEDED_USERS, SEED)
    with sqlite3.connect(tmp_path / "exporter.db") as conn:  # text that is not UTF-8
        conn.execute("UPDATE users SET bio = CAST(X'C328FF' AS TEXT) WHERE id = 2000")
    settings = database.settings(
        batch_rows=50, job_progress_seconds=0.05, worker_poll_seconds=0.05
    )
    engine = database.engine()
    worker = Worker(engine, settings)
    try:
        job = await jobs.create_job(engine, JobRequest(format="csv").spec(), datetime.now(UTC))
        await worker.start()
        for _ in range(200):
            job = await jobs.find_job(engine, job.id)
            if job.finished:
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()
        await engine.dispose()
    assert job.status == jobs.FAILED
    assert job.error is not None and "decode" in job.error.lower()
    assert 0 < job.rows_written < job.total_rows  # type: ignore[operator]
    assert os.listdir(settings.jobs_dir) == []
    async with app_client(create_app(settings.model_copy(update={"run_worker": False}))) as api:
        download = await api.get(f"/jobs/{job.id}/download")
    assert download.status_code == 409
    said = download.json()["message"]
    assert "failed" in said and job.error[:40] in said and "never will" in said


# The worker, in-process, on the emptied database (an export of no rows is still a file).

def worker_settings(database: Database, tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(**{
        "database_url": database.url, "data_dir": tmp_path, "worker_poll_seconds": 0.05,
        "job_progress_seconds": 0.05, **overrides,
    })


async def run_worker(
    engine: AsyncEngine, settings: Settings, until: Callable[[Worker], Awaitable[bool]],
    seconds: float = 20,
) -> None:
    """Run a worker until ``until`` holds (failing after ``seconds``)."""
    worker = Worker(engine, settings)
    await worker.start()
    try:
        deadline = time.monotonic() + seconds
        while not await until(worker):
            assert time.monotonic() < deadline, "the worker never got there"
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()


async def finished_by_worker(engine: AsyncEngine, settings: Settings, job_id: str) -> jobs.Job:
    async def finished(_worker: Worker) -> bool:
        return (await jobs.find_job(engine, job_id)).finished

    await run_worker(engine, settings, finished)
    return await jobs.find_job(engine, job_id)


async def test_a_worker_stopped_while_its_claim_waits_leaves_no_lock_behind(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
) -> None:
    """The flake of issue 15.3 (the next fixture's DROP TABLE: database is locked): a worker
    stopped mid-claim had its claim cancelled mid-statement, and on SQLite the cut-off
    statement went on holding the write lock after the engine was disposed."""
    engine, other = engines
    (job_id,) = await queue(engine, 1, datetime.now(UTC))
    running = Worker(engine, worker_settings(empty_database, tmp_path))
    async with other.connect() as blocker:  # holds the write lock: the claim waits for it
        driver = await driver_connection(blocker)
        if empty_database.backend == "sqlite":
            await driver.execute("BEGIN IMMEDIATE")
        else:
            await driver.execute("BEGIN; LOCK TABLE exporter.export_jobs IN EXCLUSIVE MODE")
        await running.start()
        await asyncio.sleep(0.5)  # the worker's claim is waiting for the lock
        stopping = asyncio.ensure_future(running.stop())
        await asyncio.sleep(0.3)
        await driver.execute("ROLLBACK")
    await stopping
    await engine.dispose()
    # Whoever writes next (another worker, the next test) gets the lock at once.
    fresh = empty_database.engine()
    try:
        async with fresh.begin() as conn:
            if empty_database.backend == "sqlite":
                await conn.exec_driver_sql("PRAGMA busy_timeout=500")
            else:
                await conn.exec_driver_sql("SET LOCAL lock_timeout = '500ms'")
            await conn.execute(update(jobs.export_jobs).where(jobs.export_jobs.c.id == job_id)
                               .values(error="written"))
        job = await jobs.find_job(fresh, job_id)
    finally:
        await fresh.dispose()
    assert job.status == jobs.QUEUED, "claimed as the worker stopped, then handed back"
    assert job.error == "written"


async def test_a_worker_stopped_mid_round_claims_nothing_more_and_leaves_no_job_running(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = engines[0]
    rounds: list[float] = []
    fire = worker.fire_due

    async def slow_fire(*args: Any) -> Any:  # a round under way when stop() comes
        rounds.append(time.monotonic())
        await asyncio.sleep(0.2)
        return await fire(*args)

    monkeypatch.setattr(worker, "fire_due", slow_fire)
    settings = worker_settings(empty_database, tmp_path, worker_poll_seconds=30,
                               worker_concurrency=2)
    running = Worker(engine, settings)
    await running.start()
    await asyncio.sleep(0.6)  # its first round and sweep are done: idle
    queued = await queue(engine, 2, datetime.now(UTC))
    running.wake()  # as POST /jobs does: a round that would claim both, sweep not due
    await asyncio.sleep(0.1)
    await running.stop()
    assert len(rounds) == 2
    for job_id in queued:
        job = await jobs.find_job(engine, job_id)
        assert (job.status, job.lease_owner) == (jobs.QUEUED, None), job


async def test_a_job_whose_schedule_was_deleted_before_it_ran_expires_like_a_one_off_job(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
) -> None:
    engine, now = engines[0], datetime.now(UTC)
    request = ScheduleRequest.model_validate({"cron": "0 2 * * *", "job": {"format": "csv"}})
    schedule = await create_schedule(engine, Catalog(engine), request, now)
    async with engine.begin() as conn:
        queued = await jobs.insert_job(
            conn, jobs.job_values(request.job.spec(), now, schedule.id, now)
        )
    await delete_schedule(engine, schedule.id, now, timedelta(days=7))
    settings = worker_settings(empty_database, tmp_path, job_ttl_seconds=3600)
    job = await finished_by_worker(engine, settings, queued.id)
    assert job.status == jobs.SUCCEEDED
    assert job.expires_at is not None and job.finished_at is not None
    assert job.expires_at - job.finished_at == timedelta(hours=1)


async def test_the_sweep_expires_a_job_that_succeeded_as_its_schedule_was_deleted(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
) -> None:
    engine, now = engines[0], datetime.now(UTC)
    spec = JobRequest(format="csv").spec()
    async with engine.begin() as conn:  # succeeded without an expiry, its schedule gone
        values = jobs.job_values(spec, now, "0" * 32, now) | {"status": jobs.SUCCEEDED}
        orphan = await jobs.insert_job(conn, values)
        kept = await jobs.insert_job(conn, jobs.job_values(spec, now) | {"status": jobs.SUCCEEDED})
    before = utcnow()
    await Worker(engine, worker_settings(empty_database, tmp_path, job_ttl_seconds=60)).sweep()
    expires_at = (await jobs.find_job(engine, orphan.id)).expires_at
    assert expires_at is not None and before + timedelta(seconds=60) <= expires_at
    assert (await jobs.find_job(engine, kept.id)).expires_at is None, "a one-off job's own"


# Cancel racing the end of a job: a cancel answered 202 ends the job canceled, never
# succeeded (a finish other than the cancel is refused: test_leases.py); one that comes
# after the job has finished is a 409 (tested on a real server).

async def test_a_cancel_flagged_after_the_file_is_complete_ends_the_job_canceled_without_it(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = engines[0]
    write = worker.write_job_file

    async def write_then_cancel(*args: Any) -> worker.JobFile:
        file = await write(*args)  # renamed into place: complete
        flagged = await jobs.cancel_job(engines[1], file.path.split("-")[0], datetime.now(UTC))
        assert flagged.status == jobs.RUNNING, "the route would answer 202"
        return file

    monkeypatch.setattr(worker, "write_job_file", write_then_cancel)
    (job_id,) = await queue(engine, 1, datetime.now(UTC))
    job = await finished_by_worker(engine, worker_settings(empty_database, tmp_path), job_id)
    assert job.status == jobs.CANCELED and job.file_path is None
    assert os.listdir(tmp_path / "jobs") == []


@pytest.mark.parametrize("verdict", [Beat.CANCEL, Beat.LOST])
async def test_a_cancel_or_a_loss_seen_just_after_the_rename_removes_the_complete_file(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, verdict: Beat,
) -> None:
    """The heartbeat is in flight while the writer renames its file: the writer is done, but
    the heartbeat says the job is canceled (or deleted)."""
    engine = engines[0]
    write, beat = worker.write_job_file, leases.beat
    started, written = asyncio.Event(), asyncio.Event()

    async def held_back_write(*args: Any) -> worker.JobFile:
        await started.wait()  # not done when the first heartbeat is due
        try:
            return await write(*args)
        finally:
            written.set()

    async def beat_across_the_rename(*args: Any) -> Beat:
        started.set()
        await written.wait()
        job_id = args[1]
        if verdict is Beat.CANCEL:
            await jobs.cancel_job(engines[1], job_id, datetime.now(UTC))
        else:
            await jobs.delete_job(engines[1], job_id)
        return await beat(*args)

    monkeypatch.setattr(worker, "write_job_file", held_back_write)
    monkeypatch.setattr(leases, "beat", beat_across_the_rename)
    (job_id,) = await queue(engine, 1, datetime.now(UTC))

    async def ended(running: Worker) -> bool:
        return written.is_set() and not running.running

    await run_worker(engine, worker_settings(empty_database, tmp_path), ended)
    assert os.listdir(tmp_path / "jobs") == []
    if verdict is Beat.CANCEL:
        assert (await jobs.find_job(engine, job_id)).status == jobs.CANCELED
    else:
        assert await jobs.get_job(engine, job_id) is None


async def test_a_writer_stopped_between_its_rename_and_its_return_leaves_no_file(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As when the cancel is seen while the directory is being fsynced."""
    engine = engines[0]
    write, beat = worker.write_job_file, leases.beat
    renamed = asyncio.Event()

    async def stuck_after_the_rename(*args: Any) -> worker.JobFile:
        file = await write(*args)
        renamed.set()
        await asyncio.Event().wait()  # until stopped
        return file

    async def cancel_once_renamed(*args: Any) -> Beat:
        await renamed.wait()
        await jobs.cancel_job(engines[1], args[1], datetime.now(UTC))
        return await beat(*args)

    monkeypatch.setattr(worker, "write_job_file", stuck_after_the_rename)
    monkeypatch.setattr(leases, "beat", cancel_once_renamed)
    (job_id,) = await queue(engine, 1, datetime.now(UTC))
    job = await finished_by_worker(engine, worker_settings(empty_database, tmp_path), job_id)
    assert job.status == jobs.CANCELED
    assert os.listdir(tmp_path / "jobs") == []


# Two workers never run one job: a worker whose heartbeats stop going through gives the job
# up after half a lease, before the lease lapses and another worker may claim it.

async def test_a_worker_whose_heartbeats_hang_gives_the_job_up_before_its_lease_lapses(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, lease = engines[0], 4.0
    first_beat: list[float] = []
    stopped: list[float] = []

    async def endless_write(
        _engine: AsyncEngine, _catalog: Catalog, _spec: jobs.JobSpec, settings: Settings,
        _storage: JobStorage, stem: str, _progress: worker.JobProgress,
    ) -> worker.JobFile:
        partial = settings.jobs_dir / f".{stem}.part"
        partial.write_bytes(b"id\r\n")
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(time.monotonic())
            partial.unlink()
        raise AssertionError("never written")

    async def hanging_beat(*_args: Any) -> Beat:
        first_beat.append(time.monotonic())
        await asyncio.sleep(3600)  # the database stopped answering
        return Beat.CONTINUE

    monkeypatch.setattr(worker, "write_job_file", endless_write)
    monkeypatch.setattr(leases, "beat", hanging_beat)
    (job_id,) = await queue(engine, 1, datetime.now(UTC))
    settings = worker_settings(empty_database, tmp_path, job_lease_seconds=lease)

    async def given_up(running: Worker) -> bool:
        return bool(stopped) and not running.running

    await run_worker(engine, settings, given_up, seconds=2 * lease)
    assert stopped[0] - first_beat[0] < 0.75 * lease, "stopped well before the lease lapsed"
    assert os.listdir(tmp_path / "jobs") == [], "its partial file removed"
    job = await jobs.find_job(engine, job_id)
    assert job.status == jobs.RUNNING, "left for its lease to lapse; then any worker claims it"


def test_heartbeats_must_come_at_least_three_times_a_lease(tmp_path: Path) -> None:
    load_settings(data_dir=tmp_path, job_lease_seconds=30, job_progress_seconds=10)
    with pytest.raises(ValueError, match="EXPORTER_JOB_PROGRESS_SECONDS=11.0.*"
                                         "EXPORTER_JOB_LEASE_SECONDS=30.0"):
        load_settings(data_dir=tmp_path, job_lease_seconds=30, job_progress_seconds=11)


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
    made, next_due = await fire_due(engine, later, failing)
    assert [job.schedule_id for job in made] == [healthy.id]
    assert next_due == next_time("* * * * *", "UTC", later)
    assert list(failing) == [broken.id] and "Atlantis" in failing[broken.id]
    await fire_due(engine, later + timedelta(minutes=1), failing)
    assert sum("cannot fire" in r.message for r in caplog.records) == 1, "logged once"
    # The worker fires schedules before it claims jobs: a one-off job still runs.
    (job_id,) = await queue(engine, 1, datetime.now(UTC))
    job = await finished_by_worker(engine, worker_settings(empty_database, tmp_path), job_id)
    assert job.status == jobs.SUCCEEDED


# Taking over the runs of a dead worker at once, only when it is certainly dead.

def test_a_worker_is_gone_only_when_certainly_dead() -> None:
    me = worker.worker_owner()
    host, pid, started, boot, namespace, _ = me.split(":")

    def owner(**fields: str) -> str:
        values = {"host": host, "pid": pid, "started": started, "boot": boot,
                  "namespace": namespace, "random": "0badc0de"} | fields
        return ":".join(values.values())

    with subprocess.Popen([sys.executable, "-c", "pass"]) as ended:
        ended.wait()
    parent = str(os.getppid())
    parent_started = Path(f"/proc/{parent}/stat").read_text().rpartition(")")[2].split()[19]

    assert not worker.owner_is_gone(me, me)
    assert not worker.owner_is_gone(owner(), me), "another worker of this very process"
    assert worker.owner_is_gone(owner(started="1"), me), "an earlier process under my pid"
    assert worker.owner_is_gone(owner(pid=str(ended.pid), started="1"), me), "exited"
    assert not worker.owner_is_gone(owner(pid=parent, started=parent_started), me), "alive"
    assert worker.owner_is_gone(owner(pid=parent, started="1"), me), "its pid reused"
    # Never certain: a container that shares the host name (its own pid namespace, where
    # it may well be pid 1 as this one is), another boot, another host, an old owner id.
    assert not worker.owner_is_gone(owner(namespace="4026530000", started="1"), me)
    assert not worker.owner_is_gone(owner(boot="0123456789ab", started="1"), me)
    assert not worker.owner_is_gone(owner(host="elsewhere", started="1"), me)
    assert not worker.owner_is_gone(f"{host}:{ended.pid}:0badc0de", me)


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


async def test_an_idle_worker_settles_lapsed_runs_only_when_it_sweeps(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rounds, settles = [0], [0]
    fire, settle = worker.fire_due, leases.settle_lapsed

    async def counted_fire(*args: Any) -> Any:
        rounds[0] += 1
        return await fire(*args)

    async def counted_settle(*args: Any) -> None:
        settles[0] += 1
        await settle(*args)

    monkeypatch.setattr(worker, "fire_due", counted_fire)
    monkeypatch.setattr(leases, "settle_lapsed", counted_settle)

    async def idled(_worker: Worker) -> bool:
        return rounds[0] >= 10

    settings = worker_settings(empty_database, tmp_path, worker_poll_seconds=0.01,
                               job_sweep_seconds=3600)
    await run_worker(engines[0], settings, idled)
    assert settles[0] == 1, "once, in the first sweep; not in every round"


async def test_a_replica_without_a_worker_starts_where_it_could_not_make_the_jobs_directory(
    tmp_path: Path,
) -> None:
    """It only reads job files (if any: a bucket may hold them), so it has no directory to
    make; a worker does."""
    (tmp_path / "data").write_text("a file where the data directory should be")
    storage = job_storage(load_settings(data_dir=tmp_path / "data"))
    await storage.start(writing=False)
    assert await storage.open("0" * 32 + "-1.csv") is None
    assert await storage.problem() is None, "a replica that only reads lacks nothing"
    with pytest.raises(RuntimeError, match="EXPORTER_DATA_DIR must be a writable directory"):
        await storage.start(writing=True)
    assert "not writable" in (await storage.problem() or "")


async def test_a_worker_that_cannot_make_its_jobs_directory_fails_at_start(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
) -> None:
    (tmp_path / "data").write_text("a file where the data directory should be")
    settings = worker_settings(empty_database, tmp_path / "data")
    with pytest.raises(RuntimeError, match="EXPORTER_DATA_DIR must be a writable directory"):
        await Worker(engines[0], settings).start()
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "worker"], capture_output=True, timeout=60,
        env=Database("sqlite", empty_database.url, tmp_path / "data").env(),
    )
    assert result.returncode == 1
    assert b"cannot be made" in result.stderr


async def test_a_worker_stops_even_when_the_stop_comes_as_it_wakes_up(
    empty_database: Database, engines: tuple[AsyncEngine, AsyncEngine], tmp_path: Path,
) -> None:
    """As when a job ends (a slot is free: wake up) just as the service stops. On Python
    3.11, asyncio.wait_for returned the wake-up and dropped the cancel: stop() hung."""
    idle = asyncio.Event()

    class Watched(Worker):
        async def tick(self) -> float:
            delay = await super().tick()
            idle.set()
            return delay

    watched = Watched(engines[0], worker_settings(empty_database, tmp_path,
                                                  worker_poll_seconds=30))
    await watched.start()
    assert watched.task is not None
    try:
        await asyncio.wait_for(idle.wait(), timeout=10)
        await asyncio.sleep(0.05)  # waiting for a wake-up now
        watched.wake()
        watched.task.cancel()
        done, _ = await asyncio.wait({watched.task}, timeout=5)
        assert done, "the stop was lost: the loop runs on"
    finally:
        await watched.stop()


# Jobs and schedules of any table, on a database the service did not create.

@asynccontextmanager
async def working_service(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process with its job worker."""
    app = create_app(database.settings(worker_poll_seconds=0.05, job_progress_seconds=0.1))
    async with app_client(app) as client:
        yield client


async def succeeded(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (job := (await client.get(f"/jobs/{job_id}")).json())["status"] in (
        "queued", "running"
    ):
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)
    assert job["status"] == "succeeded", job
    return job  # type: ignore[no-any-return]


@pytest.mark.parametrize(("fmt", "compression"), [
    ("csv", "none"), ("ndjson", "none"), ("json", "none"), ("csv", "gzip"), ("tsv", "gzip"),
    ("parquet", "none"),
])
async def test_a_job_of_a_foreign_table_writes_the_bytes_of_its_live_export(
    foreign_database: Database, fmt: str, compression: str
) -> None:
    body = {"table": "orders", "format": fmt, "compression": compression,
            "fields": ["id", "customer", "total"], "filters": {"total__gte": "50"}}
    async with working_service(foreign_database) as client:
        posted = await client.post("/jobs", json=body)
        assert posted.status_code == 202, posted.text
        assert posted.json()["table"] == "orders"
        job = await succeeded(client, posted.json()["id"])
        assert job["file"]["name"].startswith("orders-")
        download = await client.get(f"/jobs/{job['id']}/download")
        live = await client.get(f"/exports/orders.{fmt}",
                                params={"fields": "id,customer,total", "total__gte": "50"})
    file = gzip.decompress(download.content) if compression == "gzip" else download.content
    assert file == live.content
    assert job["file"]["row_count"] == job["rows_written"] > 100
    assert job["file"]["sha256"] == hashlib.sha256(download.content).hexdigest()


async def test_a_job_without_a_table_exports_users_which_a_foreign_database_lacks(
    foreign_database: Database,
) -> None:
    assert JobRequest(format="csv").spec().table == "users"
    async with working_service(foreign_database) as client:
        listed = len((await client.get("/jobs")).json())
        refused = await client.post("/jobs", json={"format": "csv"})
        assert refused.status_code == 422
        error = refused.json()
        assert (error["parameter"], error["value"]) == ("table", "users")
        assert error["valid"][:3] == ["accounts", "big_orders", "orders"]
        assert len((await client.get("/jobs")).json()) == listed, "nothing queued to fail later"


async def test_a_schedule_of_a_table_fires_jobs_of_that_table(
    foreign_database: Database,
) -> None:
    job = {"table": "report_2024", "format": "ndjson"}
    async with working_service(foreign_database) as client:
        created = await client.post("/schedules", json={"cron": "* * * * * *", "job": job})
        assert created.status_code == 201, created.text
        schedule_id = created.json()["id"]
        try:
            deadline = time.monotonic() + 10
            while not (fired := (await client.get(
                "/jobs", params={"schedule_id": schedule_id})).json()):
                assert time.monotonic() < deadline, "the schedule never fired"
                await asyncio.sleep(0.05)
            done = await succeeded(client, fired[-1]["id"])
            assert done["table"] == "report_2024"
            download = await client.get(f"/jobs/{done['id']}/download")
            assert download.content == (await client.get("/exports/report_2024.ndjson")).content
        finally:
            await client.delete(f"/schedules/{schedule_id}")


WATCHER = "exporter-test-watcher"


async def test_a_job_whose_database_connections_are_killed_twice_succeeds_on_its_third_run(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database restart or a dropped connection mid-job is transient: the run is queued
    again with its error, after a pause, and the third run writes the whole file."""
    if database.backend != "postgresql":
        pytest.skip("kills PostgreSQL backends (SQLite's transient error, a lock, is below)")
    engine = database.engine()
    real_write = worker.write_job_file
    killed: list[int] = []

    async def write_with_kills(*args: Any) -> worker.JobFile:
        progress: worker.JobProgress = args[-1]
        writing = asyncio.ensure_future(real_write(*args))
        if len(killed) < 2:
            while progress.counts().rows == 0 and not writing.done():
                await asyncio.sleep(0.005)
            async with engine.connect() as conn:  # the export's connections, mid-COPY
                ended = (await conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND state IN ('active', 'idle in transaction') "
                    f"AND application_name <> '{WATCHER}'"
                ))).scalar_one()
            killed.append(ended)
        return await writing

    monkeypatch.setattr(worker, "write_job_file", write_with_kills)
    settings = worker_settings(database, tmp_path, batch_rows=1, job_max_attempts=3)
    job = await jobs.create_job(engine, JobRequest(format="csv").spec(), datetime.now(UTC))
    seen: list[jobs.Job] = []
    # The test's own reads go on a connection the kills spare.
    watcher = create_async_engine(database.url, connect_args={
        "server_settings": {"application_name": WATCHER}})

    async def done(_running: Worker) -> bool:
        seen.append(await jobs.find_job(watcher, job.id))
        return seen[-1].finished

    try:
        await run_worker(engine, settings, done, seconds=60)
        live = await client_export(database, "/exports/users.csv")
    finally:
        await engine.dispose()
        await watcher.dispose()
    final = seen[-1]
    assert len(killed) == 2 and all(killed), killed
    assert final.status == jobs.SUCCEEDED, final.error
    assert final.attempts == 3
    assert final.error and "Error" in final.error, "the last transient error is kept"
    retried = [s for s in seen if s.status == jobs.QUEUED and s.retry_at is not None]
    assert retried, "it waited, queued, between its runs"
    assert (tmp_path / "jobs" / final.file_path).read_bytes() == live


async def client_export(database: Database, path: str) -> bytes:
    async with app_client(create_app(database.settings())) as client:
        return (await client.get(path)).content


def test_a_locked_sqlite_file_is_transient_and_a_damaged_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError) as locked:
        other.execute("INSERT INTO t VALUES (1)")
    holder.execute("ROLLBACK")
    assert is_transient(locked.value)
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(sqlite3.DatabaseError) as broken:
        sqlite3.connect(damaged).execute("SELECT * FROM sqlite_master")
    assert not is_transient(broken.value)
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))


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
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    engine = engines[0]
    schedule_id, stored = await due_schedule(engine)
    made, _ = await fire_due(engine, datetime.now(UTC))
    assert len(made) == 1
    async with engine.begin() as conn:  # as if a second worker's UPDATE still matched
        await conn.execute(update(schedules).where(schedules.c.id == schedule_id)
                           .values(next_run_at=stored))
    again, _ = await fire_due(engine, datetime.now(UTC))
    assert again == []
    assert len(await scheduled_jobs(engine, schedule_id)) == 1


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


async def test_a_thousand_bad_filters_are_a_short_422_naming_twenty(
    client: httpx.AsyncClient,
) -> None:
    filters = {f"nope{i}": 1 for i in range(1000)}
    response = await client.post("/jobs", json={"format": "csv", "filters": filters})
    assert response.status_code == 422
    assert len(response.content) < 16384, len(response.content)
    body = response.json()
    assert len(body["errors"]) == 20
    assert body["message"].endswith("and 980 more bad parameters")
    query = "&".join(f"nope{i}=1" for i in range(1000))
    export = await client.get(f"/exports/users.csv?{query}")
    assert export.status_code == 422 and len(export.content) < 16384


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
