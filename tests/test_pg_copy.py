"""PostgreSQL COPY exports: the bytes of the row pipeline, whole rows, and clean failures."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy import insert, make_url, select, text
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter import db
from exporter.catalog import Table
from exporter.db import DriverStatement, create_engine, shared_snapshot, snapshot
from exporter.formats import FORMATS
from exporter.models import users
from exporter.pg_copy import Block, copy_blocks, copy_ranges, copy_statement
from exporter.pipeline import export_chunks, open_export
from exporter.queries import ExportQuery
from tests.conftest import (
    GOLDEN_AFTER_ID,
    SEED,
    SEEDED_USERS,
    Database,
    at,
    build_database,
    postgres_url,
    query_for,
    recreate_postgres_database,
    reflected,
)
from tests.test_exports import GOLDEN_CSV, GOLDEN_JSON, GOLDEN_NDJSON

# More hostile rows, after the golden ones: empty strings in every text column, COPY's own
# markers (a lone \., \N), what this module's CSV row end looks like (,"\r"\n) inside values,
# lone CR and LF, control characters, backslash escapes spelled out as text.
EXTRA_ROWS = [
    dict(id=900005, email="", full_name="\\.", country="", city="", plan="", is_active=False,
         lifetime_value=Decimal("-0.50"), created_at=at("2024-03-01T12:00:00.999999"),
         last_login_at=None, bio="\\.", avatar_image_id=None),
    dict(id=900006, email="\\N", full_name='"', country='\\"', city="\r", plan=",",
         is_active=True, lifetime_value=Decimal("1"), created_at=at("2024-03-01T12:00:02"),
         last_login_at=at("2024-03-01T12:00:03"), bio=',"\r"\n', avatar_image_id=3),
    dict(id=900007, email="tab\there", full_name="\x01\x7f\b\f\v", country="FR",
         city="\u2028\u2029", plan='"\r"', is_active=False, lifetime_value=Decimal("10.10"),
         created_at=at("2024-03-01T12:00:04"), last_login_at=None,
         bio='a\n"\r"\nb\r\n\\r\\n\\\\ \\t', avatar_image_id=None),
    dict(id=900008, email="x,y", full_name='""', country="DE", city="\n", plan="free",
         is_active=True, lifetime_value=Decimal("0.01"), created_at=at("2024-03-01T12:00:05"),
         last_login_at=None, bio="\r", avatar_image_id=None),
    dict(id=900009, email='quote"s', full_name="\\", country="DE", city=None, plan="pro",
         is_active=True, lifetime_value=Decimal("2.00"), created_at=at("2024-03-01T12:00:06"),
         last_login_at=None, bio='"\r"\n', avatar_image_id=4),
    dict(id=900010, email=" ", full_name=" ", country="JP", city=" ", plan="enterprise",
         is_active=False, lifetime_value=Decimal("3.00"), created_at=at("2024-03-01T12:00:07"),
         last_login_at=None, bio=None, avatar_image_id=None),
]
BULK_ROWS = 100_000  # ~30 MB of CSV: more than the socket buffers and the read-ahead hold

FIELD_SETS = [
    "", "id", "bio", "city", "full_name", "email", "plan", "last_login_at", "avatar_image_id",
    "lifetime_value", "email,bio", "bio,id", "city,bio,full_name,country,plan",
    "is_active,lifetime_value,created_at,last_login_at",
]
FILTERS = [
    "", "country=DE,FR", "plan=pro", "is_active=false", "created_from=2024-03-01T12:00:00Z",
    "created_to=2024-03-01T12:00:00Z", "limit=7", "after_id=2990&limit=20",
    "country=JP&plan=enterprise&is_active=true", "limit=0",
]


USERS: list[Table] = []  # the users table, as seeded_plus reflected it (alike in every one)


def query_of(raw: str) -> ExportQuery:
    return query_for(USERS[0], raw)


@pytest.fixture(scope="module")
async def hostile(tmp_path_factory: pytest.TempPathFactory) -> Database:
    """The seeded PostgreSQL database, with the extra hostile rows."""
    return await seeded_plus(
        tmp_path_factory, "pgcopy", lambda conn: conn.execute(insert(users), EXTRA_ROWS)
    )


@pytest.fixture(scope="module")
async def big(tmp_path_factory: pytest.TempPathFactory) -> Database:
    """The seeded database plus enough bulk rows (~30 MB of CSV) that an export cannot be
    all in flight, in socket buffers and read-ahead, while its reader waits."""
    bulk = text(
        "INSERT INTO users (id, email, full_name, country, city, plan, is_active,"
        " lifetime_value, created_at, last_login_at, bio, avatar_image_id)"
        " SELECT g, 'bulk' || g || '@example.com', 'Bulk User', 'DE', 'Berlin', 'pro',"
        " true, 12.30, now(), NULL, repeat('bulk, \"bio\" ', 20), NULL"
        " FROM generate_series(1000001, 1000000 + :rows) AS g"
    )
    return await seeded_plus(
        tmp_path_factory, "pgcopy_big", lambda conn: conn.execute(bulk, {"rows": BULK_ROWS})
    )


async def seeded_plus(
    tmp_path_factory: pytest.TempPathFactory, name: str,
    add: Callable[[AsyncConnection], Awaitable[object]],
) -> Database:
    """A seeded PostgreSQL database of its own, with ``add``'s rows on top."""
    url = await recreate_postgres_database(name)
    database = await build_database(
        "postgresql", tmp_path_factory.mktemp(name), SEEDED_USERS, SEED, url=url
    )
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await add(conn)
        USERS[:] = [await reflected(engine)]  # for query_of, whichever test runs first
    finally:
        await engine.dispose()
    return database


