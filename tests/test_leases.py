"""leases.py on its own: how a worker claims a job, keeps it by its heartbeats, and ends it,
hands it back or queues it again; and how the runs of dead workers are taken over or
settled. On SQLite and PostgreSQL, in conftest's ``empty_database`` (emptied before each
test by ``engines``), with the clock passed in as the worker passes it.

It is the only test file the mutation run gives leases.py's mutants (tests/mutation.py), so
it checks, directly and in seconds, what each function does to a job as its API shows it
(status, worker, attempts, revision, progress, error and times), and which job a claim
takes, and from when. The worker that calls these functions is tested in test_jobs
(in-process) and test_jobs_server (real servers, kill -9).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from exporter import jobs, leases
from exporter.leases import Beat, Counts
from tests.conftest import LEASE, queue

# Raced, taken over, handed back, queued again, settled.

async def test_two_workers_racing_never_claim_the_same_job(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    now = datetime.now(UTC)
    queued = await queue(engines[0], 30, now)

    async def worker(engine: AsyncEngine, name: str) -> list[str]:
        claimed = []
        while (job := await leases.claim_job(engine, name, now, LEASE, 3)) is not None:
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
# succeeded (the rest of the race, the worker's side, is in test_jobs).

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
