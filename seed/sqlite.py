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
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from seed.users import EPOCH, DrawnUser

SQLITE_DATE = "%Y-%m-%d "
SQLITE_TIME = "%H:%M:%S.%f"
# SQLAlchemy's own SQLite DATETIME storage format.
SQLITE_TIMESTAMP = SQLITE_DATE + SQLITE_TIME
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


# A million users share some 4,300 dates and 86,400 times of day: each is formatted once.
@cache
def _date(day: int) -> str:
    return (EPOCH + timedelta(days=day)).strftime(SQLITE_DATE)


@cache
def _time_of_day(second: int) -> str:
    return (EPOCH + timedelta(seconds=second)).strftime(SQLITE_TIME)


def sqlite_timestamp(seconds: int) -> str:
    """``EPOCH + seconds`` in ``SQLITE_TIMESTAMP``; EPOCH is a UTC midnight, so the date
    and the time of day are those of whole days and of the remaining seconds."""
    day, second = divmod(seconds, SECONDS_PER_DAY)
    return _date(day) + _time_of_day(second)


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
