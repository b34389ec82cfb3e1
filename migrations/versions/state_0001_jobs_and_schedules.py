"""the service's state: export jobs and schedules, in the schema exporter

Revision ID: state_0001
Revises:
Create Date: 2026-11-28

The schema ``exporter`` is the state's own: on PostgreSQL a schema of the configured
database (env.py creates it, as Alembic's version table lives there too), on SQLite the
state file attached under that name. Earlier versions kept these tables, at revisions
``0001`` and ``0002`` of another history, in the user's own schema;
``exporter.legacy`` moves them in after this revision.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "state_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "exporter"


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("cron", sa.String(255), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("job", sa.JSON(), nullable=False),
        sa.Column("keep_last", sa.Integer(), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_schedules_next_run_at", "schedules", ["next_run_at"], schema=SCHEMA)
    op.create_table(
        "export_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("table_name", sa.String(255), nullable=False, server_default="users"),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=True),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("compression", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows_written", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("total_rows", sa.BigInteger(), nullable=True),
        sa.Column("bytes_written", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("revision", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("file_name", sa.String(255), nullable=True),
        sa.Column("file_path", sa.String(255), nullable=True),
        sa.Column("file_size", sa.BigInteger(), nullable=True),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("schedule_id", sa.String(32), nullable=True),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("schedule_id", "scheduled_for", name="uq_export_jobs_schedule_tick"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_export_jobs_status_created_at", "export_jobs", ["status", "created_at"],
        schema=SCHEMA,
    )
    op.create_index("ix_export_jobs_created_at", "export_jobs", ["created_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("export_jobs", schema=SCHEMA)
    op.drop_table("schedules", schema=SCHEMA)
