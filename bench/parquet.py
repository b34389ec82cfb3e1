"""Parquet: an all-users download against ``sqlite3 -csv`` and against ADBC + pyarrow writing
the file without HTTP (bench/adbc_parquet.py), the file's size against the gzip CSV body's,
and the server's RSS peak while it writes one."""

from __future__ import annotations

import subprocess
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from bench import ROOT
from bench.probes import MB, BenchError, RssSampler, curl, timed
from bench.rows import seconds

if TYPE_CHECKING:
    from bench.run import Bench

ADBC_VENV = ROOT / "bench" / ".venv-adbc"
ADBC_REQUIREMENTS = ("adbc-driver-sqlite>=1.0", "pyarrow>=17")


def download(bench: Bench, base: str) -> None:
    """All users as Parquet, against ``sqlite3 -csv`` and against ADBC + pyarrow writing
    the file without HTTP (its own seconds, imports left out), interleaved; then the
    file's size against the gzip CSV body's."""
    python, timeout = ensure_adbc(bench), bench.args.timeout
    ours_file, theirs_file = bench.work / "exporter.parquet", bench.work / "adbc.parquet"
    contender = [str(python), str(ROOT / "bench" / "adbc_parquet.py"), str(bench.db),
                 "users", str(theirs_file)]
    try:
        for run in range(1, bench.args.runs + 1):
            bench.say(f"Parquet: run {run}/{bench.args.runs}")
            bench.record("parquet sqlite3 -csv", timed(
                ["sqlite3", "-csv", "-header", str(bench.db), "select * from users"],
                timeout))
            bench.record("exporter parquet", curl(
                f"{base}/exports/users.parquet", timeout, str(ours_file)).seconds)
            done = subprocess.run(contender, capture_output=True, text=True,
                                  timeout=timeout)
            if done.returncode != 0:
                raise BenchError(f"ADBC + pyarrow: {done.stderr.strip()[-300:]}")
            took, rows = done.stdout.split()
            bench.record("adbc parquet", float(took))
        import pyarrow.parquet as pq  # the service's own dependency

        for name, path in (("exporter", ours_file), ("ADBC", theirs_file)):
            if pq.read_metadata(path).num_rows != bench.users:
                raise BenchError(f"{name}'s Parquet file does not hold {bench.users} rows")
        parquet_size = ours_file.stat().st_size
        gzip_size = gzip_csv_size(bench, base)
    finally:
        ours_file.unlink(missing_ok=True)
        theirs_file.unlink(missing_ok=True)
    ours, floor = bench.median("exporter parquet"), bench.median("parquet sqlite3 -csv")
    adbc = bench.median("adbc parquet")
    row = bench.rows["parquet"]
    row.exporter, row.anchor = seconds(ours), f"`sqlite3 -csv`: {seconds(floor)}"
    row.value = f"{ours / floor:.2f}x"
    row.result = row.judge(ours / floor)
    row = bench.rows["parquet_adbc"]
    row.exporter, row.anchor = seconds(ours), f"ADBC + pyarrow: {seconds(adbc)}"
    row.value = f"{ours / adbc:.2f}x"
    row.result = row.judge(ours / adbc)
    row = bench.rows["parquet_size"]
    row.exporter = f"{parquet_size / MB:.1f} MiB"
    row.anchor = f"gzip CSV: {gzip_size / MB:.1f} MiB"
    row.value = f"{parquet_size / gzip_size:.2f} of it"
    row.result = row.judge(Fraction(parquet_size, gzip_size))  # exact, as sizes are


def gzip_csv_size(bench: Bench, base: str) -> int:
    done = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "-H", "Accept-Encoding: gzip", "-o", "/dev/null",
         "-w", "%{size_download}", f"{base}/exports/users.csv"],
        capture_output=True, text=True, timeout=bench.args.timeout)
    if done.returncode != 0:
        raise BenchError(f"gzip CSV: {done.stderr.strip()}")
    return int(done.stdout)


def memory(bench: Bench) -> None:
    """As ``memory.peaks``, for Parquet: its row groups are held whole while written."""
    bench.say("memory: an all-users Parquet export on a fresh server")
    for _ in range(bench.args.runs):
        with bench.exporter_server("exporter-parquet-memory") as (base, proc):
            curl(f"{base}/exports/users.parquet?limit=10", bench.args.timeout)  # imports
            time.sleep(0.5)
            with RssSampler(proc.pid) as idle:
                time.sleep(1.0)
            with RssSampler(proc.pid) as peak:
                curl(f"{base}/exports/users.parquet", bench.args.timeout)
        bench.record("parquet rss idle mb", idle.peak_mb)
        bench.record("parquet rss full mb", peak.peak_mb)
    idle_mb, full_mb = bench.median("parquet rss idle mb"), bench.median("parquet rss full mb")
    row = bench.rows["parquet_rss"]
    row.exporter, row.anchor = f"{full_mb:.0f} MB", f"idle {idle_mb:.0f} MB"
    row.value = f"+{full_mb - idle_mb:.1f} MB"
    row.result = row.judge(full_mb - idle_mb)


def ensure_adbc(bench: Bench) -> Path:
    return bench.ensure_venv(ADBC_VENV, ADBC_REQUIREMENTS, "python")
