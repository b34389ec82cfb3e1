"""The service's own state lives apart from the user's tables: a database the service did
not create is migrated without a table of the user's being touched, the demo is seeded only
where it cannot clash, and an earlier version's jobs move out of the user's schema."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from exporter import models
from exporter.app import create_app
from exporter.config import Settings
from exporter.db import create_engine, migrate
from exporter.state import STATE_FILE_NAME, alembic_options, export_jobs, metadata
from tests.conftest import SEED, Database, app_client, build_database, scratch_postgres_url

OWN_USERS = [
    'CREATE TABLE users (user_id TEXT PRIMARY KEY, "Display Name" TEXT)',
    "INSERT INTO users VALUES ('u-1', 'Zoë O''Brien')",
]
SMALL_SEED = ["--users", "10", "--images", "1", "--large-file-mb", "0"]


@pytest.fixture(params=["sqlite", "postgresql"])
async def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """An empty database the service did not create: the user's SQLite file (not named
    like the service's default), or a new PostgreSQL database."""
    if request.param == "postgresql":
        url = await scratch_postgres_url("state")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    return Database(request.param, url, tmp_path / "data")


def exporter(database: Database, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args], env=database.env(), capture_output=True,
        text=True, timeout=120,
    )


@asynccontextmanager
async def plain_engine(database: Database) -> AsyncIterator[AsyncEngine]:
    """An engine that knows nothing of the service: as the user's own application."""
    engine = create_async_engine(database.url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def run_sql(database: Database, statements: list[str]) -> None:
    async with plain_engine(database) as engine, engine.begin() as conn:
        for statement in statements:
            await conn.exec_driver_sql(statement)


def sqlite_file(database: Database) -> Path:
    path = make_url(database.url).database
    assert path
    return Path(path)


async def user_schema(database: Database) -> list[Any]:
    """Everything of the user's schema: on SQLite the main database's dump, on PostgreSQL
    the tables and columns of ``public`` and every row of them."""
    if database.backend == "sqlite":
        with sqlite3.connect(sqlite_file(database)) as conn:
            return list(conn.iterdump())
    async with plain_engine(database) as engine, engine.connect() as conn:
        columns = (await conn.execute(text(
            "SELECT table_name, column_name, data_type, is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position"
        ))).all()
        rows = []
        for name in sorted({column[0] for column in columns}):
            rows += (await conn.execute(text(f'SELECT * FROM public."{name}"'))).all()
        return [*columns, *rows]


async def user_tables(database: Database) -> list[str]:
    """The tables of the user's schema: SQLite's main database, PostgreSQL's ``public``."""
    if database.backend == "sqlite":
        with sqlite3.connect(sqlite_file(database)) as conn:
            return [name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )]
    async with plain_engine(database) as engine, engine.connect() as conn:
        return list((await conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ))).scalars())


async def demo_rows(database: Database) -> list[Any]:
    async with plain_engine(database) as engine, engine.connect() as conn:
        return [(await conn.execute(select(table).order_by(table.c.id))).all()
                for table in (models.images, models.users)]


@asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(create_app(settings)) as client:
        yield client


async def finished_job(client: httpx.AsyncClient, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (job := (await client.get(location)).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"the job never finished: {job}"
        await asyncio.sleep(0.05)
    return job


# A database of the user's own.

async def test_migrate_leaves_the_users_own_users_table_and_its_row_untouched(
    fresh: Database,
) -> None:
    await run_sql(fresh, OWN_USERS)
    before = await user_schema(fresh)
    result = exporter(fresh, "migrate")
    assert result.returncode == 0, result.stderr
    assert await user_schema(fresh) == before
    assert await user_tables(fresh) == ["users"]
    async with service(fresh.settings(run_worker=False)) as client:
        assert (await client.get("/ready")).status_code == 200
        posted = await client.post("/jobs", json={"format": "csv"})
        assert posted.status_code == 202, posted.text
        job = (await client.get(posted.headers["location"])).json()
        assert job["status"] == "queued"
        assert [listed["id"] for listed in (await client.get("/jobs")).json()] == [job["id"]]
        schedule = await client.post(
            "/schedules", json={"cron": "0 2 * * *", "job": {"format": "ndjson"}}
        )
        assert schedule.status_code == 201, schedule.text
    assert await user_schema(fresh) == before
    assert await user_tables(fresh) == ["users"], "the user's file holds no table of ours"


def test_migrate_attaches_the_state_file_from_the_data_dir_and_puts_both_files_in_wal(
    tmp_path: Path,
) -> None:
    own = Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", tmp_path / "data")
    with sqlite3.connect(tmp_path / "app.db") as conn:
        for statement in OWN_USERS:
            conn.execute(statement)
    conn.close()
    assert exporter(own, "migrate").returncode == 0
    with sqlite3.connect(own.data_dir / STATE_FILE_NAME) as state:
        names = {name for (name,) in state.execute("SELECT name FROM sqlite_master")}
        assert {"export_jobs", "schedules", "alembic_version"} <= names
        assert state.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    state.close()
    with sqlite3.connect(tmp_path / "app.db") as user:
        # A lasting setting of the user's file: their writers never wait for our readers.
        assert user.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    user.close()


def test_the_state_file_is_attached_safely_whatever_its_directory_is_called(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "it's \"odd\"; DETACH exporter; --"
    odd = Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", data_dir)
    result = exporter(odd, "migrate")
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(data_dir / STATE_FILE_NAME) as state:
        assert state.execute("SELECT version_num FROM alembic_version").fetchone()
    state.close()


def test_a_sqlite_file_without_a_state_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="state_path"):
        create_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")


async def test_autogenerate_compares_the_state_alone_and_finds_nothing_to_change(
    fresh: Database,
) -> None:
    await run_sql(fresh, OWN_USERS)
    engine = fresh.engine()
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            changes = await conn.run_sync(lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts=alembic_options()), metadata
            ))
    finally:
        await engine.dispose()
    assert changes == [], "a diff here would be a migration touching the user's tables"


