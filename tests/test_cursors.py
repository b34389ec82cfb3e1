"""SQLite's parallel route: readers that share one snapshot, and batches planned by id."""

from __future__ import annotations

import asyncio
import os
import sys
from contextlib import aclosing
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from exporter.catalog import Column
from exporter.cursors import UTF8_SLICE, check_utf8, sqlite_blocks
from exporter.db import shared_snapshot
from exporter.formats import Ndjson
from exporter.models import users
from exporter.queries import ExportQuery
from tests.conftest import Database, build_database, query_for, reflected


async def count_users(conn: AsyncConnection) -> int:
    return (await conn.execute(select(func.count()).select_from(users))).scalar_one()


async def test_readers_share_one_snapshot_and_writers_go_on_once_it_is_taken(
    tmp_path: Path,
) -> None:
    database = await build_database("sqlite", tmp_path, 200, seed=5)
    engine = database.engine(max_overflow=10)
    try:
        async with shared_snapshot(engine, 3) as readers:
            before = [await count_users(conn) for conn in readers]
            # The write lock was given back: this commit does not wait for the export.
            async with asyncio.timeout(1), engine.begin() as writer:
                row = {column: value for column, value in (await writer.execute(
                    select(users).where(users.c.id == 1))).mappings().one().items()}
                await writer.execute(insert(users).values(
                    {**row, "id": 10_000, "email": "late@example.com"}))
            after = [await count_users(conn) for conn in readers]
        async with engine.connect() as conn:
            now = await count_users(conn)
    finally:
        await engine.dispose()
    assert len(set(before)) == 1, "every reader sees the same rows"
    assert after == before, "a commit after the snapshot is not seen"
    assert now == before[0] + 1


async def test_batches_cover_every_row_once_in_order_whatever_the_batch_size(
    sqlite_database: Database,
) -> None:
    engine = sqlite_database.engine(max_overflow=10)
    try:
        query = query_for(await reflected(engine), "fields=id&after_id=7&limit=400&country=DE,FR")
        results = []
        for batch_rows, readers in ((1, 2), (100, 2), (1000, 3), (5000, 1)):
            async with shared_snapshot(engine, readers + 1) as (planner, *renderers):
                blocks = sqlite_blocks(
                    planner, renderers, query, Ndjson(columns_of(query)), batch_rows
                )
                async with aclosing(blocks):
                    got = [block async for block in blocks]
            assert all(rows <= batch_rows for rows, _ in got)
            assert sum(rows for rows, _ in got) == b"".join(d for _, d in got).count(b"\n")
            results.append(b"".join(data for _, data in got))
        async with engine.connect() as conn:
            expected = (await conn.execute(
                select(users.c.id).where(users.c.id > 7, users.c.country.in_(("DE", "FR")))
                .order_by(users.c.id).limit(400)
            )).scalars().all()
    finally:
        await engine.dispose()
    wanted = b"".join(b'{"id":%d}\n' % user_id for user_id in expected)
    assert len(expected) == 400, "the limit, not the data, ends the export"
    assert results == [wanted] * 4


async def test_closing_the_blocks_early_leaves_every_connection_usable(
    sqlite_database: Database,
) -> None:
    engine = sqlite_database.engine(max_overflow=10)
    try:
        async with shared_snapshot(engine, 3) as (planner, *renderers):
            query = query_for(await reflected(engine), "fields=id,bio")
            blocks = sqlite_blocks(planner, renderers, query, Ndjson(columns_of(query)), 10)
            async with aclosing(blocks):
                await anext(blocks)
            for conn in (planner, *renderers):
                assert await count_users(conn) > 0
    finally:
        await engine.dispose()


@pytest.mark.skipif(sys.platform != "linux", reason="thread priorities are set on Linux only")
async def test_sqlite_threads_run_at_the_configured_niceness(sqlite_database: Database) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    engine = sqlite_database.engine(sqlite_nice=min(base + 5, 19))
    try:
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            thread_id = driver._thread.native_id  # type: ignore[union-attr]
            assert os.getpriority(os.PRIO_PROCESS, thread_id) == min(base + 5, 19)
            assert await count_users(conn) > 0
        assert os.getpriority(os.PRIO_PROCESS, 0) == base, "the loop's thread is left alone"
    finally:
        await engine.dispose()


def columns_of(query: ExportQuery) -> list[Column]:
    return [query.table.column(name) for name in query.fields]


# SQLite hands back whatever bytes a text holds; check_utf8 reads each block in slices.

@pytest.mark.parametrize("cut", [1, 2, 3])  # a 4-byte character cut after 1, 2 or 3 bytes
def test_a_character_cut_by_a_slices_end_is_still_utf8(cut: int) -> None:
    block = b"x" * (UTF8_SLICE - cut) + "\U0001f600 Stra\u00dfe".encode() + b"\n"
    check_utf8(block)  # no error
    check_utf8(block * 3)


@pytest.mark.parametrize("bad", [
    pytest.param(b"a\xffb", id="a-byte-no-utf8-has"),
    pytest.param(b"\xc3(", id="a-broken-continuation"),
    pytest.param(b"\xed\xa0\x80", id="a-surrogate"),
    pytest.param(b"\xf0\x9f\x98", id="a-character-cut-short-at-the-end"),
])
@pytest.mark.parametrize("where", [0, UTF8_SLICE - 1, 2 * UTF8_SLICE + 5])
def test_bytes_that_are_not_utf8_fail_the_block_wherever_they_are(bad: bytes, where: int
                                                                  ) -> None:
    block = "\u00e9".encode() + b"x" * where + bad
    with pytest.raises(UnicodeDecodeError):
        check_utf8(block)
