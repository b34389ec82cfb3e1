"""The demo's tables, ``users`` and ``images``, as SQLAlchemy Core: exports read them with
Core, never as ORM objects (5x slower).

They belong to the user's side of the database: ``exporter seed`` creates them (the
migrations make only the service's own state, ``exporter.state``). Timestamps are stored in
UTC; SQLite keeps them as naive text in SQLAlchemy's format.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
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
