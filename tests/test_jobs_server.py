"""Export jobs against real ``exporter serve`` processes (uvicorn on loopback) and real
databases: files equal to the live export, Server-Sent Events read as a browser's
EventSource reads them, cancel, kill -9 and restart, schedules to the second, retention,
and two replicas on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from exporter import jobs
from exporter.cron import next_time
from exporter.jobs import JobRequest
from exporter.state import export_jobs
from tests.conftest import (
    SEED,
    Database,
    build_database,
    clone_database,
    scratch_postgres_url,
    serving,
)
from tests.test_server import metric, wait_for

JOB_USERS = 20_000


# Slow enough to watch and to cancel: one row per batch (a full export takes seconds). On
# PostgreSQL too: with two readers, each COPY is a range of four batches, four rows, so
# 20,000 rows are 5,000 COPYs.
SLOW = {
    "EXPORTER_BATCH_ROWS": "1",
    "EXPORTER_CHUNK_BYTES": "4096",
    "EXPORTER_JOB_PROGRESS_SECONDS": "0.1",
    "EXPORTER_EVENTS_POLL_SECONDS": "0.1",
    "EXPORTER_EVENTS_KEEPALIVE_SECONDS": "0.5",
    "EXPORTER_WORKER_POLL_SECONDS": "0.2",
    "EXPORTER_JOB_SWEEP_SECONDS": "0.3",
}
QUERY = {
    "country": "DE,FR,JP", "limit": "1500",
    "fields": "id,full_name,lifetime_value,bio,is_active,created_at",
}
BODY_FILTERS = {"country": ["DE", "FR", "JP"], "limit": 1500}
BODY_FIELDS = QUERY["fields"].split(",")


@pytest.fixture(scope="module")
async def template(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Database:
    """A seeded database that no server uses: each group of tests gets its own copy."""
    url = await scratch_postgres_url("jobs") if database.backend == "postgresql" else None
    return await build_database(
        database.backend, tmp_path_factory.mktemp("jobs-template"), JOB_USERS, SEED, url
    )


@dataclass
class Service:
    url: str
    pid: int
    database: Database

    @property
    def jobs_dir(self) -> Path:
        return self.database.data_dir / "jobs"

    def post_job(self, body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/jobs", json=body)
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        assert response.headers["location"] == f"/jobs/{job['id']}"
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def wait(self, job_id: str, until: Callable[[dict[str, Any]], bool], seconds: float = 30
             ) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while not until(job := self.job(job_id)):
            assert time.monotonic() < deadline, f"job {job_id} stuck: {job}"
            time.sleep(0.05)
        return job

    def finished(self, job_id: str, seconds: float = 30) -> dict[str, Any]:
        return self.wait(job_id, lambda job: job["status"] not in ("queued", "running"),
                         seconds)

    def files(self) -> list[str]:
        return sorted(os.listdir(self.jobs_dir)) if self.jobs_dir.exists() else []


@contextmanager
def service(database: Database, **env: str) -> Iterator[Service]:
    with serving(database.env(**{**SLOW, **env})) as server:
        yield Service(server.url, server.pid, database)


@pytest.fixture(scope="module")
async def shared(
    template: Database, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    database = await clone_database(template, tmp_path_factory.mktemp("jobs"), "jobs_shared")
    with service(database) as running:
        yield running


# Server-Sent Events, parsed as the HTML standard's EventSource parses them
# (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).

@dataclass(frozen=True)
class Event:
    type: str
    data: str
    id: str  # the last event id when it was dispatched


@dataclass
class EventStream:
    status: int = 0
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    last_event_id: str = ""
    ended_by_server: bool = False
    _pending: str = ""
    _type: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, text: str) -> list[Event]:
        self._pending += text
        dispatched = []
        while match := re.search(r"\r\n|\r|\n", self._pending):
            if match.group() == "\r" and match.end() == len(self._pending):
                break  # a CR at the end of a chunk may be half of a CRLF
            line, self._pending = self._pending[:match.start()], self._pending[match.end():]
            if (event := self._line(line)) is not None:
                dispatched.append(event)
        self.events += dispatched
        return dispatched

    def _line(self, line: str) -> Event | None:
        if not line:
            data, self._data = self._data, []
            kind, self._type = self._type, ""
            return Event(kind or "message", "\n".join(data), self.last_event_id) if data else None
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            return None
        name, colon, value = line.partition(":")
        value = value[1:] if colon and value.startswith(" ") else value
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None


def read_events(
    url: str, last_event_id: str | None = None, until: Callable[[Event], bool] | None = None
) -> EventStream:
    """Read an event stream until ``until`` says stop (then hang up) or the server ends it."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    stream = EventStream()
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        stream.status, stream.headers = response.status_code, response.headers
        if response.status_code != 200:
            return stream
        for text in response.iter_text():
            for event in stream.feed(text):
                if until is not None and until(event):
                    return stream
    stream.ended_by_server = True
    return stream


