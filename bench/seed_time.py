"""Seed time: how long ``exporter seed`` of all users takes in a fresh data dir, its large
file included."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import ROOT
from bench.probes import BenchError
from bench.rows import seconds

if TYPE_CHECKING:
    from bench.run import Bench


def in_fresh_data_dir(bench: Bench) -> None:
    row = bench.rows["seed"]
    if bench.args.no_seed_time:
        row.result = "n/a: skipped (--no-seed-time)"
        return
    scratch = Path(tempfile.mkdtemp(dir=bench.data_dir, prefix="seed-time-"))
    bench.say(f"seed time: {bench.users} users into a fresh {scratch}")
    try:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "exporter", "seed", "--users", str(bench.users),
             "--large-file-mb", str(bench.args.large_file_mb)],
            env=bench.exporter_env(data_dir=scratch), cwd=ROOT, capture_output=True,
            text=True, timeout=1800,
        )
        elapsed = time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0:
        raise BenchError(f"exporter seed failed: {done.stderr[-300:]}")
    bench.record("seed wall s", elapsed)
    own = re.search(r"seeded \d+ users in ([\d.]+) s", done.stderr)
    row.exporter = seconds(elapsed)
    row.anchor = (f"seeder's own count: {own.group(1)} s" if own else "")
    row.value = f"{bench.args.large_file_mb:g} MiB file included; 1 run"
    row.result = row.judge(elapsed)