@pytest.fixture(scope="module")
async def engine(hostile: Database) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(hostile.url)
    yield engine
    await engine.dispose()


async def copied(engine: AsyncEngine, query: ExportQuery, fmt: str, chunk_bytes: int = 65536
                 ) -> list[Block]:
    async with snapshot(engine) as conn:
        blocks = copy_blocks(conn, query, FORMATS[fmt], chunk_bytes=chunk_bytes)
        return [block async for block in blocks]


async def piped(engine: AsyncEngine, database: Database, query: ExportQuery, fmt: str) -> bytes:
    """What the row pipeline gives for the same export."""
    chunks = open_export(engine, query, FORMATS[fmt], database.settings())
    return b"".join([chunk async for chunk in chunks])


def framed(fmt: str, query: ExportQuery, blocks: list[Block]) -> bytes:
    """Blocks with what an encoder adds around them: the CSV header, the JSON brackets."""
    datas = [data for _, data in blocks]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerow(query.fields)
        return out.getvalue().encode() + b"".join(datas)
    if fmt == "ndjson":
        return b"".join(datas)
    return b"[\n" + b",\n".join(datas) + b"\n]\n" if datas else b"[]\n"


def rows_of_export(fmt: str, data: bytes) -> int:
    if fmt == "json":
        return len(json.loads(data))
    return rows_in(fmt, data) - (fmt == "csv")  # the header


def rows_in(fmt: str, data: bytes) -> int:
    """Rows in one block's bytes."""
    if fmt == "csv":
        return len(list(csv.reader(io.StringIO(data.decode(), newline=""))))
    if fmt == "ndjson":
        return len(data.splitlines())
    return len(json.loads(b"[" + data + b"]"))


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "json"])
async def test_hostile_rows_copy_out_as_the_golden_bytes(engine: AsyncEngine, fmt: str) -> None:
    query = query_of(f"after_id={GOLDEN_AFTER_ID}&limit=4")
    golden = {"csv": GOLDEN_CSV, "ndjson": GOLDEN_NDJSON, "json": GOLDEN_JSON}[fmt]
    assert framed(fmt, query, await copied(engine, query, fmt)) == golden


@pytest.mark.parametrize("fields", FIELD_SETS)
@pytest.mark.parametrize("fmt", ["csv", "ndjson", "json"])
async def test_copy_gives_the_row_pipelines_bytes_for_any_fields(
    engine: AsyncEngine, hostile: Database, fmt: str, fields: str
) -> None:
    query = query_of(f"after_id=2900&fields={fields}" if fields else "after_id=2900")
    blocks = await copied(engine, query, fmt)
    assert framed(fmt, query, blocks) == await piped(engine, hostile, query, fmt)
    assert sum(rows for rows, _ in blocks) == SEEDED_USERS - 2900 + 4 + len(EXTRA_ROWS)


