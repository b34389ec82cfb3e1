"""The async engine for SQLite (aiosqlite, the embedded default) and PostgreSQL (asyncpg).

SQLite: WAL so readers never block the writer, per-connection pragmas in a connect event,
and the driver's own implicit transactions turned off so that ``BEGIN`` is ours to send
(SQLAlchemy's documented recipe); an export then reads one snapshot from one ``BEGIN``.
The service's own state is a second database file, attached to every connection as the
schema ``exporter`` (``exporter.state``), so the user's file never holds a table of ours.
PostgreSQL: the export runs in a READ ONLY, REPEATABLE READ transaction; the state is the
schema ``exporter`` of the same database.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import logging
import os
import re
import sqlite3
import sys
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from exporter import render, sqlite_functions
from exporter.config import make_directory
from exporter.errors import BrokenExport
from exporter.state import STATE_SCHEMA, alembic_options

log = logging.getLogger("exporter.db")

BUSY_TIMEOUT_MS = 5000  # how long a SQLite statement waits for a lock before it fails
SQLITE_CONNECTION_PRAGMAS = (
    # First, so that switching a file to WAL below waits for a lock rather than fails.
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
)
# Set on each database file, the user's (main) and the attached state alike. WAL is a
# lasting setting of the file: the user's application keeps writing while exports read.
SQLITE_FILE_PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL")
IN_MEMORY = ":memory:"
# How long an export waits for SQLite's write lock to line its readers' snapshots up before
# it reads on one connection instead: the first byte should not wait on a foreign writer.
SNAPSHOT_LOCK_WAIT_MS = 250


def create_engine(
    url: str, *, state_path: Path | None = None, pool_size: int = 5, max_overflow: int = 10,
    sqlite_nice: int = 0,
) -> AsyncEngine:
    """``pool_size`` connections stay open; up to ``max_overflow`` more open under load.
    ``state_path``: SQLite's state database (``Settings.state_database_path``), attached
    to every connection as the schema ``exporter``; required for a SQLite file, while an
    in-memory database gets an in-memory state. PostgreSQL keeps its state in its own
    database and ignores it. ``sqlite_nice``: the CPU niceness of each SQLite connection's
    thread (Linux)."""
    parsed = make_url(url)
    pool = {"pool_size": pool_size, "max_overflow": max_overflow}
    if parsed.get_backend_name() == "sqlite":
        state = _sqlite_state(parsed.database, state_path)
        if parsed.database and parsed.database != IN_MEMORY:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        prepare_sqlite()
        engine = create_async_engine(url, **pool)
        _configure_sqlite(engine, state, sqlite_nice)
        return engine
    engine = create_async_engine(url, pool_pre_ping=True, **pool)
    _configure_postgresql(engine)
    return engine


def _sqlite_state(database: str | None, state_path: Path | None) -> str:
    """What SQLite attaches as the schema ``exporter``: the state file, made ready."""
    if not database or database == IN_MEMORY:
        return IN_MEMORY if state_path is None else _state_file(state_path)
    if state_path is None:
        raise ValueError(
            f"the SQLite database {database} needs a state_path: the file that holds the "
            "service's own state (Settings.state_database_path)"
        )
    if Path(database).resolve() == state_path.resolve():
        raise ValueError(
            f"{database} is the service's own state database; point EXPORTER_DATABASE_URL "
            "at the database to export"
        )
    return _state_file(state_path)


class StateUnavailable(RuntimeError):
    """SQLite's state database cannot be made where the settings put it."""


def _state_file(state_path: Path) -> str:
    make_directory(state_path.parent, "the directory of the service's state database",
                   StateUnavailable)
    return str(state_path)


SQLITE_CONFIG_MEMSTATUS = 9  # sqlite3.h
_memory_counting = threading.Lock()
_memory_uncounted: bool | None = None  # None: not tried yet in this process


