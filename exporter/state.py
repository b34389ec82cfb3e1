"""The service's own state (export jobs and schedules), apart from the user's names.

It lives in a schema called ``exporter``, addressed the same way on both backends, so that
one set of statements serves both and no name of ours can meet one of the user's:

- PostgreSQL: the schema ``exporter`` of the configured database (the migrations create
  it), with Alembic's ``alembic_version`` in it too.
- SQLite: a database file of its own, ``<data_dir>/exporter-state.db``, attached to every
  connection under that name (so ``exporter.export_jobs`` names the same table on both),
  and the user's file never holds a table of ours.

Timestamps are stored in UTC. SQLite keeps them as naive text in SQLAlchemy's format, which
compares correctly as text; ``as_utc`` puts the zone back on what is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

STATE_SCHEMA = "exporter"
STATE_FILE_NAME = "exporter-state.db"  # SQLite's state database, in the data directory

metadata = MetaData()

schedules = Table(
    "schedules",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("cron", String(255), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("job", JSON, nullable=False),  # the POST /jobs body every run gets
    Column("keep_last", Integer, nullable=False),
    Column("next_run_at", DateTime(timezone=True), nullable=False),
    Column("last_run_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_schedules_next_run_at", "next_run_at"),
    schema=STATE_SCHEMA,
)

export_jobs = Table(
    "export_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    # The table it exports; every job exported the demo's users before jobs took a table.
    Column("table_name", String(255), nullable=False, server_default="users"),
    Column("format", String(16), nullable=False),
    Column("fields", JSON, nullable=True),  # None: every field
    Column("filters", JSON, nullable=False),  # parameter name -> query-string value
    Column("compression", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("rows_written", BigInteger, nullable=False, server_default="0"),
    Column("total_rows", BigInteger, nullable=True),
    Column("bytes_written", BigInteger, nullable=False, server_default="0"),
    # Bumped by every change an event stream shows: the SSE event id.
    Column("revision", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("error", Text, nullable=True),
    Column("file_name", String(255), nullable=True),  # the download's name
    Column("file_path", String(255), nullable=True),  # its name in <data_dir>/jobs
    Column("file_size", BigInteger, nullable=True),
    Column("row_count", BigInteger, nullable=True),
    Column("sha256", String(64), nullable=True),
    # The schedule that made it; kept after that schedule is deleted, as its provenance.
    Column("schedule_id", String(32), nullable=True),
    Column("scheduled_for", DateTime(timezone=True), nullable=True),
    Column("lease_owner", String(200), nullable=True),  # the worker running it, or that ran it
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # A queued job whose last run failed on a transient error is claimed no sooner.
    Column("retry_at", DateTime(timezone=True), nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    # Each scheduled time makes one job, however many replicas fire the schedule.
    UniqueConstraint("schedule_id", "scheduled_for", name="uq_export_jobs_schedule_tick"),
    Index("ix_export_jobs_status_created_at", "status", "created_at"),
    Index("ix_export_jobs_created_at", "created_at"),
    schema=STATE_SCHEMA,
)


def alembic_options() -> dict[str, Any]:
    """Alembic's configuration for the state (env.py's, and the revision check's): its
    version table in the state schema, and autogenerate comparing that schema alone."""
    return {
        "target_metadata": metadata,
        "version_table_schema": STATE_SCHEMA,
        "include_schemas": True,
        "include_name": in_state_schema,
    }


def in_state_schema(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """Alembic's ``include_name``: autogenerate compares the state schema alone, and never
    so much as looks at the user's schemas and tables."""
    if type_ == "schema":
        return name == STATE_SCHEMA
    return parent_names.get("schema_name") == STATE_SCHEMA


def as_utc(moment: datetime | None) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite hands them back naive)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def utc_values(row: Row[Any]) -> dict[str, Any]:
    """A row as column name -> value, its timestamps aware and in UTC."""
    return {name: as_utc(value) if isinstance(value, datetime) else value
            for name, value in row._mapping.items()}