@pytest.mark.parametrize("filters", FILTERS)
@pytest.mark.parametrize("fmt", ["csv", "ndjson", "json"])
async def test_copy_gives_the_row_pipelines_bytes_for_any_filters(
    engine: AsyncEngine, hostile: Database, fmt: str, filters: str
) -> None:
    query = query_of(filters)
    blocks = await copied(engine, query, fmt)
    expected = await piped(engine, hostile, query, fmt)
    assert framed(fmt, query, blocks) == expected
    assert sum(rows for rows, _ in blocks) == rows_of_export(fmt, expected)


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "json"])
async def test_every_block_holds_whole_rows_and_says_how_many(big: Database, fmt: str) -> None:
    engine = create_engine(big.url)
    try:
        blocks = await copied(engine, query_of("after_id=2000&limit=20000"), fmt, chunk_bytes=4096)
    finally:
        await engine.dispose()
    assert len(blocks) > 10
    for rows, data in blocks:
        assert rows > 0
        assert rows_in(fmt, data) == rows
    assert sum(rows for rows, _ in blocks) == 20000


async def test_blocks_are_about_chunk_bytes_after_a_quick_first_one(
    engine: AsyncEngine,
) -> None:
    blocks = await copied(engine, query_of(""), "csv", chunk_bytes=32768)
    assert all(len(data) >= 32768 for _, data in blocks[1:-1])
    assert all(len(data) < 2 * 32768 + 256 * 1024 for _, data in blocks)


async def test_an_export_with_no_rows_gives_no_blocks(engine: AsyncEngine) -> None:
    for fmt in ("csv", "ndjson", "json"):
        assert await copied(engine, query_of("limit=0"), fmt) == []


def test_filter_values_are_bound_as_parameters_not_pasted_into_the_sql(
    engine: AsyncEngine,
) -> None:
    query = query_of("country=QX,QY&plan=enterprise&created_from=1999-12-31&after_id=123456789")
    for fmt in ("csv", "json"):
        statement = DriverStatement(copy_statement(query, FORMATS[fmt]), asyncpg_dialect())
        sql, args = statement.sql, statement.arguments()
        for value in ("QX", "QY", "enterprise", "1999", "123456789"):
            assert value not in sql
        assert {"QX", "QY", "enterprise", 123456789} <= set(args)
        assert at("1999-12-31T00:00:00") in args


async def test_copy_reads_the_snapshot_of_the_export_transaction(hostile: Database) -> None:
    engine = create_engine(hostile.url)
    newcomer = dict(EXTRA_ROWS[-1], id=950000, email="newcomer@example.com")
    try:
        async with snapshot(engine) as conn:
            before = await copied_in(conn, query_of("after_id=900000&fields=id"))
            async with engine.begin() as writer:
                await writer.execute(insert(users), [newcomer])
            assert await copied_in(conn, query_of("after_id=900000&fields=id")) == before
            read_only = (await conn.execute(text("SHOW transaction_read_only"))).scalar_one()
            assert read_only == "on"
    finally:
        async with engine.begin() as writer:
            await writer.execute(users.delete().where(users.c.id == 950000))
        await engine.dispose()
    assert b"950000" not in before


async def copied_in(conn: Any, query: ExportQuery) -> bytes:
    blocks = copy_blocks(conn, query, FORMATS["csv"], chunk_bytes=1)
    return b"".join([data async for _, data in blocks])


async def activity(pid: int, column: str) -> str | None:
    """What pg_stat_activity says of a backend (``column`` is SQL), seen from elsewhere."""
    admin = await asyncpg.connect(postgres_url().replace("postgresql+asyncpg", "postgresql"))
    try:
        return await admin.fetchval(  # type: ignore[no-any-return]
            f"SELECT {column} FROM pg_stat_activity WHERE pid = $1", pid
        )
    finally:
        await admin.close()