def progress_of(event: Event) -> dict[str, Any]:
    return json.loads(event.data)  # type: ignore[no-any-return]


# Files.

@pytest.mark.parametrize("fmt", ["csv", "tsv", "ndjson", "json", "parquet"])
def test_a_job_file_is_the_live_export_byte_for_byte(shared: Service, fmt: str) -> None:
    job = shared.post_job({"format": fmt, "fields": BODY_FIELDS, "filters": BODY_FILTERS})
    assert job["status"] == "queued" and job["file"] is None
    done = shared.finished(job["id"])
    assert done["status"] == "succeeded", done
    live = httpx.get(f"{shared.url}/exports/users.{fmt}", params=QUERY)
    download = httpx.get(f"{shared.url}{done['file']['url']}")
    assert download.status_code == 200
    assert download.content == live.content
    digest = hashlib.sha256(live.content).hexdigest()
    assert done["file"]["sha256"] == digest
    assert download.headers["etag"] == f'"{digest}"'
    assert done["file"]["size"] == done["bytes_written"] == len(live.content)
    assert done["file"]["row_count"] == done["total_rows"] == done["rows_written"] > 1000
    assert done["percent"] == 100.0
    assert download.headers["content-type"] == live.headers["content-type"]
    name = f"users-{job['id']}.{fmt}"
    assert done["file"]["name"] == name
    assert f'attachment; filename="{name}"' in download.headers["content-disposition"]
    finished = datetime.fromisoformat(done["finished_at"])
    assert datetime.fromisoformat(done["expires_at"]) - finished == timedelta(days=7)
    assert shared.files().count(f"{job['id']}-1.{fmt}") == 1