def prepare_sqlite() -> None:
    """What this process's SQLite needs before the service opens a connection: its memory
    count off, then the C++ functions installed (in that order: turning the count off shuts
    SQLite down, which forgets them)."""
    uncount_sqlite_memory()
    sqlite_functions.install_native()


def uncount_sqlite_memory() -> bool:
    """Stop SQLite counting its memory (``SQLITE_CONFIG_MEMSTATUS``), once per process.

    With the count on (SQLite's default), every allocation takes one process-wide mutex,
    so two threads rendering one export take turns: measured with Debian's SQLite 3.40,
    two threads rendered 1M CSV lines in 4.9 s wall (9.2 s CPU) with it, 2.4 s (4.6 s
    CPU) without. Nothing here reads the count (no soft heap limit is set).

    The setting can only change while SQLite is shut down, and Python's ``sqlite3`` starts
    it on import, so it is shut down and started again, and only while SQLite holds no
    memory at all, i.e. no connection of any thread is open. Python's ``sqlite3`` module
    has no call for this; ``ctypes`` reaches the library it is linked to, and a connection
    opened to check that it is the same one. Returns whether the count is off.
    """
    global _memory_uncounted
    with _memory_counting:
        if _memory_uncounted is None:
            _memory_uncounted = _uncount_sqlite_memory()
            if not _memory_uncounted:
                log.warning(
                    "SQLite's memory count stays on (a connection was already open, or "
                    "Python's SQLite is not libsqlite3.so.0): several SQLite readers take "
                    "turns rather than render at once; EXPORTER_SQLITE_READERS=1 then gives "
                    "the same speed for half the CPU"
                )
        return _memory_uncounted


def _uncount_sqlite_memory() -> bool:
    try:
        library = ctypes.CDLL("libsqlite3.so.0" if sys.platform == "linux" else "libsqlite3")
    except OSError:
        return False  # e.g. SQLite built into Python itself: left as it is
    used = library.sqlite3_memory_used
    used.restype = ctypes.c_int64
    if used() != 0:
        return False  # a connection is open somewhere; shutting SQLite down would break it
    probe = sqlite3.connect(":memory:")
    probe.execute("SELECT 1").fetchall()
    shared = used() != 0  # Python's connection allocates in this library
    probe.close()
    if not shared or used() != 0:
        return False
    library.sqlite3_config.argtypes = [ctypes.c_int, ctypes.c_int]
    if library.sqlite3_shutdown() != 0:
        return False
    configured: bool = library.sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) == 0
    if library.sqlite3_initialize() != 0:
        raise RuntimeError("SQLite could not start again after its memory count was set")
    log.debug("SQLite memory counting %s", "off" if configured else "left on")
    return configured