async def backend_wait(pid: int) -> str | None:
    return await activity(pid, "wait_event_type || ': ' || wait_event")


async def backend_state(pid: int) -> str | None:
    return await activity(pid, "state || ': ' || query")


async def test_a_reader_that_stops_reading_holds_the_copy_back_at_the_server(
    big: Database,
) -> None:
    engine = create_engine(big.url, pool_size=1, max_overflow=0)
    try:
        async with snapshot(engine) as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            blocks = copy_blocks(conn, query_of(""), FORMATS["csv"], chunk_bytes=65536)
            async with aclosing(blocks):
                await anext(blocks)
                await asyncio.sleep(0.5)
                assert await backend_wait(pid) == "Client: ClientWrite"
                rows = sum([rows async for rows, _ in blocks])
        assert rows > BULK_ROWS
    finally:
        await engine.dispose()


@pytest.mark.parametrize("reader_pause", [0, 0.2], ids=["reader-keeping-up", "reader-behind"])
@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_closing_early_cancels_the_copy_and_the_connection_serves_the_next_export(
    big: Database, fmt: str, reader_pause: float
) -> None:
    engine = create_engine(big.url, pool_size=1, max_overflow=0)  # the next export reuses it
    try:
        async with snapshot(engine) as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            blocks = copy_blocks(conn, query_of(""), FORMATS[fmt], chunk_bytes=65536)
            await anext(blocks)
            await anext(blocks)
            await asyncio.sleep(reader_pause)  # behind: the read-ahead is full, COPY waits
            started = time.monotonic()
            await blocks.aclose()
            closed_in = time.monotonic() - started
        assert closed_in < 0.5
        state = await backend_state(pid)
        assert state is not None and state.startswith("idle:"), state
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() == pid
        blocks_after = await copied(engine, query_of("after_id=900000&limit=10"), fmt)
        assert sum(rows for rows, _ in blocks_after) == 10
    finally:
        await engine.dispose()


async def test_a_disconnect_while_the_database_sends_nothing_closes_the_connection(
    big: Database,
) -> None:
    engine = create_engine(big.url, pool_size=1, max_overflow=0)
    locker = create_engine(big.url)
    try:
        async with locker.connect() as lock:
            await lock.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
            with pytest.raises(asyncio.CancelledError):  # rolls the snapshot back
                async with snapshot(engine) as conn:
                    pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                    blocks = copy_blocks(conn, query_of(""), FORMATS["csv"], chunk_bytes=65536)
                    first = asyncio.create_task(anext(blocks))  # the COPY waits for the lock
                    await asyncio.sleep(0.2)
                    first.cancel()  # as a server cancels the body of a client that left
                    started = time.monotonic()
                    try:
                        await first
                    finally:
                        closed_in = time.monotonic() - started
            await lock.rollback()
        assert closed_in < 1
        blocks_after = await copied(engine, query_of("after_id=900000&limit=10"), "csv")
        assert sum(rows for rows, _ in blocks_after) == 10
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid
        for _ in range(50):  # the old backend ends once it writes to the closed socket
            if await backend_state(pid) is None:
                break
            await asyncio.sleep(0.1)
        assert await backend_state(pid) is None
    finally:
        await engine.dispose()
        await locker.dispose()


async def test_a_terminated_backend_raises_out_of_the_blocks_and_the_next_export_works(
    big: Database,
) -> None:
    engine = create_engine(big.url, pool_size=1, max_overflow=0)
    received = 0
    try:
        with pytest.raises(asyncpg.PostgresConnectionError):  # its message varies
            async with snapshot(engine) as conn:
                pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                blocks = copy_blocks(conn, query_of(""), FORMATS["csv"], chunk_bytes=65536)
                received += (await anext(blocks))[0]
                await terminate(pid)
                async for rows, _ in blocks:
                    received += rows
        assert 0 < received < SEEDED_USERS + BULK_ROWS
        blocks_after = await copied(engine, query_of("after_id=900000&limit=10"), "csv")
        assert sum(rows for rows, _ in blocks_after) == 10
    finally:
        await engine.dispose()