@pytest.mark.parametrize("flags", [[], ["--reset"]])
async def test_seed_refuses_a_users_table_that_is_not_the_demos_and_writes_nothing(
    fresh: Database, flags: list[str],
) -> None:
    await run_sql(fresh, OWN_USERS)
    before = await user_schema(fresh)
    result = exporter(fresh, "seed", *SMALL_SEED, *flags)
    assert result.returncode == 1
    assert "exporter seed: this database already has its own table users" in result.stderr
    assert "user_id, Display Name" in result.stderr
    assert "Use another database for the demo" in result.stderr
    assert "Traceback" not in result.stderr
    assert await user_schema(fresh) == before
    assert await user_tables(fresh) == ["users"]
    assert not (fresh.data_dir / "images").exists()
    assert not (fresh.data_dir / "files").exists()


# A database seeded with the demo.

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_job_on_the_seeded_demo_leaves_only_the_demo_tables_in_the_users_schema(
    backend: str, tmp_path: Path,
) -> None:
    url = await scratch_postgres_url("state_seeded") if backend == "postgresql" else None
    demo = await build_database(backend, tmp_path, 300, SEED, url)
    assert await user_tables(demo) == ["images", "users"]
    settings = demo.settings(worker_poll_seconds=0.05, job_progress_seconds=0.05)
    async with service(settings) as client:
        posted = await client.post("/jobs", json={"format": "csv"})
        job = await finished_job(client, posted.headers["location"])
        assert job["status"] == "succeeded", job
        download = await client.get(job["file"]["url"])
        assert download.content == (await client.get("/exports/users.csv")).content
    assert await user_tables(demo) == ["images", "users"]


# A database an earlier version made: the state among the user's tables.

JOB_ID, SCHEDULE_ID = "a" * 32, "b" * 32
JOB_FILE = b"id,email\r\n1,one@example.com\r\n"


def legacy_statements(backend: str) -> list[str]:
    """What revisions 0001 and 0002 of the earlier migrations left, and a job and a
    schedule in it."""
    at = "TIMESTAMP WITH TIME ZONE" if backend == "postgresql" else "DATETIME"
    moment = "'2026-01-01 12:00:00+00'" if backend == "postgresql" else \
        "'2026-01-01 12:00:00.000000'"
    later = "'2099-01-01 00:00:00+00'" if backend == "postgresql" else \
        "'2099-01-01 00:00:00.000000'"
    digest = hashlib.sha256(JOB_FILE).hexdigest()
    return [
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
        "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",
        "INSERT INTO alembic_version VALUES ('0002')",
        f"""CREATE TABLE schedules (
            id VARCHAR(32) NOT NULL PRIMARY KEY, cron VARCHAR(255) NOT NULL,
            timezone VARCHAR(64) NOT NULL, job JSON NOT NULL, keep_last INTEGER NOT NULL,
            next_run_at {at} NOT NULL, last_run_at {at}, created_at {at} NOT NULL)""",
        "CREATE INDEX ix_schedules_next_run_at ON schedules (next_run_at)",
        f"""CREATE TABLE export_jobs (
            id VARCHAR(32) NOT NULL PRIMARY KEY, format VARCHAR(16) NOT NULL, fields JSON,
            filters JSON NOT NULL, compression VARCHAR(16) NOT NULL,
            status VARCHAR(16) NOT NULL, rows_written BIGINT DEFAULT '0' NOT NULL,
            total_rows BIGINT, bytes_written BIGINT DEFAULT '0' NOT NULL,
            revision INTEGER DEFAULT '0' NOT NULL, created_at {at} NOT NULL,
            started_at {at}, finished_at {at}, expires_at {at}, error TEXT,
            file_name VARCHAR(255), file_path VARCHAR(255), file_size BIGINT,
            row_count BIGINT, sha256 VARCHAR(64), schedule_id VARCHAR(32),
            scheduled_for {at}, lease_owner VARCHAR(200), lease_expires_at {at},
            heartbeat_at {at}, attempts INTEGER DEFAULT '0' NOT NULL,
            cancel_requested BOOLEAN DEFAULT FALSE NOT NULL,
            CONSTRAINT uq_export_jobs_schedule_tick UNIQUE (schedule_id, scheduled_for))""",
        "CREATE INDEX ix_export_jobs_status_created_at ON export_jobs (status, created_at)",
        "CREATE INDEX ix_export_jobs_created_at ON export_jobs (created_at)",
        f"""INSERT INTO schedules VALUES ('{SCHEDULE_ID}', '0 2 * * *', 'Europe/Berlin',
            '{{"format": "ndjson", "fields": null, "filters": {{}}, "compression": "gzip"}}',
            7, {later}, NULL, {moment})""",
        f"""INSERT INTO export_jobs (id, format, fields, filters, compression, status,
            rows_written, total_rows, bytes_written, revision, created_at, started_at,
            finished_at, expires_at, file_name, file_path, file_size, row_count, sha256,
            attempts, cancel_requested)
            VALUES ('{JOB_ID}', 'csv', '["id", "email"]', '{{"limit": "1"}}', 'none',
            'succeeded', 1, 1, {len(JOB_FILE)}, 4, {moment}, {moment}, {moment}, {later},
            'users-{JOB_ID}.csv', '{JOB_ID}-1.csv', {len(JOB_FILE)}, 1, '{digest}', 1,
            FALSE)""",
        "INSERT INTO images VALUES (1, 'a.png', 'image/png', 1, 'x', 'images/a.png')",
    ]


