"""The peers: Datasette's CSV stream and a naive tutorial endpoint (bench/naive_app.py), each
serving the same users as the exporter, timed against its download of them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import ROOT
from bench.probes import BenchError, count_csv_records, count_lines, curl
from bench.processes import LOOPBACK, free_port, wait_for_http
from bench.rows import plural, seconds

if TYPE_CHECKING:
    from bench.run import Bench

DATASETTE_VENV = ROOT / "bench" / ".venv-datasette"
DATASETTE_REQUIREMENT = "datasette==0.65.5"


def datasette(bench: Bench) -> None:
    row = bench.rows["datasette"]
    if bench.args.no_datasette:
        row.result = "n/a: skipped (--no-datasette)"
        return
    datasette = ensure_datasette(bench)
    bench.versions["datasette"] = subprocess.run(
        [str(datasette), "--version"], capture_output=True, text=True, timeout=60
    ).stdout.strip().removeprefix("datasette, version ")
    port = free_port()
    proc = bench.procs.start("datasette", [
        str(datasette), "serve", str(bench.db), "--host", LOOPBACK, "--port", str(port),
        "--setting", "max_csv_mb", "0", "--setting", "sql_time_limit_ms", "1000000",
    ])
    base = f"http://{LOOPBACK}:{port}"
    url = f"{base}/{bench.db.stem}/users.csv?_stream=on&_size=max"
    try:
        wait_for_http(f"{base}/-/versions.json", proc, 60, "datasette", bench.procs)
        peer_runs(bench, "datasette csv", "Datasette", url, bench.args.runs,
                  "datasette.csv", count_csv_records)
    finally:
        bench.procs.stop(proc)
    theirs, ours = bench.median("datasette csv"), bench.median("exporter csv")
    row.exporter, row.anchor = seconds(ours), f"Datasette: {seconds(theirs)}"
    row.value = f"{theirs / ours:.1f}x faster"
    row.result = row.judge(theirs / ours)


def naive(bench: Bench) -> None:
    row = bench.rows["naive"]
    if bench.args.no_naive:
        row.result = "n/a: skipped (--no-naive)"
        return
    port = free_port()
    env = {**os.environ, "NAIVE_DB": str(bench.db.resolve())}
    proc = bench.procs.start("naive", [
        sys.executable, "-m", "uvicorn", "naive_app:app", "--app-dir", str(ROOT / "bench"),
        "--host", LOOPBACK, "--port", str(port), "--log-level", "warning",
    ], env=env)
    base = f"http://{LOOPBACK}:{port}"
    try:
        wait_for_http(f"{base}/health", proc, 60, "naive", bench.procs)
        peer_runs(bench, "naive ndjson", "the naive endpoint", f"{base}/users.ndjson",
                  bench.args.naive_runs, "naive.ndjson", count_lines)
    finally:
        bench.procs.stop(proc)
    theirs, ours = bench.median("naive ndjson"), bench.median("exporter ndjson")
    floor = bench.median("sqlite3 -json")
    row.exporter, row.anchor = seconds(ours), f"naive: {seconds(theirs)}"
    row.value = (f"{theirs / ours:.1f}x faster (naive is {theirs / floor:.0f}x the floor; "
                 f"{plural(bench.args.naive_runs, 'run')})")
    row.result = "info"


def peer_runs(bench: Bench, key: str, who: str, url: str, runs: int, keep_as: str,
              count: Callable[[Path], int]) -> None:
    """Time ``runs`` downloads of a peer's export under ``key``; the first run's body is
    kept once, to check it holds every row."""
    for run in range(1, runs + 1):
        bench.say(f"{who}: run {run}/{runs}")
        if run == 1:
            copy = bench.work / keep_as
            bench.record(key, curl(url, bench.args.timeout, str(copy)).seconds)
            rows = count(copy)
            copy.unlink()
            if rows != bench.users:
                raise BenchError(f"{who} sent {rows} rows, not {bench.users}")
        else:
            bench.record(key, curl(url, bench.args.timeout).seconds)


def ensure_datasette(bench: Bench) -> Path:
    return bench.ensure_venv(DATASETTE_VENV, (DATASETTE_REQUIREMENT,), "datasette")
