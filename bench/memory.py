"""The server's memory: its RSS peak during an export against its idle one, and what a storm
of clients hanging up mid-export leaves behind (RSS and open files)."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import time
from typing import TYPE_CHECKING

from bench.probes import RssSampler, curl, rss_kb

if TYPE_CHECKING:
    from bench.run import Bench

MEMORY_SLICE_ROWS = 100_000
STORM_AT_ONCE = 20
STORM_READ_BYTES = 4096


def peaks(bench: Bench) -> None:
    """Peak RSS only ever rises (freed memory mostly stays with the allocator), so each
    measured export gets a fresh server, warmed up by the same 100k-row export: the
    100k and full runs then differ only in rows, and nothing one run kept can hide in
    another's peak."""
    bench.say("memory: idle, 100k-row and all-row CSV exports, each on a fresh server")
    slice_rows = min(MEMORY_SLICE_ROWS, bench.users)
    small_path = f"/exports/users.csv?limit={slice_rows}"
    with bench.exporter_server("exporter-idle") as (base, proc):
        curl(f"{base}/exports/users.csv?limit=10", bench.args.timeout)  # imports, pools
        time.sleep(0.5)
        with RssSampler(proc.pid) as idle:
            time.sleep(1.0)
    for _ in range(bench.args.runs):
        for key, path in (("rss_100k_mb", small_path), ("rss_full_mb", "/exports/users.csv")):
            with bench.exporter_server("exporter-memory") as (base, proc):
                curl(f"{base}{small_path}", bench.args.timeout)  # the same warm-up
                with RssSampler(proc.pid) as peak:
                    curl(f"{base}{path}", bench.args.timeout)
            bench.record(key, peak.peak_mb)
    idle_mb = idle.peak_mb
    bench.raw["rss_idle_mb"] = [idle_mb]
    small_mb, full_mb = bench.median("rss_100k_mb"), bench.median("rss_full_mb")
    row = bench.rows["mem_idle"]
    row.exporter, row.anchor = f"{full_mb:.0f} MB", f"idle {idle_mb:.0f} MB"
    row.value = f"+{full_mb - idle_mb:.1f} MB"
    row.result = row.judge(full_mb - idle_mb)
    row = bench.rows["mem_growth"]
    row.exporter, row.anchor = f"{full_mb:.0f} MB", f"{slice_rows} rows: {small_mb:.0f} MB"
    row.value = f"{full_mb - small_mb:+.1f} MB"
    row.result = row.judge(full_mb - small_mb)


def storm(bench: Bench) -> None:
    """Clients that each read a few KB of a full export and hang up, many at a time:
    the process's RSS and open files, idle before and 3 s after, on a fresh server."""
    # Two readers, their planner, and the connection that lines their snapshots up under
    # SQLite's write lock for a moment (db._sqlite_shared): four at an export's start.
    connections_per_export = 4
    with bench.exporter_server("exporter-storm",
                               EXPORTER_MAX_CONCURRENT_EXPORTS=str(STORM_AT_ONCE)) as (
            base, proc):
        curl(f"{base}/exports/users.csv?limit=10", bench.args.timeout)
        time.sleep(1.0)
        idle_kb, idle_files = rss_kb(proc.pid), len(os.listdir(f"/proc/{proc.pid}/fd"))
        host, port = base.removeprefix("http://").split(":")

        def hang_up(index: int) -> None:
            fmt = ("csv", "ndjson", "json")[index % 3]
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                sock.sendall(f"GET /exports/users.{fmt} HTTP/1.1\r\nHost: x\r\n\r\n"
                             .encode())
                received = 0
                while received < STORM_READ_BYTES:
                    chunk = sock.recv(STORM_READ_BYTES)
                    if not chunk:
                        break
                    received += len(chunk)

        clients: int = bench.args.storm_clients
        bench.say(f"storm: {clients} clients, {STORM_AT_ONCE} at a time")
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(STORM_AT_ONCE) as pool:
            list(pool.map(hang_up, range(clients)))
        bench.record("storm s", time.perf_counter() - started)
        time.sleep(3.0)
        after_kb, after_files = rss_kb(proc.pid), len(os.listdir(f"/proc/{proc.pid}/fd"))
    rss_mb, files = (after_kb - idle_kb) / 1024, after_files - idle_files
    bench.raw["storm rss above idle MB"] = [rss_mb]
    bench.raw["storm open files above idle"] = [float(files)]
    peak = STORM_AT_ONCE * connections_per_export
    row = bench.rows["storm"]
    row.exporter = f"RSS +{rss_mb:.0f} MB, files +{files}"
    row.anchor = (f"{clients} clients; idle {idle_kb / 1024:.0f} MB, {idle_files} files; "
                  f"{peak} connections")
    row.value = f"{files / peak:.1f} files a connection"
    row.result = row.judge(rss_mb, files / peak)
