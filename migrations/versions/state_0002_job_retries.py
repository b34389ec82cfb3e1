"""export_jobs.retry_at: a job whose run failed on a transient error waits until then

Revision ID: state_0002
Revises: state_0001
Create Date: 2026-12-02

A run that fails because the database went away (a dropped connection, a restart, a
locked SQLite file) is queued again with its error, and claimed no sooner than
``retry_at``, up to EXPORTER_JOB_MAX_ATTEMPTS runs.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "state_0002"
down_revision: str | None = "state_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "exporter"


def upgrade() -> None:
    op.add_column(
        "export_jobs", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        schema=SCHEMA,
    )


def downgrade() -> None:
    with op.batch_alter_table("export_jobs", schema=SCHEMA) as batch:
        batch.drop_column("retry_at")
