"""The state that earlier versions kept among the user's tables, moved into the state schema.

Their migrations (revisions ``0001`` and ``0002``) made ``export_jobs``, ``schedules`` and
``alembic_version`` in the configured database's own schema, beside the demo's ``users``
and ``images``. ``exporter migrate`` copies those jobs and schedules into the state schema
and then drops the three tables, so that no job is lost and the user's schema is left
holding the user's tables alone.

Only what is certainly ours is touched: ``alembic_version`` must name one of those two
revisions and both tables must have exactly the columns those versions gave them. Anything
else (an application's own Alembic history, tables of the user's that share a name) is
left alone.

Copy, then drop, in two transactions, the copy skipping rows the state already holds: on
SQLite the state is another file, and a commit spanning two files is atomic in each but not
across them, so a crash between them must leave the rows in both places, never in neither.
The next ``exporter migrate`` then finishes the move.
"""

from __future__ import annotations

import logging

from sqlalchemy import (
    Connection,
    Insert,
    MetaData,
    Table,
    column,
    insert,
    inspect,
    select,
    table,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import DropTable

from exporter.state import STATE_SCHEMA
from exporter.state import metadata as state_metadata

log = logging.getLogger("exporter.legacy")

LEGACY_REVISIONS = frozenset({"0001", "0002"})
LEGACY_VERSION_TABLE = "alembic_version"
# The columns revision 0002 made, as they were: the state's tables have more since.
LEGACY_COLUMNS = {
    "schedules": (
        "id", "cron", "timezone", "job", "keep_last", "next_run_at", "last_run_at",
        "created_at",
    ),
    "export_jobs": (
        "id", "format", "fields", "filters", "compression", "status", "rows_written",
        "total_rows", "bytes_written", "revision", "created_at", "started_at", "finished_at",
        "expires_at", "error", "file_name", "file_path", "file_size", "row_count", "sha256",
        "schedule_id", "scheduled_for", "lease_owner", "lease_expires_at", "heartbeat_at",
        "attempts", "cancel_requested",
    ),
}


async def adopt_legacy_state(engine: AsyncEngine) -> bool:
    """Move an earlier version's jobs and schedules into the state schema; whether there
    were any to move."""
    async with engine.connect() as conn:
        schema = await conn.run_sync(_legacy_schema)
    if schema is None:
        return False
    async with engine.begin() as conn:
        for name, columns in LEGACY_COLUMNS.items():
            moved = await conn.execute(_copy(name, columns, schema))
            log.info("moved %d %s into the state schema", moved.rowcount, name)
    async with engine.begin() as conn:
        for name in (*LEGACY_COLUMNS, LEGACY_VERSION_TABLE):
            await conn.execute(DropTable(Table(name, MetaData(), schema=schema)))
    log.info("dropped export_jobs, schedules and alembic_version from schema %s: the "
             "service's state lives in its own schema now", schema)
    return True


def _legacy_schema(conn: Connection) -> str | None:
    """The user's schema, if it holds an earlier version's state; else None."""
    inspector = inspect(conn)
    schema = inspector.default_schema_name
    if not inspector.has_table(LEGACY_VERSION_TABLE, schema=schema):
        return None
    version_table = table(LEGACY_VERSION_TABLE, column("version_num"), schema=schema)
    versions = set(conn.execute(select(version_table.c.version_num)).scalars())
    if not versions or not versions <= LEGACY_REVISIONS:
        return None  # another Alembic history: the user's own
    for name, columns in LEGACY_COLUMNS.items():
        if not inspector.has_table(name, schema=schema):
            return None
        found = {described["name"] for described in inspector.get_columns(name, schema=schema)}
        if found != set(columns):
            log.warning("%s.%s has other columns than an earlier exporter gave it; left "
                        "alone as the user's", schema, name)
            return None
    return schema


def _copy(name: str, columns: tuple[str, ...], schema: str) -> Insert:
    old = table(name, *map(column, columns), schema=schema)
    new = state_metadata.tables[f"{STATE_SCHEMA}.{name}"]
    rows = select(*old.c).where(old.c.id.not_in(select(new.c.id)))
    return insert(new).from_select(columns, rows)