async def test_migrate_moves_an_earlier_versions_jobs_out_of_the_users_schema(
    fresh: Database,
) -> None:
    async with plain_engine(fresh) as engine, engine.begin() as conn:
        await conn.run_sync(models.metadata.create_all)  # the demo, as 0001 made it
    await run_sql(fresh, legacy_statements(fresh.backend))
    (fresh.data_dir / "jobs").mkdir(parents=True)
    (fresh.data_dir / "jobs" / f"{JOB_ID}-1.csv").write_bytes(JOB_FILE)
    async with service(fresh.settings(run_worker=False)) as client:
        ready = (await client.get("/ready")).json()
        assert ready["error"] == "schema_not_migrated", "the state is not migrated yet"

    demo = await demo_rows(fresh)
    result = exporter(fresh, "migrate")
    assert result.returncode == 0, result.stderr
    assert await user_tables(fresh) == ["images", "users"]
    assert await demo_rows(fresh) == demo
    async with service(fresh.settings(run_worker=False)) as client:
        assert (await client.get("/ready")).status_code == 200
        job = (await client.get(f"/jobs/{JOB_ID}")).json()
        assert (job["status"], job["fields"], job["filters"]) == (
            "succeeded", ["id", "email"], {"limit": "1"}
        )
        assert job["created_at"] == "2026-01-01T12:00:00Z"
        assert job["file"]["sha256"] == hashlib.sha256(JOB_FILE).hexdigest()
        assert (await client.get(f"/jobs/{JOB_ID}/download")).content == JOB_FILE
        schedule = (await client.get(f"/schedules/{SCHEDULE_ID}")).json()
        assert (schedule["cron"], schedule["timezone"], schedule["job"]["compression"]) == (
            "0 2 * * *", "Europe/Berlin", "gzip"
        )
    engine = fresh.engine()
    try:
        async with engine.connect() as conn:
            moved = (await conn.execute(select(export_jobs.c.table_name))).scalars().all()
    finally:
        await engine.dispose()
    assert moved == ["users"], "jobs before tables were chosen exported the demo's users"

    again = exporter(fresh, "migrate")
    assert again.returncode == 0, again.stderr
    assert await user_tables(fresh) == ["images", "users"]


@pytest.mark.parametrize("version", ["ae1027a6acf", "0002"])
async def test_migrate_leaves_another_applications_alembic_history_and_tables_alone(
    fresh: Database, version: str,
) -> None:
    await run_sql(fresh, [
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
        f"INSERT INTO alembic_version VALUES ('{version}')",
        "CREATE TABLE schedules (id INTEGER PRIMARY KEY, shift TEXT)",
        "INSERT INTO schedules VALUES (1, 'night')",
        "CREATE TABLE export_jobs (id INTEGER PRIMARY KEY, target TEXT)",
        "INSERT INTO export_jobs VALUES (1, 'warehouse')",
    ])
    before = await user_schema(fresh)
    result = exporter(fresh, "migrate")
    assert result.returncode == 0, result.stderr
    assert await user_schema(fresh) == before
