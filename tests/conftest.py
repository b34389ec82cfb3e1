"""Shared fixtures: a small seeded database per backend, in-process and real-server clients.

SQLite always runs. PostgreSQL runs when ``EXPORTER_TEST_DATABASE_URL`` names a scratch
database (``.ci/run`` creates one); the fixtures drop and rebuild its tables.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from exporter.seed import SeedPlan, seed_database
from fastapi import FastAPI
from sqlalchemy import insert, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from exporter import jobs, models
from exporter.app import create_app
from exporter.catalog import Table, reflect
from exporter.config import Settings, load_settings
from exporter.db import create_engine, downgrade_all, migrate
from exporter.jobs import JobRequest
from exporter.models import users
from exporter.params import parse_query
from exporter.queries import ExportQuery
from exporter.state import STATE_FILE_NAME
from exporter.worker import Worker

PG_URL_VARIABLE = "EXPORTER_TEST_DATABASE_URL"
SEEDED_USERS = 3000
SEED = 7
GOLDEN_AFTER_ID = 900000

API_KEYS = ("key-one-7Hq2xLp9", "key-two-Rv4mWz8c")  # two keys a test may set


async def reflected(engine: AsyncEngine, name: str = "users") -> Table:
    """A table as the catalog reflects it from the database."""
    async with engine.connect() as conn:
        return {table.name: table for table in await reflect(conn)}[name]


def query_for(table: Table, raw: str = "") -> ExportQuery:
    """An export query from a query string, as the route parses it."""
    return parse_query(table, parse_qsl(raw, keep_blank_values=True))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Hand-made hostile rows, appended after the seeded ones; tests/test_exports.py spells out
# the exact bytes every format must give for them.
GOLDEN_ROWS = [
    dict(id=900001, email="zoe@example.com", full_name='Zoë "Zee" O\'Brien, Jr.', country="DE",
         city="München", plan="pro", is_active=True, lifetime_value=Decimal("12.30"),
         created_at=at("2024-03-01T12:00:00"), last_login_at=at("2024-03-02T08:30:05"),
         bio='Line one\r\nLine "two", with comma\tand tab', avatar_image_id=1),
    dict(id=900002, email="wang@example.com", full_name="王伟 🚀", country="CN", city=None,
         plan="free", is_active=False, lifetime_value=Decimal("0"),
         created_at=at("2024-03-01T12:00:01"), last_login_at=None, bio=None,
         avatar_image_id=None),
    dict(id=900003, email="angstrom@example.com", full_name="Ångström", country="JP",
         city="東京", plan="enterprise", is_active=True,
         lifetime_value=Decimal("9999999999.99"), created_at=at("2025-12-31T23:59:59"),
         last_login_at=at("2026-01-01T00:00:00"), bio="ends with LF\n", avatar_image_id=2),
    dict(id=900004, email="pad@example.com", full_name=" padded ", country="US", city="Austin",
         plan="pro", is_active=True, lifetime_value=Decimal("0.05"),
         created_at=at("2024-03-01T11:59:59"), last_login_at=None, bio="",
         avatar_image_id=None),
]
TOTAL_ROWS = SEEDED_USERS + len(GOLDEN_ROWS)


@dataclass(frozen=True)
class Database:
    backend: str
    url: str
    data_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess (``exporter serve`` / ``exporter export``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
        env.update(EXPORTER_DATABASE_URL=self.url, EXPORTER_DATA_DIR=str(self.data_dir))
        env.update(extra)
        return env

    def settings(self, **overrides: object) -> Settings:
        return load_settings(**{"database_url": self.url, "data_dir": self.data_dir, **overrides})

    @property
    def state_path(self) -> Path:
        """Where SQLite keeps the service's state, as the service would have it."""
        return self.settings().state_database_path

    def engine(self, **options: int) -> AsyncEngine:
        """An engine as the service makes one: on SQLite, with its state attached."""
        return create_engine(self.url, state_path=self.state_path, **options)


