"""The async engine for SQLite (aiosqlite, the embedded default) and PostgreSQL (asyncpg).

SQLite: WAL so readers never block the writer, per-connection pragmas in a connect event,
and the driver's own implicit transactions turned off so that ``BEGIN`` is ours to send
(SQLAlchemy's documented recipe); an export then reads one snapshot from one ``BEGIN``.
PostgreSQL: the export runs in a READ ONLY, REPEATABLE READ transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

# What a database that cannot be reached raises; routes turn it into a 503.
UNREACHABLE = (OperationalError, InterfaceError, OSError, asyncio.TimeoutError)

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        _configure_sqlite(engine)
        return engine
    return create_async_engine(url, pool_size=pool_size, pool_pre_ping=True)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


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


def _alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(conn: AsyncConnection) -> str | None:
    """The migration the database is at; None if it was never migrated."""
    from alembic.migration import MigrationContext

    return await conn.run_sync(
        lambda sync: MigrationContext.configure(sync).get_current_revision()
    )


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command

    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "head"))


async def downgrade_all(engine: AsyncEngine) -> None:
    """Drop every table the migrations made (tests use it to start a database afresh)."""
    from alembic import command

    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.downgrade(_alembic_config(sync), "base"))
