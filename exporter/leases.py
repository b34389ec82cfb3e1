"""Leases: how a worker claims a job, keeps it, and ends it.

A claim takes a queued job, or a running one whose lease lapsed (its worker died), with
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL and one
``UPDATE ... WHERE id = (SELECT ...) RETURNING`` on SQLite, whose writes are serialised.
A worker keeps its claim by a heartbeat that also writes progress and reads the cancel
flag; every later change it makes is conditional on still holding the claim, so a worker
that lost it (the lease lapsed, the job was deleted) can change nothing. Each is one
conditional statement: atomic on both backends, whichever process makes it.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.db import backend_name
from exporter.jobs import CANCELED, FAILED, QUEUED, RUNNING, Job
from exporter.state import export_jobs

RETURNING_SQLITE = (3, 35)  # the first SQLite with UPDATE ... RETURNING


class Beat(enum.Enum):
    """What a heartbeat learnt."""

    CONTINUE = "continue"
    CANCEL = "cancel"  # cancel_requested is set
    LOST = "lost"  # the claim is gone: the job was deleted, or another worker took it over


@dataclass(frozen=True)
class Counts:
    rows: int
    total: int | None
    size: int


def check_sqlite_returning(engine: AsyncEngine) -> None:
    """Claims and heartbeats need ``UPDATE ... RETURNING`` on SQLite."""
    if backend_name(engine) == "sqlite" and sqlite3.sqlite_version_info < RETURNING_SQLITE:
        raise RuntimeError(
            f"export jobs need SQLite 3.35 or newer (UPDATE ... RETURNING); this Python has "
            f"{sqlite3.sqlite_version}. Use a newer Python build, or PostgreSQL."
        )


def _held(job_id: str, owner: str) -> Any:
    return and_(
        export_jobs.c.id == job_id, export_jobs.c.status == RUNNING,
        export_jobs.c.lease_owner == owner,
    )


def _lapsed(now: datetime) -> Any:
    return and_(export_jobs.c.status == RUNNING, export_jobs.c.lease_expires_at < now)


async def settle_lapsed(engine: AsyncEngine, now: datetime, max_attempts: int) -> None:
    """Lapsed runs that must not run again: canceled ones end canceled, and ones whose
    worker died ``max_attempts`` times end failed."""
    async with engine.begin() as conn:
        await conn.execute(
            update(export_jobs).where(_lapsed(now), export_jobs.c.cancel_requested.is_(True))
            .values(status=CANCELED, finished_at=now, lease_expires_at=None,
                    revision=export_jobs.c.revision + 1)
        )
        await conn.execute(
            update(export_jobs).where(_lapsed(now), export_jobs.c.attempts >= max_attempts)
            .values(
                status=FAILED, finished_at=now, lease_expires_at=None,
                revision=export_jobs.c.revision + 1,
                error=(
                    f"its worker stopped without finishing it {max_attempts} times "
                    "(killed, or lost the database); see the workers' logs"
                ),
            )
        )


async def claim_job(
    engine: AsyncEngine, owner: str, now: datetime, lease: timedelta, max_attempts: int
) -> Job | None:
    """Take the oldest job that is queued, or running under a lapsed lease, or None."""
    candidate = export_jobs.alias("candidate")
    claimable = or_(
        and_(candidate.c.status == QUEUED,
             or_(candidate.c.retry_at.is_(None), candidate.c.retry_at <= now)),
        and_(
            candidate.c.status == RUNNING, candidate.c.lease_expires_at < now,
            candidate.c.attempts < max_attempts, candidate.c.cancel_requested.is_(False),
        ),
    )
    pick = (
        select(candidate.c.id).where(claimable)
        .order_by(candidate.c.created_at, candidate.c.id).limit(1)
    )
    if backend_name(engine) == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    statement = (
        update(export_jobs).where(export_jobs.c.id == pick.scalar_subquery())
        .values(
            status=RUNNING, lease_owner=owner, lease_expires_at=now + lease, heartbeat_at=now,
            started_at=now, attempts=export_jobs.c.attempts + 1, rows_written=0,
            bytes_written=0, total_rows=None, revision=export_jobs.c.revision + 1,
            retry_at=None,
        )
        .returning(*export_jobs.c)
    )
    async with engine.begin() as conn:
        row = (await conn.execute(statement)).first()
    return None if row is None else Job.from_row(row)


async def beat(
    engine: AsyncEngine, job_id: str, owner: str, counts: Counts, changed: bool,
    now: datetime, lease: timedelta,
) -> Beat:
    """Renew the lease, write progress (a new revision only if it changed), read the
    cancel flag: one statement."""
    statement = (
        update(export_jobs).where(_held(job_id, owner))
        .values(
            rows_written=counts.rows, total_rows=counts.total, bytes_written=counts.size,
            heartbeat_at=now, lease_expires_at=now + lease,
            revision=export_jobs.c.revision + (1 if changed else 0),
        )
        .returning(export_jobs.c.cancel_requested)
    )
    async with engine.begin() as conn:
        row = (await conn.execute(statement)).first()
    if row is None:
        return Beat.LOST
    return Beat.CANCEL if row.cancel_requested else Beat.CONTINUE


async def finish(
    engine: AsyncEngine, job_id: str, owner: str, status: str, now: datetime, **values: Any
) -> bool:
    """End a run this worker holds; False if it no longer held it, or if a cancel was asked
    for and this is not the cancel: a cancel answered 202 always ends the job canceled."""
    held = _held(job_id, owner)
    if status != CANCELED:
        held = and_(held, export_jobs.c.cancel_requested.is_(False))
    async with engine.begin() as conn:
        result = await conn.execute(
            update(export_jobs).where(held).values(
                status=status, finished_at=now, lease_expires_at=None,
                revision=export_jobs.c.revision + 1, **values,
            )
        )
    return bool(result.rowcount)


async def retry_later(
    engine: AsyncEngine, job_id: str, owner: str, error: str, retry_at: datetime,
) -> bool:
    """Queue a run that failed on a transient error again, with that error, to be claimed
    from ``retry_at``; it counts as an attempt. False if this worker no longer held it, or
    a cancel was asked for (which must end the job canceled)."""
    held = and_(_held(job_id, owner), export_jobs.c.cancel_requested.is_(False))
    async with engine.begin() as conn:
        result = await conn.execute(
            update(export_jobs).where(held).values(
                status=QUEUED, lease_owner=None, lease_expires_at=None, error=error,
                retry_at=retry_at, revision=export_jobs.c.revision + 1,
            )
        )
    return bool(result.rowcount)


async def requeue(engine: AsyncEngine, job_id: str, owner: str) -> bool:
    """Hand a run back (the worker is stopping): it starts afresh elsewhere, and this run
    does not count as an attempt."""
    async with engine.begin() as conn:
        result = await conn.execute(
            update(export_jobs).where(_held(job_id, owner)).values(
                status=QUEUED, lease_owner=None, lease_expires_at=None, started_at=None,
                rows_written=0, bytes_written=0, total_rows=None,
                attempts=export_jobs.c.attempts - 1, revision=export_jobs.c.revision + 1,
            )
        )
    return bool(result.rowcount)


async def expire_lapsed_leases(
    engine: AsyncEngine, owners: Sequence[str], now: datetime
) -> int:
    """Let the runs of these (dead) owners be claimed now instead of when their leases lapse."""
    if not owners:
        return 0
    async with engine.begin() as conn:
        result = await conn.execute(
            update(export_jobs)
            .where(export_jobs.c.status == RUNNING, export_jobs.c.lease_owner.in_(owners))
            .values(lease_expires_at=now - timedelta(seconds=1))
        )
    return int(result.rowcount)


async def running_owners(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(export_jobs.c.lease_owner).distinct()
            .where(export_jobs.c.status == RUNNING, export_jobs.c.lease_owner.is_not(None))
        )
        return [row.lease_owner for row in rows]
