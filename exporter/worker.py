"""The worker: claims jobs, writes their files, fires schedules, sweeps up after them.

It runs inside the service (``EXPORTER_RUN_WORKER``, the default) or as
``exporter worker``; any number of workers share one database, and the database decides
which one runs what (``leases.py``, ``schedules.py``).

A job's file is written by the one export pipeline (``open_export``, the bytes of the live
HTTP export) to ``<id>-<n>.<ext>`` (n: the attempt) in the job storage (``job_storage.py``:
``<data_dir>/jobs``, or a bucket): a complete file or none.
While it runs, a heartbeat every ``job_progress_seconds`` writes the progress, renews the
lease and reads the cancel flag; a cancel or a lost claim stops the export at once and
removes the partial file. A worker whose heartbeats do not go through (each is waited for
at most a third of a lease) gives the job up after half a lease, before the lease lapses
and another worker may claim it, so two workers never write one job. The attempt in the
name keeps a worker that lost its claim anyway (its clock, say) from ever renaming over the
file of the run that took over.

A worker that dies (kill -9) leaves its jobs ``running`` under a lease that lapses; any
worker then claims them again (each claim is an attempt; ``job_max_attempts`` of them and
the job fails). A worker starting in the same pid namespace of the same host (the service
restarted, not its container) sees at once that the owner process is gone and does not
wait for the lease; anywhere else it waits. A worker that is stopped (SIGTERM) hands its jobs
back to the queue. The sweep removes files no run will finish, expired files, and
scheduled jobs beyond their schedule's ``keep_last``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from exporter import jobs, leases
from exporter.catalog import Catalog
from exporter.config import Settings
from exporter.errors import NotFound, is_transient
from exporter.job_files import (
    JOB_FILE,
    JobFile,
    JobProgress,
    remove_job_file,
    remove_or_leave,
    write_job_file,
)
from exporter.job_storage import JobStorage, job_storage
from exporter.jobs import Job
from exporter.leases import Beat
from exporter.metrics import Metrics
from exporter.owners import owner_is_gone, worker_owner
from exporter.schedules import (
    all_retention,
    expire_unscheduled,
    find_schedule,
    fire_due,
    retention,
)

log = logging.getLogger("exporter.worker")
RETRIED = "retried"  # an outcome: queued again after a transient failure
# Seconds stop() lets the loop finish its round before cancelling it: a SQLite write cut
# off mid-statement (a claim, a firing) leaves its connection holding the write lock until
# the statement is garbage-collected, long after the engine is disposed ("database is
# locked" for whoever writes next, as the tests' next fixture did). Short, so that handing
# the jobs back still fits in a shutdown's grace.
STOP_WAIT_S = 3.0
# A run that failed on a transient error waits this long before the next, doubling each
# time: a database restart or a dropped connection is usually over within seconds.
RETRY_FIRST_S = 1.0
RETRY_MOST_S = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Worker:
    """Claims and runs up to ``worker_concurrency`` jobs, fires schedules, sweeps."""

    def __init__(
        self, engine: AsyncEngine, settings: Settings, metrics: Metrics | None = None,
        catalog: Catalog | None = None, storage: JobStorage | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.storage = storage or job_storage(settings)
        self._owns_storage = storage is None  # started and closed here, else by the caller
        self.catalog = catalog or Catalog.from_settings(engine, settings)
        self.metrics = metrics
        self.owner = worker_owner()
        self.lease = timedelta(seconds=settings.job_lease_seconds)
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._beats: set[asyncio.Future[Beat]] = set()  # heartbeats in flight, never cancelled
        self.task: asyncio.Task[None] | None = None
        self._next_sweep = 0.0
        self._last_error = ""
        self._failing_schedules: dict[str, str] = {}  # id -> the error last logged

    async def start(self) -> None:
        """Start the loop; raise RuntimeError at once if jobs cannot run here at all."""
        leases.check_sqlite_returning(self.engine)
        if self._owns_storage:
            await self.storage.start()
        self.task = asyncio.create_task(self.run(), name="exporter worker")
        self.task.add_done_callback(self._loop_ended)

    def wake(self) -> None:
        """Look for work now (a job was just queued in this process)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming, between two rounds (STOP_WAIT_S); hand running jobs back."""
        self._stopping = True
        self._wake.set()
        if self.task is not None:
            await asyncio.wait({self.task}, timeout=STOP_WAIT_S)
            self.task.cancel()  # a round stuck that long: the database is not answering
            with suppress(asyncio.CancelledError, Exception):
                await self.task
        running = dict(self.running)
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        # Every job cancelled here goes back to the queue, whether it had started or not:
        # requeue changes only a run this worker still holds (a finished one stays so).
        for job_id in running:
            with suppress(Exception):
                await leases.requeue(self.engine, job_id, self.owner)
        if self._beats:  # late heartbeats end before the engine may be disposed
            await asyncio.wait(set(self._beats), timeout=STOP_WAIT_S)
        if self._owns_storage:
            await self.storage.close()

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the job worker stopped", exc_info=task.exception())

    async def run(self) -> None:
        log.info("worker %s: up to %d jobs at once", self.owner,
                 self.settings.worker_concurrency)
        recovered = False
        while not self._stopping:
            self._wake.clear()
            delay = self.settings.worker_poll_seconds
            try:
                if not recovered:
                    await self.recover()
                    recovered = True
                delay = await self.tick()
                if self._last_error:
                    log.info("worker %s: the database answers again", self.owner)
                    self._last_error = ""
            except Exception as exc:  # the database is down or not migrated: keep trying
                self._report(exc)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel (stop())
            # that comes as the wake-up does, and the loop would run on. A stop() during the
            # round has set the wake-up already: no wait then.
            with suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _report(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != self._last_error:  # once per distinct failure, not once a second
            log.error("worker %s: %s; retrying every %s s", self.owner, message,
                      self.settings.worker_poll_seconds)
            self._last_error = message

    async def recover(self) -> None:
        """Runs whose owner process on this host is gone are claimable at once."""
        gone = [o for o in await leases.running_owners(self.engine)
                if owner_is_gone(o, self.owner)]
        if gone:
            count = await leases.expire_lapsed_leases(self.engine, gone, utcnow())
            log.warning("worker %s: taking over %d job(s) of %s, which died",
                        self.owner, count, ", ".join(gone))

    async def tick(self) -> float:
        """One round: fire schedules, claim jobs, sweep when due; seconds until the next.
        An idle round writes once (the claim that finds nothing)."""
        _, next_due = await fire_due(self.engine, utcnow(), self._failing_schedules)
        while not self._stopping and len(self.running) < self.settings.worker_concurrency:
            job = await leases.claim_job(
                self.engine, self.owner, utcnow(), self.lease, self.settings.job_max_attempts
            )
            if job is None:
                break
            self._start(job)
        if time.monotonic() >= self._next_sweep:
            try:
                await self.sweep()
            finally:  # due a period after it ended, even failed (a bucket that is down)
                self._next_sweep = time.monotonic() + self.settings.job_sweep_seconds
        delay = self.settings.worker_poll_seconds
        if next_due is not None:
            delay = min(delay, max(0.0, (next_due - utcnow()).total_seconds()))
        return delay

    def _start(self, job: Job) -> None:
        log.info("worker %s: job %s, attempt %d", self.owner, job.id, job.attempts)
        task = asyncio.create_task(self._run(job), name=f"job {job.id}")
        self.running[job.id] = task
        if self.metrics is not None:
            self.metrics.jobs_running.inc()

        def ended(_task: asyncio.Task[None]) -> None:
            self.running.pop(job.id, None)
            if self.metrics is not None:
                self.metrics.jobs_running.dec()
            self._wake.set()  # a slot is free

        task.add_done_callback(ended)

    async def _run(self, job: Job) -> None:
        try:
            await self._attempt(job)
        except Exception:  # the lease lapses, and another attempt runs
            log.exception("job %s: attempt %d broke off", job.id, job.attempts)

    async def _attempt(self, job: Job) -> None:
        stem = _stem(job)
        writer: asyncio.Task[JobFile] | None = None
        progress = JobProgress()
        try:
            writer = asyncio.create_task(self._write(job, stem, progress))
            verdict = await self._supervise(job, writer, progress)
        except asyncio.CancelledError:  # the worker is stopping: stop() hands the job back
            if writer is not None:
                await _stop(writer)
            raise
        await self._finish(job, writer, progress, verdict)

    async def _write(self, job: Job, stem: str, progress: JobProgress) -> JobFile:
        """The file of this attempt, after removing those of earlier ones, which are over
        (a storage that fails here fails the attempt as a write would: _failed decides)."""
        await self._remove_files_of(job.id)
        return await write_job_file(self.engine, self.catalog, job.spec, self.settings,
                                    self.storage, stem, progress)

    async def _supervise(
        self, job: Job, writer: asyncio.Task[JobFile], progress: JobProgress
    ) -> Beat:
        """Heartbeats until the file is written (CONTINUE), canceled or the claim lost.

        The claim is given up (LOST) once no heartbeat has gone through for half a lease,
        each one waited for at most a third of a lease: the writer is stopped well before
        the lease lapses and another worker may claim the job."""
        lease = self.lease.total_seconds()
        written = progress.counts()
        last_beat = time.monotonic()  # when the last heartbeat that went through was sent
        while True:
            give_up = last_beat + lease / 2
            pause = min(self.settings.job_progress_seconds, give_up - time.monotonic())
            await asyncio.wait({writer}, timeout=max(0.0, pause))
            if writer.done():
                return Beat.CONTINUE
            sent = time.monotonic()
            verdict = Beat.CONTINUE
            if sent >= give_up:
                log.warning("job %s: no heartbeat went through for %.1f s; giving the job up",
                            job.id, sent - last_beat)
                verdict = Beat.LOST  # before the lease lapses and another worker takes it
            else:
                counts = progress.counts()
                # Waited for, not cancelled, when it is late: a SQLite write cut off
                # mid-statement keeps the write lock (STOP_WAIT_S); a late beat ends later.
                beat = asyncio.ensure_future(leases.beat(
                    self.engine, job.id, self.owner, counts, counts != written, utcnow(),
                    self.lease,
                ))
                self._beats.add(beat)
                beat.add_done_callback(self._beats.discard)
                beat.add_done_callback(_retrieved)
                patience = min(lease / 3, give_up - sent)
                await asyncio.wait({beat}, timeout=patience)
                try:
                    if not beat.done():
                        raise TimeoutError(f"no answer within {patience:.1f} s")
                    verdict = beat.result()
                    written, last_beat = counts, sent
                except Exception as exc:  # the next round decides
                    log.warning("job %s: heartbeat failed: %s", job.id,
                                f"{type(exc).__name__}: {exc}")
            if verdict is not Beat.CONTINUE:
                await _stop(writer)
                return verdict

    async def _finish(
        self, job: Job, writer: asyncio.Task[JobFile], progress: JobProgress, verdict: Beat
    ) -> None:
        now = utcnow()
        counts = progress.counts()
        seen = {"rows_written": counts.rows, "total_rows": counts.total,
                "bytes_written": counts.size}
        outcome = "lost" if verdict is Beat.LOST else jobs.CANCELED
        if verdict is Beat.CONTINUE:  # the writer is done
            if (error := writer.exception()) is None:
                outcome = await self._succeeded(job, writer.result(), seen, now)
            else:
                outcome = await self._failed(job, error, seen, now)
        if outcome == jobs.CANCELED:
            if await leases.finish(self.engine, job.id, self.owner, jobs.CANCELED, now, **seen):
                log.info("job %s: canceled after %d rows", job.id, counts.rows)
            else:
                outcome = "lost"
        if outcome == "lost":
            log.warning("job %s: no longer ours (deleted, or taken over); stopped", job.id)
        if outcome != jobs.SUCCEEDED:
            # Renamed just before the cancel or the loss was seen: no record will own it.
            await remove_or_leave(self.storage, f"{_stem(job)}.{job.spec.extension}")
        if self.metrics is not None:
            self.metrics.jobs_finished.labels(outcome).inc()

    async def _failed(
        self, job: Job, error: BaseException, seen: dict[str, int | None], now: datetime
    ) -> str:
        """FAILED; RETRIED (queued again, for later) when the error was transient and
        attempts are left; CANCELED when a cancel came first."""
        message = f"{type(error).__name__}: {error}"[: jobs.ERROR_LIMIT]
        if is_transient(error) and job.attempts < self.settings.job_max_attempts:
            delay = min(RETRY_FIRST_S * 2 ** (job.attempts - 1), RETRY_MOST_S)
            log.warning("job %s: attempt %d of %d failed on a transient error (%s); "
                        "running it again in %.0f s", job.id, job.attempts,
                        self.settings.job_max_attempts, message, delay)
            if await leases.retry_later(self.engine, job.id, self.owner, message,
                                        now + timedelta(seconds=delay)):
                return RETRIED
            return jobs.CANCELED
        log.error("job %s failed", job.id, exc_info=error)
        recorded = await leases.finish(
            self.engine, job.id, self.owner, jobs.FAILED, now, error=message, **seen
        )
        return jobs.FAILED if recorded else jobs.CANCELED

    async def _succeeded(
        self, job: Job, file: JobFile, seen: dict[str, int | None], now: datetime
    ) -> str:
        """SUCCEEDED, or CANCELED when a cancel came first (the caller removes the file)."""
        # A scheduled job is kept by its schedule's keep_last; one whose schedule was deleted
        # while it was queued or running has none, and expires like a one-off job.
        schedule = None if job.schedule_id is None else await self._keep_last(job.schedule_id)
        expires_at = None
        if schedule is None:
            expires_at = now + timedelta(seconds=self.settings.job_ttl_seconds)
        recorded = await leases.finish(
            self.engine, job.id, self.owner, jobs.SUCCEEDED, now, expires_at=expires_at,
            file_name=jobs.download_name(job.id, job.spec), file_path=file.path,
            file_size=file.size, row_count=file.rows, sha256=file.sha256, **seen,
        )
        if not recorded:  # canceled, or deleted or taken over, while it was being finished
            return jobs.CANCELED
        log.info("job %s: %d rows, %d bytes, sha256 %s", job.id, file.rows, file.size,
                 file.sha256)
        if schedule is not None:
            for old in await retention(self.engine, *schedule):
                if old.file_path:
                    await remove_or_leave(self.storage, old.file_path)
        return jobs.SUCCEEDED

    async def _keep_last(self, schedule_id: str) -> tuple[str, int] | None:
        try:
            schedule = await find_schedule(self.engine, schedule_id)
        except NotFound:
            return None
        return schedule.id, schedule.keep_last

    async def _remove_files_of(self, job_id: str) -> None:
        for name in await self.storage.names(job_id):
            match = JOB_FILE.match(name)
            if match and match["id"] == job_id:
                await self.storage.remove(name)

    async def sweep(self) -> None:
        """End lapsed runs that must not run again, expire old one-off files, apply
        keep_last, and remove files no run will finish."""
        await leases.settle_lapsed(self.engine, utcnow(), self.settings.job_max_attempts)
        for job in await jobs.expire_jobs(self.engine, utcnow()):
            log.info("job %s expired; removing its file", job.id)
            await remove_job_file(self.storage, job)
        for job in await all_retention(self.engine):
            await remove_job_file(self.storage, job)
        await expire_unscheduled(
            self.engine, utcnow(), timedelta(seconds=self.settings.job_ttl_seconds)
        )
        await self._remove_orphans()

    async def _remove_orphans(self) -> None:
        # Listed before the database is read: a claim always comes before its file, so
        # every file listed here has a row that says whether a run still owns it.
        names = await self.storage.names()
        found = {name: match for name in names if (match := JOB_FILE.match(name))}
        known = await jobs.jobs_by_id(self.engine, sorted({m["id"] for m in found.values()}))
        for name, match in found.items():
            job = known.get(match["id"])
            live = job is not None and (
                (job.status == jobs.RUNNING and int(match["attempt"]) == job.attempts)
                or (job.status == jobs.SUCCEEDED and job.file_path == name)
            )
            if not live:
                log.info("removing %s: no run will finish it", name)
                await self.storage.remove(name)


def _stem(job: Job) -> str:
    """The name of this attempt's file, less its extension."""
    return f"{job.id}-{job.attempts}"


def _retrieved(task: asyncio.Future[Beat]) -> None:
    """A late heartbeat's outcome, read so that asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


async def _stop(task: asyncio.Task[JobFile]) -> None:
    """Cancel the writer and wait until it has removed its partial file."""
    task.cancel()
    await asyncio.wait({task})