def test_a_gzip_job_decompresses_to_the_live_export_and_resumes_with_curl(
    shared: Service, tmp_path: Path
) -> None:
    job = shared.post_job({"format": "ndjson", "compression": "gzip", "filters": BODY_FILTERS})
    done = shared.finished(job["id"])
    url = f"{shared.url}{done['file']['url']}"
    whole = httpx.get(url)
    assert whole.headers["content-type"] == "application/gzip"
    assert "content-encoding" not in whole.headers  # the file is gzip; the body is the file
    assert done["file"]["name"].endswith(".ndjson.gz")
    live = httpx.get(f"{shared.url}/exports/users.ndjson",
                     params={"country": "DE,FR,JP", "limit": "1500"})
    assert gzip.decompress(whole.content) == live.content
    assert hashlib.sha256(whole.content).hexdigest() == done["file"]["sha256"]
    # An interrupted download, finished by curl -C - (Range), verifies.
    out = tmp_path / done["file"]["name"]
    out.write_bytes(whole.content[: len(whole.content) // 3])
    result = subprocess.run(["curl", "-sS", "-C", "-", "-o", str(out), url],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == done["file"]["sha256"]
    etag = whole.headers["etag"]
    ranged = httpx.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert ranged.status_code == 206 and ranged.content == whole.content[10:20]
    assert ranged.headers["content-range"] == f"bytes 10-19/{len(whole.content)}"
    assert httpx.get(url, headers={"If-None-Match": etag}).status_code == 304
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["etag"] == etag
    assert head.headers["content-length"] == str(len(whole.content))


# Progress.

def test_progress_streams_as_server_sent_events_and_resumes_after_last_event_id(
    shared: Service,
) -> None:
    job = shared.post_job({"format": "ndjson"})
    events_url = f"{shared.url}/jobs/{job['id']}/events"

    def moving(event: Event) -> bool:
        return event.type == "progress" and progress_of(event)["rows_written"] > 0

    first = read_events(events_url, until=moving)  # then hang up, mid-job
    assert first.status == 200
    assert first.headers["content-type"].startswith("text/event-stream")
    assert first.headers["cache-control"] == "no-cache"
    assert first.headers["x-accel-buffering"] == "no"
    assert first.retry == 2000
    assert first.events and all(e.type == "progress" for e in first.events)
    seen = first.last_event_id
    second = read_events(events_url, last_event_id=seen)
    assert second.ended_by_server
    ids = [int(e.id) for e in first.events + second.events]
    assert ids == sorted(set(ids)), "event ids only grow"
    assert all(int(e.id) > int(seen) for e in second.events), "nothing the client had"
    assert [e.type for e in second.events][-1] == "succeeded"
    assert {e.type for e in second.events[:-1]} <= {"progress"}
    progress = [progress_of(e) for e in first.events + second.events[:-1]]
    rows = [p["rows_written"] for p in progress]
    assert rows == sorted(rows) and len(set(rows)) >= 3
    assert all(p["total_rows"] == JOB_USERS + 4 for p in progress if p["rows_written"])
    assert all(0 <= p["percent"] <= 100 for p in progress if p["percent"] is not None)
    final = progress_of(second.events[-1])
    assert final["status"] == "succeeded" and final["file"]["row_count"] == JOB_USERS + 4
    assert "keepalive" in first.comments + second.comments
    # A finished job answers with its final event at once, and 204 once the client has it.
    started = time.monotonic()
    again = read_events(events_url)
    assert time.monotonic() - started < 1
    assert [e.type for e in again.events] == ["succeeded"] and again.ended_by_server
    assert again.events[0].id == second.events[-1].id
    done = read_events(events_url, last_event_id=second.events[-1].id)
    assert done.status == 204 and not done.events
    stranger = read_events(events_url, last_event_id="999999")  # not an id it ever sent
    assert [e.type for e in stranger.events] == ["succeeded"]


def test_cancel_stops_a_running_job_within_a_second_and_removes_its_partial_file(
    shared: Service,
) -> None:
    job = shared.post_job({"format": "csv"})
    running = shared.wait(job["id"], lambda j: j["status"] == "running" and j["rows_written"])
    partial = f".{job['id']}-{running['attempts']}.csv.part"
    assert partial in shared.files(), "written aside while it runs"
    assert not [f for f in shared.files() if f.startswith(job["id"])], "no file until complete"
    assert httpx.get(f"{shared.url}/jobs/{job['id']}/download").status_code == 409
    started = time.monotonic()
    asked = httpx.post(f"{shared.url}/jobs/{job['id']}/cancel")
    assert asked.status_code == 202 and asked.json()["cancel_requested"]
    canceled = shared.finished(job["id"])
    latency = time.monotonic() - started
    assert canceled["status"] == "canceled"
    assert latency < 1.0, f"took {latency:.2f} s"
    assert canceled["rows_written"] < canceled["total_rows"]
    assert not [f for f in shared.files() if job["id"] in f], "the partial file is gone"
    assert [e.type for e in read_events(f"{shared.url}/jobs/{job['id']}/events").events] == [
        "canceled"
    ]
    assert httpx.post(f"{shared.url}/jobs/{job['id']}/cancel").status_code == 200
    download = httpx.get(f"{shared.url}/jobs/{job['id']}/download")
    assert download.status_code == 409 and "canceled" in download.json()["message"]
    print(f"cancel latency {latency:.3f} s")


def test_canceling_a_finished_job_is_a_conflict(shared: Service) -> None:
    """A queued job canceled at once: ``test_jobs.py``, in-process, where no worker can
    claim it first."""
    done = shared.finished(shared.post_job({"format": "csv", "filters": {"limit": 3}})["id"])
    refused = httpx.post(f"{shared.url}/jobs/{done['id']}/cancel")
    assert refused.status_code == 409 and refused.json()["status"] == "succeeded"


def test_delete_removes_the_record_and_the_file_and_stops_a_running_job(
    shared: Service,
) -> None:
    small = shared.finished(shared.post_job({"format": "csv", "filters": {"limit": 5}})["id"])
    assert f"{small['id']}-1.csv" in shared.files()
    assert httpx.delete(f"{shared.url}/jobs/{small['id']}").status_code == 204
    assert f"{small['id']}-1.csv" not in shared.files()
    assert httpx.get(f"{shared.url}/jobs/{small['id']}").status_code == 404
    assert httpx.get(f"{shared.url}/jobs/{small['id']}/download").status_code == 404

    big = shared.post_job({"format": "json"})
    with ThreadPoolExecutor(1) as pool:
        watching = pool.submit(read_events, f"{shared.url}/jobs/{big['id']}/events")
        shared.wait(big["id"], lambda j: j["rows_written"] > 0)
        assert httpx.delete(f"{shared.url}/jobs/{big['id']}").status_code == 204
        watched = watching.result(timeout=5)
    assert watched.events[-1].type == "deleted" and watched.ended_by_server
    assert wait_for(lambda: not [f for f in shared.files() if big["id"] in f], seconds=2)
    assert wait_for(lambda: metric(shared.url, "exporter_jobs_running") == 0, seconds=2)


async def test_an_expired_job_is_410_and_its_file_is_swept(shared: Service) -> None:
    done = shared.finished(shared.post_job({"format": "csv", "filters": {"limit": 5}})["id"])
    name = f"{done['id']}-1.csv"
    assert name in shared.files()
    engine = shared.database.engine()
    try:
        async with engine.begin() as conn:
            await conn.execute(
                update(export_jobs).where(export_jobs.c.id == done["id"])
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
    finally:
        await engine.dispose()
    gone = httpx.get(f"{shared.url}/jobs/{done['id']}/download")
    assert gone.status_code == 410 and gone.json()["error"] == "gone"
    assert wait_for(lambda: name not in shared.files(), seconds=3)
    assert shared.job(done["id"])["status"] == "expired"
    assert httpx.get(f"{shared.url}/jobs/{done['id']}/download").status_code == 410


def test_jobs_are_listed_newest_first(shared: Service) -> None:
    made = [shared.post_job({"format": "csv", "filters": {"limit": 1}})["id"] for _ in range(3)]
    listed = httpx.get(f"{shared.url}/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in listed] == made[::-1][:2]
    for job_id in made:
        shared.finished(job_id)
    succeeded = httpx.get(f"{shared.url}/jobs", params={"status": "succeeded"}).json()
    assert {j["id"] for j in succeeded} >= set(made)


# Schedules.

def ticks(cron: str, after: datetime, until: datetime) -> list[datetime]:
    times = []
    while (after := next_time(cron, "UTC", after)) <= until:
        times.append(after)
    return times


def assert_each_time_fired_once(
    fired: list[dict[str, Any]], must: list[datetime], may: list[datetime]
) -> None:
    """One job for each time in ``must``, none at times outside ``may``, never two for one."""
    times = [datetime.fromisoformat(job["scheduled_for"]) for job in fired]
    assert len(set(times)) == len(times), "one job per scheduled time"
    assert set(times) <= set(may), (sorted(times), may)
    assert set(must) <= set(times), sorted(set(must) - set(times))


def test_seconds_schedules_fire_once_per_tick_and_keep_only_keep_last(shared: Service) -> None:
    small = {"format": "csv", "filters": {"limit": 20}}
    every_two = httpx.post(f"{shared.url}/schedules", json={
        "cron": "* * * * * */2", "job": small, "keep_last": 100,
    }).json()
    every_one = httpx.post(f"{shared.url}/schedules", json={
        "cron": "* * * * * *", "job": small, "keep_last": 2,
    }).json()
    created = datetime.fromisoformat(every_two["created_at"])
    seen: dict[str, dict[str, Any]] = {}  # every job of every_one, before retention took it

    def jobs_of(schedule: dict[str, Any]) -> list[dict[str, Any]]:
        listed = httpx.get(f"{shared.url}/jobs", params={"schedule_id": schedule["id"]})
        return listed.json()  # type: ignore[no-any-return]

    def fired_enough() -> bool:
        seen.update((job["id"], job) for job in jobs_of(every_one))
        return len(jobs_of(every_two)) >= 4 and len(seen) >= 4

    assert wait_for(fired_enough, seconds=30), (seen, jobs_of(every_two))
    kept: list[dict[str, Any]] = []

    def retained() -> bool:  # between a run's success and its retention, there are three
        kept[:] = jobs_of(every_one)
        return 1 <= sum(job["status"] == "succeeded" for job in kept) <= 2

    assert wait_for(retained, seconds=5), kept
    stop = datetime.now(UTC)
    for schedule in (every_two, every_one):
        assert httpx.delete(f"{shared.url}/schedules/{schedule['id']}").status_code == 204
    stopped = datetime.now(UTC)

    fired = [shared.finished(job["id"]) for job in jobs_of(every_two)]
    must = ticks("* * * * * */2", created, stop - timedelta(seconds=0.5))
    may = ticks("* * * * * */2", created, stopped)
    assert_each_time_fired_once(fired, must, may)
    assert len(must) >= 3
    # keep_last=2: only the newest two succeeded runs stayed (and those queued or running:
    # with a job per tick, more than one may be in flight on a loaded machine).
    assert sum(job["status"] == "succeeded" for job in kept) <= 2, kept
    oldest = min(seen.values(), key=lambda job: job["scheduled_for"])
    assert oldest["id"] not in {job["id"] for job in kept}, "the oldest run was removed"
    # Every file on disk belongs to a job that is listed as succeeded.
    for job in jobs_of(every_one):
        shared.finished(job["id"])

    def only_succeeded_files() -> bool:
        listed = httpx.get(f"{shared.url}/jobs",
                           params={"status": "succeeded", "limit": 1000}).json()
        expected = {f"{j['id']}-{j['attempts']}.{j['file']['name'].split('.', 1)[1]}"
                    for j in listed}
        return set(shared.files()) == expected

    assert wait_for(only_succeeded_files, seconds=5), shared.files()


# Crashes and replicas.

def exited(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent (this test process) to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_kill_9_mid_job_then_restart_finishes_the_job_and_leaves_no_partial_file(
    template: Database, tmp_path: Path,
) -> None:
    database = await clone_database(template, tmp_path / "data", "jobs_crash")
    with service(database) as first:
        job = first.post_job({"format": "ndjson", "filters": {"limit": 8000}})
        first.wait(job["id"], lambda j: j["rows_written"] > 300)
        os.kill(first.pid, signal.SIGKILL)
        assert [f for f in first.files() if f.endswith(".part")], "it died mid-file"
    started = time.monotonic()
    with service(database) as second:
        up = time.monotonic()
        done = second.finished(job["id"])
        recovered = time.monotonic()
        assert done["status"] == "succeeded" and done["attempts"] == 2
        live = httpx.get(f"{second.url}/exports/users.ndjson?limit=8000").content
        assert hashlib.sha256(live).hexdigest() == done["file"]["sha256"]
        assert httpx.get(f"{second.url}/jobs/{job['id']}/download").content == live
        assert second.files() == [f"{job['id']}-2.ndjson"], "nothing else: no partial file"
    print(f"restart {up - started:.2f} s, job done {recovered - up:.2f} s after the restart")


async def test_a_job_of_a_worker_on_another_host_is_taken_over_when_its_lease_lapses(
    shared: Service,
) -> None:
    now = datetime.now(UTC)
    values = jobs.job_values(JobRequest(format="csv", filters={"limit": 50}).spec(), now)
    values |= {"status": "running", "attempts": 1, "started_at": now,
               "lease_owner": "elsewhere:4242:0badc0de",
               "lease_expires_at": now + timedelta(seconds=5)}
    engine = shared.database.engine()
    try:
        async with engine.begin() as conn:
            await jobs.insert_job(conn, values)
    finally:
        await engine.dispose()
    (shared.jobs_dir / f".{values['id']}-1.part").write_bytes(b"id,email\r\n1,")  # its leftover
    time.sleep(0.5)
    assert shared.job(values["id"])["worker"] == "elsewhere:4242:0badc0de", "not before it lapses"
    done = shared.finished(values["id"], seconds=30)
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert done["worker"] != "elsewhere:4242:0badc0de"
    assert [f for f in shared.files() if values["id"] in f] == [f"{values['id']}-2.csv"]


def test_a_separate_worker_runs_jobs_and_hands_them_back_on_sigterm(
    template: Database, tmp_path: Path
) -> None:
    if template.backend != "sqlite":
        pytest.skip("the replicas test covers separate workers on PostgreSQL")
    database = asyncio.run(clone_database(template, tmp_path / "data", "jobs_worker"))
    env = database.env(**SLOW, EXPORTER_RUN_WORKER="false")
    with service(database, EXPORTER_RUN_WORKER="false") as api:
        job = api.post_job({"format": "csv", "filters": {"limit": 8000}})
        time.sleep(0.5)
        assert api.job(job["id"])["status"] == "queued", "no worker in the API process"
        worker = subprocess.Popen([sys.executable, "-m", "exporter", "worker"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            api.wait(job["id"], lambda j: j["rows_written"] > 1000)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=10) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
        handed_back = api.job(job["id"])
        assert handed_back["status"] == "queued" and handed_back["attempts"] == 0
        assert api.files() == []
        worker = subprocess.Popen([sys.executable, "-m", "exporter", "worker"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            done = api.finished(job["id"])
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=10)
        assert done["status"] == "succeeded" and done["attempts"] == 1
        # SIGTERM with an event stream open: the stream ends cleanly and the server exits.
        waiting = api.post_job({"format": "csv"})  # no worker now: it stays queued
        first_event = threading.Event()

        def note(_event: Event) -> bool:
            first_event.set()
            return False  # read on

        with ThreadPoolExecutor(1) as pool:
            watching = pool.submit(
                read_events, f"{api.url}/jobs/{waiting['id']}/events", None, note
            )
            assert first_event.wait(10), "the stream is open"
            os.kill(api.pid, signal.SIGTERM)
            watched = watching.result(timeout=10)
        assert watched.ended_by_server and [e.type for e in watched.events] == ["progress"]
        assert wait_for(lambda: exited(api.pid), seconds=5)


async def test_two_replicas_on_one_postgresql_fire_each_tick_once_and_run_each_job_once(
    template: Database, tmp_path: Path
) -> None:
    if template.backend != "postgresql":
        pytest.skip("replicas share a PostgreSQL database")
    database = await clone_database(template, tmp_path / "shared-data", "jobs_replicas")
    fast = {"EXPORTER_BATCH_ROWS": "500", "EXPORTER_WORKER_CONCURRENCY": "2"}
    with service(database, **fast) as one, service(database, **fast) as two:
        schedule = httpx.post(f"{one.url}/schedules", json={
            "cron": "* * * * * *", "job": {"format": "csv", "filters": {"limit": 300}},
            "keep_last": 1000,
        }).json()
        created = datetime.fromisoformat(schedule["created_at"])
        posted = []
        for i in range(12):
            replica = (one, two)[i % 2]
            posted.append(replica.post_job({"format": "ndjson", "filters": {"limit": 2000}})["id"])
            time.sleep(0.4)
        stop = datetime.now(UTC)
        assert httpx.delete(f"{two.url}/schedules/{schedule['id']}").status_code == 204
        stopped = datetime.now(UTC)
        fired = httpx.get(f"{two.url}/jobs", params={"schedule_id": schedule["id"]}).json()
        everything = [one.finished(job_id) for job_id in posted + [j["id"] for j in fired]]

        must = ticks("* * * * * *", created, stop - timedelta(seconds=0.5))
        may = ticks("* * * * * *", created, stopped)
        assert_each_time_fired_once(everything[len(posted):], must, may)
        assert all(job["status"] == "succeeded" for job in everything)
        assert all(job["attempts"] == 1 for job in everything), "no job ran twice"
        runs = {
            replica.url: metric(replica.url, "exporter_jobs_finished_total", outcome="succeeded")
            for replica in (one, two)
        }
        assert sum(runs.values()) == len(everything), runs
        assert all(runs.values()), f"both replicas ran jobs: {runs}"
        assert sum(metric(r.url, "exporter_jobs_finished_total", outcome="lost")
                   for r in (one, two)) == 0
        workers = {":".join(job["worker"].split(":")[:2]) for job in everything}  # host:pid
        assert workers == {f"{os.uname().nodename}:{one.pid}",
                           f"{os.uname().nodename}:{two.pid}"}