async def terminate(pid: int) -> None:
    admin = await asyncpg.connect(postgres_url().replace("postgresql+asyncpg", "postgresql"))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    finally:
        await admin.close()
    await asyncio.sleep(0.1)


# Several readers: ranges of a few rows, so that every export crosses many of them.
async def ranged(engine: AsyncEngine, query: ExportQuery, fmt: str, range_rows: int = 7,
                 readers: int = 2) -> list[Block]:
    async with shared_snapshot(engine, readers + 1) as (planner, *renderers):
        ranges = copy_ranges(planner, renderers, query, FORMATS[fmt], chunk_bytes=4096,
                             range_rows=range_rows)
        return [block async for block in ranges]


@pytest.mark.parametrize("filters", FILTERS + ["after_id=2900", "after_id=2900&limit=8"])
@pytest.mark.parametrize("fmt", ["csv", "ndjson", "json"])
async def test_ranges_over_several_connections_give_the_single_copys_bytes(
    engine: AsyncEngine, fmt: str, filters: str
) -> None:
    query = query_of(filters)
    single = await copied(engine, query, fmt)
    blocks = await ranged(engine, query, fmt)
    assert framed(fmt, query, blocks) == framed(fmt, query, single)
    assert sum(rows for rows, _ in blocks) == sum(rows for rows, _ in single)


