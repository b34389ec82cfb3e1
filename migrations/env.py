"""Alembic's async env, sharing the caller's connection when there is one.

The migrations make the service's own state alone (``exporter.state``): the schema
``exporter``, which on PostgreSQL is a schema of the configured database, created here
before Alembic looks for its version table in it, and on SQLite the state file the engine
attaches under that name. Autogenerate compares that schema only, so it never proposes to
touch the user's tables.

``exporter migrate`` (``exporter.db.migrate``) hands over a connection of the service's own
engine, so SQLite gets the same pragmas, attached state and explicit BEGIN as the service.
Plain ``alembic`` on the command line builds an engine from EXPORTER_* settings instead.
"""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from exporter.state import STATE_SCHEMA, alembic_options

config = context.config


def do_run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA}")
    context.configure(
        connection=connection,
        render_as_batch=connection.dialect.name == "sqlite",
        **alembic_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    from exporter.config import load_settings
    from exporter.db import create_engine

    settings = load_settings()
    engine = create_engine(
        settings.resolved_database_url, state_path=settings.state_database_path
    )
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
        await connection.commit()
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    do_run_migrations(connection)
else:
    asyncio.run(run_async_migrations())
