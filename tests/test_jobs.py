"""Jobs and schedules through the API, in-process: what a body may say (validated as the
live export validates its query string), hostile bodies, cancel, download and unknown ids;
and jobs and schedules of any table, on a database the service did not create.

Cron times are in ``test_cron.py``, firing and retention in ``test_schedules.py``, the
worker that runs jobs in ``test_worker.py``; claiming, heartbeats and the other lease changes
(leases.py) in ``test_leases.py``.

What needs a real server (files, Server-Sent Events, cancel, kill -9, replicas) is in
``test_jobs_server.py``."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from exporter.app import create_app
from exporter.catalog import Catalog
from exporter.jobs import JobRequest
from exporter.params import parse_query
from tests.conftest import Database, app_client, reflected

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
