"""Tables, as SQLAlchemy Core: exports read them with Core, never as ORM objects (5x slower).

Timestamps are stored in UTC. SQLite keeps them as naive text in SQLAlchemy's format, which
compares correctly as text; ``as_utc`` puts the zone back on what is read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("byte_size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    # Relative to the data directory, so the database can move with it.
    Column("storage_path", String(1024), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("full_name", Text, nullable=False),
    Column("country", String(2), nullable=False),
    Column("city", Text, nullable=True),
    Column("plan", String(16), nullable=False),
    Column("is_active", Boolean, nullable=False),
    Column("lifetime_value", Numeric(12, 2), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_login_at", DateTime(timezone=True), nullable=True),
    Column("bio", Text, nullable=True),
    Column("avatar_image_id", Integer, ForeignKey("images.id"), nullable=True),
)

PLANS = ("free", "pro", "enterprise")

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
)

export_jobs = Table(
    "export_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
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
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    # Each scheduled time makes one job, however many replicas fire the schedule.
    UniqueConstraint("schedule_id", "scheduled_for", name="uq_export_jobs_schedule_tick"),
    Index("ix_export_jobs_status_created_at", "status", "created_at"),
    Index("ix_export_jobs_created_at", "created_at"),
)


def as_utc(moment: datetime | None) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite hands them back naive)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def utc_values(row: Row[Any]) -> dict[str, Any]:
    """A row as column name -> value, its timestamps aware and in UTC."""
    return {name: as_utc(value) if isinstance(value, datetime) else value
            for name, value in row._mapping.items()}
