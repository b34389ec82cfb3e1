"""The worker on its own, in-process (worker.py): it runs a job to its end, and a failed
export ends failed with no file; stopped mid-claim or mid-round it leaves no lock and no job
running; a cancel or a loss that comes as the file completes leaves no file; it gives a job
up when its heartbeats hang, before its lease lapses; it sweeps, checks its jobs directory at
start, and queues a run again after a transient failure. On SQLite and PostgreSQL, in
conftest's ``empty_database`` (emptied before each test by ``engines``) unless a test needs
rows.

The lease changes it calls are tested in ``test_leases.py``; the worker in real servers
(kill -9, restarts, replicas) in ``test_jobs_server.py``."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from exporter import jobs, leases, worker
from exporter.app import create_app
from exporter.catalog import Catalog
from exporter.config import Settings, load_settings
from exporter.db import driver_connection
from exporter.errors import is_transient
from exporter.job_storage import JobStorage, job_storage
from exporter.jobs import JobRequest
from exporter.leases import Beat
from exporter.schedules import ScheduleRequest, create_schedule, delete_schedule
from exporter.worker import Worker, utcnow
from tests.conftest import (
    SEED,
    SEEDED_USERS,
    Database,
    app_client,
    build_database,
    finished_by_worker,
    queue,
    run_worker,
    worker_settings,
)


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
