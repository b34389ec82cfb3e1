"""Seeded users as SQLite stores them, and the page cache their bulk insert wants.

The values are those SQLAlchemy itself writes for the ``users`` columns, so that its
filters compare them correctly: booleans as 0/1, ``Numeric`` as text with its two decimals
and ``DateTime`` as ``SQLITE_TIMESTAMP`` text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import cache
from itertools import product
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .users import CREATED_SPAN_SECONDS, EPOCH, LAST_LOGIN_SPAN_SECONDS, DrawnUser

# SQLAlchemy's own SQLite DATETIME storage format.
SQLITE_TIMESTAMP = "%Y-%m-%d %H:%M:%S.%f"
SECONDS_PER_DAY = 86400
# SQLite's page cache while seeding, in KiB (a connection's default is 2000). The email
# index of a million users takes 44 MiB and its inserts land all over it; in 2 MB its pages
# go out to the WAL and are read back for every batch, which doubled the insert time.
SEED_CACHE_KIB = 64 * 1024

SqliteRow = tuple[Any, ...]


@asynccontextmanager
async def seed_cache(conn: AsyncConnection) -> AsyncIterator[None]:
    """A page cache of ``SEED_CACHE_KIB`` for the block, then the connection's own size
    back, as the pool may hand the connection on."""
    own = (await conn.exec_driver_sql("PRAGMA cache_size")).scalar_one()
    await conn.exec_driver_sql(f"PRAGMA cache_size = -{SEED_CACHE_KIB}")
    try:
        yield
    finally:
        await conn.exec_driver_sql(f"PRAGMA cache_size = {own}")


@cache
def _timestamp_halves() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every date a seeded timestamp can fall on and every time of day, formatted once:
    a million users share them, and two tuple lookups cost less than formatting."""
    first_day = EPOCH.date()
    days = (CREATED_SPAN_SECONDS + LAST_LOGIN_SPAN_SECONDS) // SECONDS_PER_DAY + 1
    dates = tuple(f"{first_day + timedelta(days=day)} " for day in range(days))
    times = tuple(
        f"{hour:02d}:{minute:02d}:{second:02d}.000000"  # whole seconds: no microseconds
        for hour, minute, second in product(range(24), range(60), range(60))
    )
    return dates, times


def sqlite_timestamp(seconds: int) -> str:
    """``EPOCH + seconds`` in ``SQLITE_TIMESTAMP``; EPOCH is a UTC midnight, so the date
    and the time of day are those of whole days and of the remaining seconds."""
    dates, times = _timestamp_halves()
    day, second = divmod(seconds, SECONDS_PER_DAY)
    return dates[day] + times[second]


def sqlite_rows(drawn: Iterable[DrawnUser]) -> Iterator[SqliteRow]:
    for (user_id, email, full_name, country, city, plan, is_active, cents, created_at,
         last_login_at, bio, avatar_image_id) in drawn:
        yield (
            user_id, email, full_name, country, city, plan,
            int(is_active),
            f"{cents // 100}.{cents % 100:02d}",  # what f"{Decimal:.2f}" made of the cents
            sqlite_timestamp(created_at),
            None if last_login_at is None else sqlite_timestamp(last_login_at),
            bio,
            avatar_image_id,
        )