REQUIRE_POSTGRES_VARIABLE = "EXPORTER_TEST_REQUIRE_POSTGRES"  # .ci/run sets it


def pytest_sessionstart(session: pytest.Session) -> None:
    """CI must run the PostgreSQL half: without its database the run stops at once."""
    if os.environ.get(REQUIRE_POSTGRES_VARIABLE) and not os.environ.get(PG_URL_VARIABLE):
        pytest.exit(f"{REQUIRE_POSTGRES_VARIABLE} is set but {PG_URL_VARIABLE} is not: the "
                    "PostgreSQL half of the suite would be skipped", returncode=4)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """A local run without PostgreSQL says so last, loudly, with how to run that half."""
    if os.environ.get(PG_URL_VARIABLE):
        return
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if PG_URL_VARIABLE in str(report.longrepr)]
    if skipped:
        terminalreporter.write_sep("!", f"the PostgreSQL half was skipped: {len(skipped)} tests",
                                   yellow=True, bold=True)
        terminalreporter.write_line(
            f"run it with {PG_URL_VARIABLE}=postgresql+asyncpg://postgres@127.0.0.1:5432/"
            "<a scratch database> ./scripts/test (.ci/run makes one and requires it)"
        )


def postgres_url() -> str:
    url = os.environ.get(PG_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_URL_VARIABLE} (set by .ci/run)")
    return url


async def recreate_postgres_database(suffix: str, template: str | None = None) -> str:
    """``<test database>_<suffix>`` made afresh (empty, or a copy of ``template``); its URL.
    Run from the ``postgres`` database: a template database must have no connections."""
    base = make_url(postgres_url())
    name = f"{base.database}_{suffix}"
    admin = create_async_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            copy = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    finally:
        await admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


async def scratch_postgres_url(suffix: str) -> str:
    """A fresh database beside the test one, for tests that need their own data."""
    return await recreate_postgres_database(suffix)


async def build_database(
    backend: str, data_dir: Path, users_count: int, seed: int, url: str | None = None
) -> Database:
    if url is None:
        url = (
            postgres_url() if backend == "postgresql"
            else f"sqlite+aiosqlite:///{data_dir / 'exporter.db'}"
        )
    database = Database(backend, url, data_dir)
    engine = database.engine()
    try:
        if backend == "postgresql":  # afresh: no jobs, and the demo's tables seeded anew
            await downgrade_all(engine)
            async with engine.begin() as conn:
                await conn.run_sync(models.metadata.drop_all)
        plan = SeedPlan(users=users_count, seed=seed, images=4, large_file_bytes=64 * 1024)
        await seed_database(engine, data_dir, plan, progress=lambda _message: None)
        async with engine.begin() as conn:
            await conn.execute(insert(users), GOLDEN_ROWS)
    finally:
        await engine.dispose()
    return database


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> Database:
    data_dir = tmp_path_factory.mktemp(f"data-{request.param}")
    return await build_database(request.param, data_dir, SEEDED_USERS, SEED)


@pytest.fixture(scope="session")
async def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> Database:
    """The SQLite twin of ``database``, for comparing backends."""
    return await build_database(
        "sqlite", tmp_path_factory.mktemp("data-sqlite-twin"), SEEDED_USERS, SEED
    )