async def test_every_reader_reads_the_snapshot_of_the_first(
    hostile: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(hostile.url)
    leaving = dict(EXTRA_ROWS[-1], id=950001, email="leaving@example.com")
    query = query_of("after_id=2900&fields=id,email")
    opened = 0

    @asynccontextmanager
    async def commit_between(engine_: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        """The snapshot of each connection, with a commit after the first one's began."""
        nonlocal opened
        opened += 1
        if opened == 2:
            async with engine.begin() as writer:
                await writer.execute(users.update().where(users.c.id == 2950)
                                     .values(email="changed@example.com"))
                await writer.execute(users.delete().where(users.c.id == 950001))
        async with snapshot(engine_) as conn:
            yield conn

    async with engine.connect() as conn:
        email = (await conn.execute(select(users.c.email).where(users.c.id == 2950))).scalar()
    try:
        async with engine.begin() as writer:
            await writer.execute(insert(users), [leaving])
        monkeypatch.setattr(db, "snapshot", commit_between)
        async with db.shared_snapshot(engine, 3) as (planner, *renderers):
            ranges = copy_ranges(planner, renderers, query, FORMATS["csv"], chunk_bytes=1,
                                 range_rows=3)
            data = b"".join([data async for _, data in ranges])
            read_only = [
                (await conn.execute(text("SHOW transaction_read_only"))).scalar_one()
                for conn in (planner, *renderers)
            ]
        async with snapshot(engine) as conn:
            now = await copied_in(conn, query)
    finally:
        async with engine.begin() as writer:
            await writer.execute(users.update().where(users.c.id == 2950)
                                 .values(email=email))
            await writer.execute(users.delete().where(users.c.id == 950001))
        await engine.dispose()
    assert opened == 3
    assert b"changed@example.com" not in data and b"leaving@example.com" in data
    assert data.count(b"\r\n") == SEEDED_USERS - 2900 + 4 + len(EXTRA_ROWS) + 1
    assert b"changed@example.com" in now and b"leaving@example.com" not in now
    assert read_only == ["on", "on", "on"]


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_closing_ranges_early_leaves_every_connection_idle_and_reusable(
    big: Database, fmt: str
) -> None:
    engine = create_engine(big.url, pool_size=3, max_overflow=0)  # the next export reuses them
    try:
        async with shared_snapshot(engine, 3) as connections:
            pids = [(await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                    for conn in connections]
            planner, *renderers = connections
            blocks = copy_ranges(planner, renderers, query_of(""), FORMATS[fmt], chunk_bytes=65536,
                                 range_rows=20_000)
            await anext(blocks)
            await anext(blocks)
            started = time.monotonic()
            await blocks.aclose()
            closed_in = time.monotonic() - started
        assert closed_in < 2
        for pid in pids:
            state = await backend_state(pid)
            assert state is not None and state.startswith("idle:"), state
        blocks_after = await ranged(engine, query_of("after_id=900000&limit=10"), fmt, 3)
        assert sum(rows for rows, _ in blocks_after) == 10
        async with engine.connect() as conn:  # still the same three: none was closed
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() in pids
    finally:
        await engine.dispose()


async def test_a_terminated_planner_raises_its_own_error_not_the_rollbacks(
    big: Database,
) -> None:
    engine = create_engine(big.url)
    try:
        with pytest.raises(Exception) as raised:
            async with shared_snapshot(engine, 3) as (planner, *renderers):
                pid = (await planner.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                blocks = copy_ranges(planner, renderers, query_of(""), FORMATS["csv"],
                                     chunk_bytes=65536, range_rows=5_000)
                async with aclosing(blocks):
                    await anext(blocks)
                    await terminate(pid)
                    async for _ in blocks:
                        pass
        assert "rollback" not in str(raised.value), raised.value
        assert "terminat" in str(raised.value) or "closed" in str(raised.value), raised.value
        blocks_after = await ranged(engine, query_of("after_id=900000&limit=10"), "csv", 3)
        assert sum(rows for rows, _ in blocks_after) == 10
    finally:
        await engine.dispose()


async def test_a_slow_reader_on_a_server_that_ends_idle_transactions_gets_every_row(
    big: Database,
) -> None:
    name = make_url(big.url).database
    admin = create_engine(big.url)
    async with admin.connect() as conn:
        await conn.execute(text(f'ALTER DATABASE "{name}" '
                                "SET idle_in_transaction_session_timeout = '500ms'"))
        await conn.commit()
    engine = create_engine(big.url)  # new connections: the setting applies to them
    try:
        chunks = export_chunks(engine, query_of(""), FORMATS["csv"], batch_rows=5_000,
                               chunk_bytes=65536, readers=2)
        async with aclosing(chunks):
            body = [await anext(chunks)]
            await asyncio.sleep(1.5)  # past the timeout: a range reader would sit idle
            body += [chunk async for chunk in chunks]
        rows = rows_of_export("csv", b"".join(body))
        assert rows == BULK_ROWS + SEEDED_USERS + 4  # the golden rows too
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f'ALTER DATABASE "{name}" '
                                    "RESET idle_in_transaction_session_timeout"))
            await conn.commit()
        await admin.dispose()


class Broken(FORMATS["ndjson"]):  # type: ignore[misc,valid-type]
    """A format whose COPY handling fails: a bug in a new format class."""

    @staticmethod
    def copy_rows(chunk: bytes) -> Block:
        raise ValueError("a broken format")


@pytest.mark.parametrize("limit", [3, 5000], ids=["one-message", "many-messages"])
async def test_a_failing_format_fails_the_export_and_the_connection_is_not_left_hanging(
    engine: AsyncEngine, limit: int
) -> None:
    """asyncpg cancels a COPY whose output handler raises, and makes the next statement
    wait for the server to acknowledge that; a COPY already over when the handler raised
    (a small export arrives in one read) is acknowledged never: the snapshot's rollback
    waited forever. Found by a mutant (docs/mutation.md)."""

    async def export() -> None:
        async with snapshot(engine) as conn:
            blocks = copy_blocks(conn, query_of(f"limit={limit}"), Broken, chunk_bytes=65536)
            [_ async for _ in blocks]

    with pytest.raises(ValueError, match="a broken format"):
        await asyncio.wait_for(export(), 10)
    assert sum(rows for rows, _ in await copied(engine, query_of("limit=10"), "csv")) == 10


async def test_a_failing_format_fails_ranged_exports_and_leaves_no_reader_hanging(
    engine: AsyncEngine,
) -> None:
    async def export() -> None:
        async with shared_snapshot(engine, 3) as (planner, *renderers):
            ranges = copy_ranges(planner, renderers, query_of("limit=40"), Broken,
                                 chunk_bytes=4096, range_rows=7)
            [_ async for _ in ranges]

    with pytest.raises(ValueError, match="a broken format"):
        await asyncio.wait_for(export(), 10)
    assert sum(rows for rows, _ in await ranged(engine, query_of("limit=40"), "csv")) == 40
