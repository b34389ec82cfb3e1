"""leases.py on its own: how a worker claims a job, keeps it by its heartbeats, and ends it,
hands it back or queues it again; and how the runs of dead workers are taken over or
settled. On SQLite and PostgreSQL, in conftest's ``empty_database`` (emptied before each
test by ``engines``), with the clock passed in as the worker passes it.

It is the only test file the mutation run gives leases.py's mutants (tests/mutation.py), so
it checks, directly and in seconds, what each function does to a job as its API shows it
(status, worker, attempts, revision, progress, error and times), and which job a claim
takes, and from when. The worker that calls these functions is tested in test_worker
(in-process) and test_jobs_server (real servers, kill -9).
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from exporter import jobs, leases
from exporter.jobs import JobRequest
from exporter.leases import Beat, Counts
from tests.conftest import LEASE, queue

TICK = timedelta(microseconds=1)  # the smallest step both backends keep


# Raced, taken over, handed back, queued again, settled.

async def test_two_workers_racing_never_claim_the_same_job(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    queued = await queue(engines[0], 30, now)

    async def worker(engine: AsyncEngine, name: str) -> list[str]:
        claimed: list[str] = []  # bounded: a claim that left its job claimable never ends
        while len(claimed) <= len(queued) and (
            job := await leases.claim_job(engine, name, now, LEASE, 3)
        ) is not None:
            claimed.append(job.id)
        return claimed

    results = await asyncio.gather(*(
        worker(engines[i % 2], f"worker-{i}") for i in range(6)
    ))
    claimed = [job_id for result in results for job_id in result]
    assert sorted(claimed) == sorted(queued), "each job claimed exactly once"
    assert sum(1 for result in results if result) >= 2, "the workers did race"
    assert [job.attempts for job in await jobs.list_jobs(engines[0], 100)] == [1] * 30


async def test_a_lapsed_lease_is_taken_over_and_the_old_worker_can_change_nothing(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    (job_id,) = await queue(engines[0], 1, now)
    first = await leases.claim_job(engines[0], "dead", now, LEASE, 3)
    assert first is not None and first.id == job_id
    assert await leases.claim_job(engines[1], "alive", now + LEASE / 2, LEASE, 3) is None
    later = now + LEASE + timedelta(seconds=1)
    second = await leases.claim_job(engines[1], "alive", later, LEASE, 3)
    assert second is not None and second.id == job_id and second.attempts == 2
    counts = Counts(10, 100, 500)
    assert await leases.beat(engines[0], job_id, "dead", counts, True, later, LEASE) is Beat.LOST
    assert not await leases.finish(engines[0], job_id, "dead", jobs.SUCCEEDED, later)
    assert await leases.beat(engines[1], job_id, "alive", counts, True, later, LEASE) \
        is Beat.CONTINUE
    job = await jobs.find_job(engines[1], job_id)
    assert (job.lease_owner, job.rows_written, job.total_rows, job.percent) == (
        "alive", 10, 100, 10.0
    )


async def test_a_run_handed_back_by_a_stopping_worker_starts_afresh_without_using_an_attempt(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    (job_id,) = await queue(engines[0], 1, now)
    assert await leases.claim_job(engines[0], "stopping", now, LEASE, 3) is not None
    await leases.beat(engines[0], job_id, "stopping", Counts(10, 100, 500), True, now, LEASE)
    before = await jobs.find_job(engines[0], job_id)
    assert not await leases.requeue(engines[0], job_id, "another")  # not its run
    assert await leases.requeue(engines[0], job_id, "stopping")
    assert not await leases.requeue(engines[0], job_id, "stopping")  # no longer its run
    job = await jobs.find_job(engines[0], job_id)
    assert (job.status, job.lease_owner, job.lease_expires_at, job.started_at) == (
        jobs.QUEUED, None, None, None)
    assert (job.rows_written, job.bytes_written, job.total_rows, job.attempts) == (0, 0, None, 0)
    assert job.revision == before.revision + 1  # event streams see the change
    again = await leases.claim_job(engines[1], "next", now, LEASE, 3)  # at once: no lease left
    assert again is not None and again.id == job_id and again.attempts == 1


async def test_the_runs_of_dead_workers_are_claimable_at_once_and_no_other_run_is(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    (ended,) = await queue(engines[0], 1, now - timedelta(seconds=1))
    assert await leases.claim_job(engines[0], "dead-1", now, LEASE, 3) is not None
    assert await leases.finish(engines[0], ended, "dead-1", jobs.SUCCEEDED, now)
    queued = await queue(engines[0], 3, now)
    for owner in ("dead-1", "alive", "dead-2"):
        assert await leases.claim_job(engines[0], owner, now, LEASE, 3) is not None
    assert sorted(await leases.running_owners(engines[0])) == ["alive", "dead-1", "dead-2"]
    assert await leases.expire_lapsed_leases(engines[0], [], now) == 0
    assert await leases.expire_lapsed_leases(engines[0], ["dead-1", "dead-2", "gone"], now) == 2
    taken = [await leases.claim_job(engines[1], "new", now, LEASE, 3) for _ in range(3)]
    assert [job and job.id for job in taken] == [queued[0], queued[2], None]
    assert (await jobs.find_job(engines[0], queued[1])).lease_owner == "alive"


async def test_a_run_that_failed_on_a_transient_error_alone_is_queued_again_unless_canceled(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    failed, other, canceled = await queue(engines[0], 3, now)
    for owner in ("worker", "other", "canceled"):
        assert await leases.claim_job(engines[0], owner, now, LEASE, 3) is not None
    later = now + timedelta(seconds=2)
    assert not await leases.retry_later(engines[0], failed, "other", "lost", later)  # not its run
    assert await leases.retry_later(engines[0], failed, "worker", "connection lost", later)
    job = await jobs.find_job(engines[0], failed)
    assert (job.status, job.lease_owner, job.error, job.retry_at, job.attempts) == (
        jobs.QUEUED, None, "connection lost", later, 1)
    assert (await jobs.find_job(engines[0], other)).status == jobs.RUNNING
    await jobs.cancel_job(engines[0], canceled, now)
    assert not await leases.retry_later(engines[0], canceled, "canceled", "lost", later)
    assert (await jobs.find_job(engines[0], canceled)).status == jobs.RUNNING  # to end canceled


async def test_a_job_whose_worker_keeps_dying_fails_instead_of_running_forever(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    (job_id,) = await queue(engines[0], 1, now)
    for attempt in range(3):
        now += LEASE * 2
        await leases.settle_lapsed(engines[0], now, 3)
        claimed = await leases.claim_job(engines[0], f"mortal-{attempt}", now, LEASE, 3)
        assert claimed is not None and claimed.attempts == attempt + 1
    now += LEASE * 2
    assert await leases.claim_job(engines[0], "next", now, LEASE, 3) is None
    await leases.settle_lapsed(engines[0], now, 3)
    job = await jobs.find_job(engines[0], job_id)
    assert job.status == jobs.FAILED
    assert job.error is not None and "3 times" in job.error


async def test_cancel_ends_a_queued_job_at_once_and_flags_a_running_one(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    first, second = await queue(engines[0], 2, now)
    running = await leases.claim_job(engines[0], "worker", now, LEASE, 3)
    assert running is not None and running.id == first
    assert (await jobs.cancel_job(engines[0], second, now)).status == jobs.CANCELED
    flagged = await jobs.cancel_job(engines[0], first, now)
    assert flagged.status == jobs.RUNNING and flagged.cancel_requested
    counts = Counts(0, None, 0)
    assert await leases.beat(engines[0], first, "worker", counts, False, now, LEASE) is Beat.CANCEL
    # A canceled job whose worker died ends canceled, not re-run.
    later = now + LEASE * 2
    assert await leases.claim_job(engines[1], "other", later, LEASE, 3) is None
    await leases.settle_lapsed(engines[1], later, 3)
    assert (await jobs.find_job(engines[1], first)).status == jobs.CANCELED


# Cancel racing the end of a job: a cancel answered 202 ends the job canceled, never
# succeeded (the rest of the race, the worker's side, is in test_worker).

async def test_a_finish_other_than_cancel_is_refused_once_a_cancel_was_asked(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    (job_id,) = await queue(engines[0], 1, now)
    assert await leases.claim_job(engines[0], "worker", now, LEASE, 3) is not None
    assert (await jobs.cancel_job(engines[1], job_id, now)).status == jobs.RUNNING
    assert not await leases.finish(engines[0], job_id, "worker", jobs.SUCCEEDED, now)
    assert not await leases.finish(engines[0], job_id, "worker", jobs.FAILED, now)
    assert await leases.finish(engines[0], job_id, "worker", jobs.CANCELED, now)
    assert (await jobs.find_job(engines[0], job_id)).status == jobs.CANCELED


# Claiming: which job, from when, and what a run starts with.

async def test_a_claim_takes_the_oldest_job_and_of_two_as_old_the_smaller_id(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    engine, now = engines[0], datetime.now(UTC)
    spec = JobRequest(format="csv").spec()
    created = {"c" * 32: now, "b" * 32: now, "f" * 32: now - TICK, "a" * 32: now + TICK}
    async with engine.begin() as conn:  # in an order that is neither by age nor by id
        for job_id, at in created.items():
            await jobs.insert_job(conn, jobs.job_values(spec, at) | {"id": job_id})
    taken = [await leases.claim_job(engine, "worker", now, LEASE, 3) for _ in range(5)]
    assert [job and job.id for job in taken] == ["f" * 32, "b" * 32, "c" * 32, "a" * 32, None]


async def test_a_claim_starts_the_run_afresh_and_returns_the_job_as_stored(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """The second run of a job whose first one wrote some rows, then failed on a transient
    error."""
    engine, now = engines[0], datetime.now(UTC)
    (job_id,) = await queue(engine, 1, now)
    assert await leases.claim_job(engine, "first", now, LEASE, 3) is not None
    await leases.beat(engine, job_id, "first", Counts(10, 100, 500), True, now, LEASE)
    later = now + timedelta(seconds=5)
    assert await leases.retry_later(engine, job_id, "first", "connection lost", later)
    queued = await jobs.find_job(engine, job_id)
    assert (queued.rows_written, queued.total_rows, queued.bytes_written) == (10, 100, 500)
    claimed = await leases.claim_job(engines[1], "second", later, LEASE, 3)
    assert claimed is not None and claimed == await jobs.find_job(engine, job_id)
    assert (claimed.status, claimed.lease_owner, claimed.attempts, claimed.revision) == (
        jobs.RUNNING, "second", 2, queued.revision + 1)
    assert (claimed.rows_written, claimed.total_rows, claimed.bytes_written) == (0, None, 0)
    assert (claimed.started_at, claimed.heartbeat_at, claimed.lease_expires_at) == (
        later, later, later + LEASE)
    assert claimed.retry_at is None
    assert claimed.error == "connection lost", "the last transient error stays till the end"


async def test_a_run_queued_again_is_claimed_from_its_retry_time_and_not_before(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    engine, now = engines[0], datetime.now(UTC)
    (job_id,) = await queue(engine, 1, now)
    claimed = await leases.claim_job(engine, "worker", now, LEASE, 3)
    assert claimed is not None
    retry_at = now + timedelta(seconds=2)
    assert await leases.retry_later(engine, job_id, "worker", "database restarting", retry_at)
    job = await jobs.find_job(engine, job_id)
    assert (job.status, job.lease_owner, job.lease_expires_at, job.error, job.retry_at) == (
        jobs.QUEUED, None, None, "database restarting", retry_at)
    assert (job.attempts, job.revision) == (1, claimed.revision + 1), "it was an attempt"
    assert await leases.claim_job(engine, "worker", retry_at - TICK, LEASE, 3) is None
    again = await leases.claim_job(engine, "worker", retry_at, LEASE, 3)
    assert again is not None and (again.id, again.attempts) == (job_id, 2)


async def test_a_lease_lapses_after_its_last_moment_not_at_it(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    (job_id,) = await queue(engines[0], 1, now)
    assert await leases.claim_job(engines[0], "first", now, LEASE, 3) is not None
    assert await leases.claim_job(engines[1], "second", now + LEASE, LEASE, 3) is None
    taken = await leases.claim_job(engines[1], "second", now + LEASE + TICK, LEASE, 3)
    assert taken is not None and (taken.id, taken.lease_owner, taken.attempts) == (
        job_id, "second", 2)


# Heartbeats.

async def test_a_heartbeat_writes_progress_renews_the_lease_and_a_revision_only_if_changed(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    engine, now = engines[0], datetime.now(UTC)
    beating, other = await queue(engine, 2, now)
    first, second = [await leases.claim_job(engine, "worker", now, LEASE, 3) for _ in range(2)]
    assert first is not None and second is not None  # both the worker's
    assert (first.id, second.id) == (beating, other)
    revision = first.revision
    later = now + timedelta(seconds=10)
    counts = Counts(rows=10, total=200, size=4096)
    assert await leases.beat(engine, beating, "worker", counts, True, later, LEASE) \
        is Beat.CONTINUE
    job = await jobs.find_job(engine, beating)
    assert (job.rows_written, job.total_rows, job.bytes_written, job.percent) == (
        10, 200, 4096, 5.0)
    assert (job.heartbeat_at, job.lease_expires_at, job.revision) == (
        later, later + LEASE, revision + 1)
    again = later + timedelta(seconds=10)  # nothing new to tell: no event for the streams
    assert await leases.beat(engine, beating, "worker", counts, False, again, LEASE) \
        is Beat.CONTINUE
    job = await jobs.find_job(engine, beating)
    assert (job.heartbeat_at, job.lease_expires_at, job.revision) == (
        again, again + LEASE, revision + 1)
    assert (await jobs.find_job(engine, other)).rows_written == 0, "the other job untouched"
    # Its lease runs from its last heartbeat; the other job's, from the claim, has lapsed.
    taken = await leases.claim_job(engines[1], "next", now + LEASE + TICK, LEASE, 3)
    assert taken is not None and taken.id == other


# Ending a run.

async def test_a_finish_ends_the_run_with_its_values_and_leaves_the_worker_holding_nothing(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    engine, now = engines[0], datetime.now(UTC)
    (job_id,) = await queue(engine, 1, now)
    claimed = await leases.claim_job(engine, "worker", now, LEASE, 3)
    assert claimed is not None
    ended_at = now + timedelta(seconds=3)
    assert not await leases.finish(engine, job_id, "other", jobs.FAILED, ended_at, error="no")
    assert await leases.finish(engine, job_id, "worker", jobs.FAILED, ended_at, error="disk full")
    ended = await jobs.find_job(engine, job_id)
    assert (ended.status, ended.error, ended.finished_at, ended.revision) == (
        jobs.FAILED, "disk full", ended_at, claimed.revision + 1)
    assert (ended.lease_owner, ended.lease_expires_at, ended.attempts) == ("worker", None, 1)
    # The job still names its worker, but the run is over: the worker can change nothing.
    later = ended_at + TICK
    assert await leases.beat(engine, job_id, "worker", Counts(1, 1, 1), True, later, LEASE) \
        is Beat.LOST
    assert not await leases.finish(engine, job_id, "worker", jobs.SUCCEEDED, later)
    assert not await leases.finish(engine, job_id, "worker", jobs.CANCELED, later)
    assert not await leases.retry_later(engine, job_id, "worker", "again", later)
    assert not await leases.requeue(engine, job_id, "worker")
    assert await jobs.find_job(engine, job_id) == ended


# Settling the runs of dead workers that must not run again.

async def test_a_lapsed_run_whose_cancel_was_asked_ends_canceled_even_at_its_last_attempt(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    engine, now = engines[0], datetime.now(UTC)
    lapsing, live = await queue(engine, 2, now)
    assert await leases.claim_job(engine, "dead", now, LEASE, 1) is not None
    assert await leases.claim_job(engine, "alive", now + LEASE, LEASE, 1) is not None
    for job_id in (lapsing, live):
        assert (await jobs.cancel_job(engine, job_id, now)).cancel_requested
    lapsed = await jobs.find_job(engine, lapsing)
    await leases.settle_lapsed(engine, now + LEASE, 1)  # its lease's last moment
    assert await jobs.find_job(engine, lapsing) == lapsed
    end = now + LEASE + TICK
    await leases.settle_lapsed(engine, end, 1)
    job = await jobs.find_job(engine, lapsing)
    assert (job.status, job.finished_at, job.lease_expires_at, job.revision, job.error) == (
        jobs.CANCELED, end, None, lapsed.revision + 1, None)
    running = await jobs.find_job(engine, live)  # its worker stops it at its next heartbeat
    assert (running.status, running.cancel_requested) == (jobs.RUNNING, True)


async def test_a_lapsed_run_at_its_last_attempt_fails_saying_why_and_an_earlier_one_waits(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    engine, start = engines[0], datetime.now(UTC)
    twice, once, waiting = await queue(engine, 3, start)
    for owner in ("dead-1", "dead-2"):
        assert await leases.claim_job(engine, owner, start, LEASE, 2) is not None
    retaken = start + LEASE + TICK
    again = await leases.claim_job(engine, "dead-3", retaken, LEASE, 2)
    assert again is not None and (again.id, again.attempts) == (twice, 2)
    before = {job_id: await jobs.find_job(engine, job_id) for job_id in (twice, once, waiting)}
    await leases.settle_lapsed(engine, retaken + LEASE, 2)  # twice's last moment
    assert {job_id: await jobs.find_job(engine, job_id) for job_id in before} == before
    end = retaken + LEASE + TICK
    await leases.settle_lapsed(engine, end, 2)
    failed = await jobs.find_job(engine, twice)
    assert (failed.status, failed.finished_at, failed.lease_expires_at, failed.revision) == (
        jobs.FAILED, end, None, before[twice].revision + 1)
    assert failed.error == ("its worker stopped without finishing it 2 times (killed, or lost "
                            "the database); see the workers' logs")
    assert await jobs.find_job(engine, once) == before[once]  # lapsed, but an attempt is left
    assert await jobs.find_job(engine, waiting) == before[waiting]
    taken = await leases.claim_job(engine, "next", end, LEASE, 2)
    assert taken is not None and (taken.id, taken.attempts) == (once, 2)


async def test_only_a_running_jobs_lease_counts(engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    """Every end of a run clears its lease; were one left on a finished job (by hand, by a
    bug), the job must be neither claimed nor settled again."""
    engine, now = engines[0], datetime.now(UTC)
    (job_id,) = await queue(engine, 1, now)
    assert await leases.claim_job(engine, "worker", now, LEASE, 3) is not None
    assert await leases.finish(engine, job_id, "worker", jobs.SUCCEEDED, now)
    async with engine.begin() as conn:
        await conn.execute(update(jobs.export_jobs).where(jobs.export_jobs.c.id == job_id)
                           .values(lease_expires_at=now))
    ended = await jobs.find_job(engine, job_id)
    assert await leases.claim_job(engine, "other", now + LEASE, LEASE, 3) is None
    await leases.settle_lapsed(engine, now + LEASE, 1)
    assert await jobs.find_job(engine, job_id) == ended


# Which workers have runs (the worker asks, to take over those of dead ones).

async def test_the_running_owners_are_the_workers_of_running_jobs_each_named_once(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    engine, now = engines[0], datetime.now(UTC)
    ended, *_ = await queue(engine, 4, now)
    for owner in ("done", "busy", "busy"):
        assert await leases.claim_job(engine, owner, now, LEASE, 3) is not None
    assert await leases.finish(engine, ended, "done", jobs.SUCCEEDED, now)
    assert await leases.running_owners(engine) == ["busy"]


# SQLite before 3.35 cannot claim: a version check, as no such SQLite runs here.

def test_jobs_refuse_a_sqlite_older_than_3_35_and_only_on_sqlite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on_sqlite = create_async_engine("sqlite+aiosqlite://")  # neither ever connects
    on_postgres = create_async_engine("postgresql+asyncpg://exporter@127.0.0.1/exporter")
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 35, 0))
    leases.check_sqlite_returning(on_sqlite)  # the first with UPDATE ... RETURNING
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    with pytest.raises(RuntimeError) as old:
        leases.check_sqlite_returning(on_sqlite)
    assert str(old.value) == (
        "export jobs need SQLite 3.35 or newer (UPDATE ... RETURNING); this Python has "
        "3.34.1. Use a newer Python build, or PostgreSQL."
    )
    leases.check_sqlite_returning(on_postgres)  # whatever this Python's SQLite
