"""Alembic migrations of the service's own state (the schema ``exporter``), never of the
user's tables; ``exporter migrate`` runs them through ``exporter.db.migrate``."""