@pytest.fixture(scope="session")
async def client(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    """In-process client: fine for bodies and headers, blind to streaming (it buffers).
    No job worker: jobs tests run their own servers, on their own databases."""
    app = create_app(database.settings(run_worker=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as c:
            yield c


# Jobs' own database, for the tests of leases, schedules and the worker (test_leases,
# test_schedules, test_worker): the service's state and the demo's tables, empty. It does
# not need the seeded ``database``, whose users these tests never read: a mutant of leases.py
# then runs its tests without seeding one.

LEASE = timedelta(seconds=30)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def empty_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Database:
    """Migrated, with the demo's tables empty, once per test module and backend: its tests
    fill and race it."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    data_dir = tmp_path_factory.mktemp(f"units-{request.param}")
    if request.param == "postgresql":
        url = await scratch_postgres_url(f"units_{module}")
    else:
        url = f"sqlite+aiosqlite:///{data_dir / 'exporter.db'}"
    empty = Database(request.param, url, data_dir)
    engine = empty.engine()
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.run_sync(models.metadata.create_all)
    await engine.dispose()
    return empty


@pytest.fixture
async def engines(empty_database: Database) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """Two engines, as two worker processes would have, on an emptied database."""
    first = empty_database.engine()
    second = empty_database.engine()
    await downgrade_all(first)
    await migrate(first)
    yield first, second
    await first.dispose()
    await second.dispose()


async def queue(engine: AsyncEngine, count: int, now: datetime) -> list[str]:
    """``count`` queued jobs, each created a microsecond after the one before; their ids."""
    spec = JobRequest(format="csv").spec()
    return [(await jobs.create_job(engine, spec, now + timedelta(microseconds=i))).id
            for i in range(count)]


# The worker in-process, on such a database, for the tests of the worker and of the schedules
# it fires (test_worker, test_schedules).

def worker_settings(database: Database, tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(**{
        "database_url": database.url, "data_dir": tmp_path, "worker_poll_seconds": 0.05,
        "job_progress_seconds": 0.05, **overrides,
    })


async def run_worker(
    engine: AsyncEngine, settings: Settings, until: Callable[[Worker], Awaitable[bool]],
    seconds: float = 20,
) -> None:
    """Run a worker until ``until`` holds (failing after ``seconds``)."""
    worker = Worker(engine, settings)
    await worker.start()
    try:
        deadline = time.monotonic() + seconds
        while not await until(worker):
            assert time.monotonic() < deadline, "the worker never got there"
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()


async def finished_by_worker(engine: AsyncEngine, settings: Settings, job_id: str) -> jobs.Job:
    async def finished(_worker: Worker) -> bool:
        return (await jobs.find_job(engine, job_id)).finished

    await run_worker(engine, settings, finished)
    return await jobs.find_job(engine, job_id)


async def clone_database(template: Database, data_dir: Path, suffix: str) -> Database:
    """A copy of a seeded database, for tests whose servers must have it to themselves:
    the SQLite file copied, or a PostgreSQL database made from the template database."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if template.backend == "sqlite":
        # The user's database and the service's state; no WAL once their engine is disposed.
        for database in ("exporter.db", STATE_FILE_NAME):
            for name in (database, f"{database}-wal"):
                if (template.data_dir / name).exists():
                    shutil.copyfile(template.data_dir / name, data_dir / name)
        return Database("sqlite", f"sqlite+aiosqlite:///{data_dir / 'exporter.db'}", data_dir)
    url = await recreate_postgres_database(suffix, template=make_url(template.url).database)
    return Database("postgresql", url, data_dir)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Server:
    url: str
    pid: int  # of the uvicorn process itself, for /proc/<pid>/status and /proc/<pid>/io
    process: subprocess.Popen[bytes] | None = None  # to signal it, and read its exit and log


@contextmanager
def running_server(env: dict[str, str]) -> Iterator[str]:
    """A real ``exporter serve`` under uvicorn on a loopback port; yields its base URL."""
    with serving(env) as server:
        yield server.url


@contextmanager
def serving(env: dict[str, str], host: str = "127.0.0.1") -> Iterator[Server]:
    """``running_server``, telling the process id too; ``host`` is the address it binds
    (the base URL is on loopback, which 0.0.0.0 includes)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "serve", "--host", host, "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"exporter serve did not start:\n{output}")
            time.sleep(0.1)
        yield Server(base_url, process.pid, process)
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it is still there 10 s later."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@asynccontextmanager
async def app_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of ``app``, its lifespan (engine, catalog, worker) running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as client:
            yield client


def _order(i: int) -> str:
    customer = "'O''Brien, \"Ltd\"'" if i % 50 == 0 else f"'customer {i % 17}'"
    total = "NULL" if i % 23 == 0 else f"{i * 37 % 20000 / 100:.2f}"
    return f"({i}, {customer}, {total}, '2024-01-{1 + i // 24:02d} {i % 24:02d}:00:00')"


# A database the service did not create: the user's own tables, a composite key, a view,
# and columns meant to be hidden, made with plain SQL that both backends take.
FOREIGN_ORDERS = 300
FOREIGN_SQL = [
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
    "total NUMERIC(10,2), placed_at TIMESTAMP)",
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, login TEXT NOT NULL, password_hash TEXT, "
    "secret_question TEXT)",
    *(f"CREATE TABLE report_{year} (region TEXT NOT NULL, month INTEGER NOT NULL, "
      "amount NUMERIC(12,2), PRIMARY KEY (region, month))" for year in (2024, 2025)),
    "CREATE TABLE tokens (secret_id TEXT PRIMARY KEY, label TEXT)",
    "CREATE VIEW big_orders AS SELECT id, customer, total FROM orders WHERE total >= 100",
    "INSERT INTO orders VALUES " + ", ".join(
        _order(i) for i in range(1, FOREIGN_ORDERS + 1)
    ),
    "INSERT INTO accounts VALUES " + ", ".join(
        f"({i}, 'login{i}', 'hash{i}', 'pet {i}')" for i in range(1, 21)
    ),
    *(f"INSERT INTO report_{year} VALUES " + ", ".join(
        f"('{region}', {month}, {year - 2000 + month}.50)"
        for region in ("north", "south") for month in range(1, 13)
    ) for year in (2024, 2025)),
    "INSERT INTO tokens VALUES ('s-1', 'one'), ('s-2', 'two'), ('s-3', 'three')",
]


async def build_foreign_database(backend: str, data_dir: Path, suffix: str) -> Database:
    """A fresh database holding ``FOREIGN_SQL``'s tables, then ``exporter migrate`` run on
    it as an operator would; a SQLite file not named like the service's default."""
    if backend == "postgresql":
        url = await scratch_postgres_url(suffix)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite+aiosqlite:///{data_dir / 'shop.db'}"
    database = Database(backend, url, data_dir / "data")
    engine = create_async_engine(url)  # the user's own application: nothing of the service
    try:
        async with engine.begin() as conn:
            for statement in FOREIGN_SQL:
                await conn.exec_driver_sql(statement)
            if backend == "postgresql":  # what autovacuum does, so that row counts are known
                await conn.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()
    subprocess.run([sys.executable, "-m", "exporter", "migrate"], env=database.env(),
                   check=True, capture_output=True, timeout=120)
    return database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def foreign_database(request: pytest.FixtureRequest,
                           tmp_path_factory: pytest.TempPathFactory) -> Database:
    """``build_foreign_database`` once per test module and backend."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    return await build_foreign_database(
        request.param, tmp_path_factory.mktemp(f"foreign-{request.param}"), f"foreign_{module}"
    )


def csv_records(text: str) -> list[list[str | None]]:
    """CSV records as Arrow's reader reads Parquet's rows: a quoted field is its text, an
    unquoted empty one None (Python's csv.reader reads both as '' before 3.12)."""
    records: list[list[str | None]] = []
    fields: list[str | None] = []
    i = 0
    while i < len(text):
        if text[i] == '"':
            end = text.index('"', i + 1)
            while text.startswith('""', end):
                end = text.index('"', end + 2)
            fields.append(text[i + 1:end].replace('""', '"'))
            i = end + 1
        else:
            ends = [at for at in (text.find(",", i), text.find("\n", i)) if at >= 0]
            end = min(ends, default=len(text))
            fields.append(text[i:end] or None)
            i = end
        if text.startswith(",", i):
            i += 1
            if i == len(text) or text[i] == "\n":
                fields.append(None)
        if i == len(text) or text[i] == "\n":
            records.append(fields)
            fields = []
            i += 1
    return records
