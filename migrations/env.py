"""Alembic's async env, sharing the caller's connection when there is one.

``exporter migrate`` (``exporter.db.migrate``) hands over a connection of the service's own
engine, so SQLite gets the same pragmas and explicit BEGIN as the service. Plain ``alembic``
on the command line builds an engine from EXPORTER_* settings instead.
"""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from exporter.models import metadata

config = context.config


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    from exporter.config import load_settings
    from exporter.db import create_engine

    settings = load_settings()
    engine = create_engine(settings.resolved_database_url)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
        await connection.commit()
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    do_run_migrations(connection)
else:
    asyncio.run(run_async_migrations())
