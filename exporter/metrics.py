"""Prometheus metrics, one registry per app so that several apps can live in one process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool


class Metrics:
    def __init__(self, engine: AsyncEngine) -> None:
        self.registry = CollectorRegistry()
        self.exports_started = Counter(
            "exporter_exports_started", "Exports started, by format.", ["format"],
            registry=self.registry,
        )
        self.exports_finished = Counter(
            "exporter_exports_finished",
            "Exports ended, by format and outcome (completed, disconnected, failed).",
            ["format", "outcome"], registry=self.registry,
        )
        self.export_rows = Counter(
            "exporter_export_rows", "Rows encoded by exports, by format.", ["format"],
            registry=self.registry,
        )
        self.export_bytes = Counter(
            "exporter_export_bytes", "Uncompressed bytes encoded by exports, by format.",
            ["format"], registry=self.registry,
        )
        self.exports_in_progress = Gauge(
            "exporter_exports_in_progress", "Exports streaming now.", registry=self.registry
        )
        self.file_bytes_sent = Counter(
            "exporter_file_bytes_sent", "File and image bytes handed to the server.",
            registry=self.registry,
        )
        self.file_bodies_in_progress = Gauge(
            "exporter_file_bodies_in_progress", "File and image bodies being sent now.",
            registry=self.registry,
        )
        self.file_bodies_finished = Counter(
            "exporter_file_bodies_finished",
            "File and image bodies ended, by outcome (completed, disconnected, failed).",
            ["outcome"], registry=self.registry,
        )
        self.jobs_running = Gauge(
            "exporter_jobs_running", "Export jobs this process is running now.",
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "exporter_jobs_finished",
            "Export job runs this process ended, by outcome (succeeded, failed, canceled, "
            "lost: deleted or taken over while running).",
            ["outcome"], registry=self.registry,
        )
        self.followers = Gauge(
            "exporter_followers", "Live streams open now (follow=true, /streams).",
            registry=self.registry,
        )
        self.follow_rows = Counter(
            "exporter_follow_rows", "Rows sent by live streams, by stream (ndjson, sse).",
            ["stream"], registry=self.registry,
        )
        self.followers_finished = Counter(
            "exporter_followers_finished",
            "Live streams ended, by outcome (ended: their time was up; disconnected, "
            "which counts the slow ones too; failed).",
            ["outcome"], registry=self.registry,
        )
        self.followers_slow = Counter(
            "exporter_followers_slow",
            "Live streams cut because their client took no write for follow_send_seconds.",
            registry=self.registry,
        )
        checked_out = Gauge(
            "exporter_db_connections_checked_out",
            "Database connections in use now (a leak shows here).", registry=self.registry,
        )
        pool = engine.sync_engine.pool
        checked_out.set_function(
            lambda: pool.checkedout() if isinstance(pool, QueuePool) else 0
        )

    def export_started(self, fmt: str) -> tuple[Callable[[int, int], None], Callable[[str], None]]:
        """Count an export in; return its per-batch and at-the-end callbacks."""
        self.exports_started.labels(fmt).inc()
        self.exports_in_progress.inc()
        rows, size = self.export_rows.labels(fmt), self.export_bytes.labels(fmt)

        def on_batch(row_count: int, byte_count: int) -> None:
            rows.inc(row_count)
            size.inc(byte_count)

        def on_end(outcome: str) -> None:
            self.exports_in_progress.dec()
            self.exports_finished.labels(fmt, outcome).inc()

        return on_batch, on_end
