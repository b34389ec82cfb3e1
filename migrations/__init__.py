"""Alembic migrations; ``exporter migrate`` runs them through ``exporter.db.migrate``."""