def _configure_sqlite(engine: AsyncEngine, state: str, nice: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if nice:
            _lower_priority(dbapi_connection.driver_connection, nice)
        dbapi_connection.isolation_level = None
        render.register_functions(dbapi_connection)
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_CONNECTION_PRAGMAS:
            cursor.execute(pragma)
        # A bound parameter: the path goes to SQLite as a value, never as SQL text.
        cursor.execute(f"ATTACH DATABASE ? AS {STATE_SCHEMA}", (state,))
        for schema in ("main", STATE_SCHEMA):
            for pragma in SQLITE_FILE_PRAGMAS:
                cursor.execute(f"PRAGMA {schema}.{pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


EMPTY_PATH = "''"  # no schema: no table of the user's is found, rather than pg_catalog's


def _configure_postgresql(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.run_async(_state_off_search_path)


async def _state_off_search_path(driver: Any) -> None:
    """Take the schema ``exporter`` out of the search path. A role named ``exporter`` (as in
    docker-compose.yml) has it first by PostgreSQL's default ``"$user", public``: the
    user's tables (the catalog's ``current_schema()``, the demo's made by seed, unqualified
    names in exports) would then be looked up among the service's own."""
    schemas: list[str] = await driver.fetchval("SELECT current_schemas(false)")
    if STATE_SCHEMA in schemas:
        path = ", ".join(_quoted(schema) for schema in schemas if schema != STATE_SCHEMA)
        await driver.execute(f"SET search_path TO {path or EMPTY_PATH}")


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _lower_priority(driver: Any, nice: int) -> None:
    """SQLite renders exports on the connection's own thread (aiosqlite's); at a lower CPU
    priority than the event loop, a busy export cannot delay the loop's next turn (a Linux
    thread is a task of its own, so ``setpriority`` takes its id)."""
    thread = getattr(driver, "_thread", None)  # aiosqlite's worker; private, so looked up
    native_id = getattr(thread, "native_id", None)
    if sys.platform == "linux" and native_id is not None:
        # Only ever lower the priority: raising it back would need privileges.
        current = os.getpriority(os.PRIO_PROCESS, native_id)
        os.setpriority(os.PRIO_PROCESS, native_id, max(nice, current))


def backend_name(engine: AsyncEngine | AsyncConnection) -> str:
    """'sqlite' or 'postgresql'."""
    return engine.dialect.name


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside one read-only transaction: every read sees the same data."""
    async with engine.connect() as conn:
        if backend_name(engine) == "postgresql":
            await conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        async with conn.begin():
            yield conn


@asynccontextmanager
async def shared_snapshot(
    engine: AsyncEngine, readers: int
) -> AsyncIterator[list[AsyncConnection]]:
    """``readers`` connections whose transactions all see the same data, so that one
    export can read on several connections at once.

    PostgreSQL: the first connection's snapshot is exported (``pg_export_snapshot``) and
    the others' transactions start in it (``SET TRANSACTION SNAPSHOT``). SQLite: a WAL
    reader sees the last commit before its first read. Holding the write lock (``BEGIN
    IMMEDIATE`` on one more connection) while the readers start means no commit can fall
    between them; writers wait for that moment only (about a millisecond, within
    busy_timeout).
    """
    if readers == 1:
        async with snapshot(engine) as conn:
            yield [conn]
        return
    async with AsyncExitStack() as stack:
        if backend_name(engine) == "postgresql":
            connections = await _postgresql_shared(engine, readers, stack)
        else:
            connections = await _sqlite_shared(engine, readers, stack)
        yield connections


SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


async def _postgresql_shared(
    engine: AsyncEngine, readers: int, stack: AsyncExitStack
) -> list[AsyncConnection]:
    first = await stack.enter_async_context(snapshot(engine))
    exported = (await first.exec_driver_sql("SELECT pg_export_snapshot()")).scalar_one()
    if not SNAPSHOT_ID.fullmatch(exported):  # it goes into SQL text below
        raise BrokenExport(f"unexpected snapshot id from PostgreSQL: {exported!r}")
    connections = [first]
    for _ in range(readers - 1):
        conn = await stack.enter_async_context(snapshot(engine))
        # The first statement of the transaction, as PostgreSQL requires.
        await conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{exported}'")
        connections.append(conn)
    return connections


async def _sqlite_shared(
    engine: AsyncEngine, readers: int, stack: AsyncExitStack
) -> list[AsyncConnection]:
    """The readers' snapshots, lined up under SQLite's write lock; one reader alone if the
    lock cannot be had within ``SNAPSHOT_LOCK_WAIT_MS`` (another process writing all
    along): a correct export still, rendered on one core.

    SQLite's busy handler polls, with no order among its waiters: 32 exports starting at
    once timed out on the lock (47 of 96 answered 500 at a cap of 32). Exports of one
    process take turns for it on an asyncio lock instead, with their connections opened
    and their (deferred) transactions begun beforehand, so that each holds SQLite's lock
    for three driver calls: BEGIN IMMEDIATE, the readers' first reads at once, ROLLBACK.

    BEGIN IMMEDIATE takes the write lock of every attached database, the state's too, so
    jobs' progress writes wait out those three calls, as they did when jobs lived in the
    user's file; the readers' snapshots are of the user's database alone."""
    connections = []
    for _ in range(readers):
        conn = await stack.enter_async_context(engine.connect())
        await stack.enter_async_context(conn.begin())  # BEGIN: no lock, no snapshot yet
        connections.append(conn)
    async with engine.connect() as lock:
        driver = await driver_connection(lock)
        await driver.execute(f"PRAGMA busy_timeout={SNAPSHOT_LOCK_WAIT_MS}")
        try:
            async with _write_lock_turns(engine):
                if not await _lock_for_writes(driver):
                    return connections[:1]
                try:
                    # A WAL read transaction, and so its snapshot, starts at its first read.
                    await asyncio.gather(*(
                        conn.exec_driver_sql("SELECT count(*) FROM sqlite_master")
                        for conn in connections
                    ))
                finally:
                    await driver.execute("ROLLBACK")
        finally:
            await driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return connections


async def _lock_for_writes(driver: Any) -> bool:
    """``BEGIN IMMEDIATE``; False if another connection holds the write lock throughout
    ``busy_timeout``."""
    try:
        await driver.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if not _is_busy(error):
            raise
        log.info("SQLite's write lock stayed busy (%s): this export reads on one connection",
                 error)
        return False
    return True


_turns: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


def _write_lock_turns(engine: AsyncEngine) -> asyncio.Lock:
    """The lock this process's exports of ``engine`` take turns on (one per engine)."""
    return _turns.setdefault(engine.sync_engine, asyncio.Lock())


def _is_busy(error: sqlite3.OperationalError) -> bool:
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or \
        "locked" in str(error)


async def driver_connection(conn: AsyncConnection) -> Any:
    """The driver's own connection under ``conn`` (aiosqlite's or asyncpg's)."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    return driver


class DriverStatement:
    """A statement compiled once for the driver, for routes that bypass SQLAlchemy's
    execution (SQLite's batches, PostgreSQL's COPY): SQL text, and positional parameters
    converted as SQLAlchemy's own execution would convert them (a datetime to SQLite's
    stored text), with named ones filled in per execution."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, statement.compile(
            dialect=dialect, compile_kwargs={"render_postcompile": True}
        ))
        self.sql = compiled.string
        self._names = compiled.positiontup or []
        self._values = compiled.construct_params() or {}
        # IN lists are expanded under names of their own: compiled.binds doesn't know
        # them, SQLAlchemy's table of converters does.
        self._converters = compiled._bind_processors

    def arguments(self, **values: Any) -> tuple[Any, ...]:
        merged = {**self._values, **values}
        converted = []
        for name in self._names:
            convert = self._converters.get(name)
            converted.append(convert(merged[name]) if callable(convert) else merged[name])
        return tuple(converted)


def _alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    # migrations/, installed as exporter.migrations (pyproject.toml): found, not imported.
    spec = importlib.util.find_spec("exporter.migrations")
    if spec is None or spec.origin is None:
        raise RuntimeError("exporter.migrations is not installed: pip install the package")
    config = Config()
    config.set_main_option("script_location", str(Path(spec.origin).parent))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(conn: AsyncConnection) -> str | None:
    """The migration the service's state is at; None if it was never migrated."""
    from alembic.migration import MigrationContext

    return await conn.run_sync(
        lambda sync: MigrationContext.configure(sync, opts=alembic_options())
        .get_current_revision()
    )


async def migrate(engine: AsyncEngine) -> None:
    """Bring the service's state to the newest Alembic revision, and move in the state an
    older version kept among the user's tables (both idempotent)."""
    from alembic import command

    from exporter.legacy import adopt_legacy_state

    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "head"))
    await adopt_legacy_state(engine)


async def downgrade_all(engine: AsyncEngine) -> None:
    """Drop the service's state, every job and schedule (tests use it to start afresh).
    The user's tables, the demo's among them, are not the migrations' to drop."""
    from alembic import command

    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.downgrade(_alembic_config(sync), "base"))
