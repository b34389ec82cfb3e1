"""Downloads: every format of a table against the sqlite3 shell on the same file, ``exporter
pull`` against ``curl -o``, the time to the first byte with a count, and the large file
against nginx's sendfile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from bench.probes import MB, BenchError, curl, process_cpu, timed, timed_cpu
from bench.processes import LOOPBACK, find_tool, free_port, wait_for_http
from bench.rows import seconds

if TYPE_CHECKING:
    from bench.run import Bench


def every_format(bench: Bench, base: str, pid: int, table: str = "users", key: str = "") -> None:
    """Every format of ``table`` against the sqlite3 shell on the same file, interleaved;
    ``key`` prefixes the rows' keys and the raw runs' names."""
    db, timeout = str(bench.db), bench.args.timeout
    label = "" if table == "users" else f"{table} "

    def floor(name: str, *options: str) -> None:
        wall, cpu = timed_cpu(["sqlite3", *options, db, f"select * from {table}"], timeout)
        bench.record(label + name, wall)
        bench.record(f"{label}{name} CPU", cpu)

    def ours(fmt: str) -> None:
        before = process_cpu(pid)
        seconds_taken = curl(f"{base}/exports/{table}.{fmt}", timeout).seconds
        bench.record(f"exporter {label}{fmt}", seconds_taken)
        bench.record(f"exporter {label}{fmt} CPU", process_cpu(pid) - before)

    for run in range(1, bench.args.runs + 1):
        bench.say(f"downloads of {table}: run {run}/{bench.args.runs}")
        floor("sqlite3 -csv", "-csv", "-header")
        ours("csv")
        floor("sqlite3 -json", "-json")
        ours("ndjson")
        ours("json")
    for fmt, anchor in (("csv", "sqlite3 -csv"), ("ndjson", "sqlite3 -json"),
                        ("json", "sqlite3 -json")):
        wall = bench.median(f"exporter {label}{fmt}")
        floor_wall = bench.median(label + anchor)
        cpu = bench.median(f"exporter {label}{fmt} CPU")
        floor_cpu = bench.median(f"{label}{anchor} CPU")
        row = bench.rows[key + fmt]
        row.exporter, row.anchor = seconds(wall), f"`{anchor}`: {seconds(floor_wall)}"
        row.value = f"{wall / floor_wall:.2f}x (CPU {cpu / max(floor_cpu, 1e-3):.1f}x)"
        row.result = row.judge(wall / floor_wall)


def pull(bench: Bench, base: str) -> None:
    """The ingesting client (resume bookkeeping, .part file, fsync, rename) against curl
    writing the same export to a file and an fsync of that file, interleaved; the files must
    be equal. The fsync makes the two equally durable: without it curl's dirty pages were
    written back during the next pull's own fsync, which paid for both (a run of 2026-12-07:
    pull 1.38x curl -o in the bench, 1.05x by hand with the disk idle)."""
    url = f"{base}/exports/users.ndjson"
    pulled, curled = bench.data_dir / "pulled.ndjson", bench.data_dir / "curled.ndjson"
    command = [sys.executable, "-m", "exporter", "pull", "--quiet", "-o", str(pulled), url]
    try:
        for run in range(1, bench.args.runs + 1):
            bench.say(f"exporter pull against curl -o: run {run}/{bench.args.runs}")
            pulled.unlink(missing_ok=True)
            started = time.perf_counter()
            curl(url, bench.args.timeout, str(curled))
            with curled.open("rb") as file:
                os.fsync(file.fileno())
            bench.record("curl -o ndjson", time.perf_counter() - started)
            bench.record("exporter pull ndjson", timed(command, bench.args.timeout))
        if pulled.read_bytes() != curled.read_bytes():
            raise BenchError("exporter pull's file differs from curl's")
    finally:
        pulled.unlink(missing_ok=True)
        curled.unlink(missing_ok=True)
    ours, anchor = bench.median("exporter pull ndjson"), bench.median("curl -o ndjson")
    row = bench.rows["pull"]
    row.exporter, row.anchor = seconds(ours), f"`curl -o` + fsync: {seconds(anchor)}"
    row.value = f"{ours / anchor:.2f}x (with Python's start)"
    row.result = row.judge(ours / anchor)


def count(bench: Bench, base: str) -> None:
    """What counting first costs a client: curl's time to the first byte, with and
    without ``Prefer: count=exact``, interleaved."""
    url = f"{base}/exports/users.csv"
    for run in range(1, bench.args.runs + 1):
        bench.say(f"time to first byte with and without a count: run {run}/{bench.args.runs}")
        for name, extra in (("plain", []), ("counted", ["-H", "Prefer: count=exact"])):
            done = subprocess.run(
                ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", *extra, "-w",
                 "%{time_starttransfer}", url],
                capture_output=True, text=True, timeout=bench.args.timeout)
            if done.returncode != 0:
                raise BenchError(f"curl {url}: {done.stderr.strip()}")
            bench.record(f"first byte {name}", float(done.stdout))
    plain, counted = bench.median("first byte plain"), bench.median("first byte counted")
    row = bench.rows["count"]
    row.exporter = f"{counted * 1000:.0f} ms"
    row.anchor = f"without: {plain * 1000:.0f} ms"
    row.value = f"+{(counted - plain) * 1000:.0f} ms"
    row.result = "info"


def large_file(bench: Bench, base: str) -> None:
    path = bench.data_dir / "files" / "large-file.bin"
    row = bench.rows["large_file"]
    if not path.exists():
        row.result = f"n/a: no {path.name} in the data dir"
        return
    size = path.stat().st_size
    timed(["cat", str(path)], bench.args.timeout)  # page cache, for both servers
    with httpx.Client(trust_env=False, timeout=30) as client, client.stream(
        "GET", f"{base}/files/{path.name}"
    ) as response:
        status = response.status_code
    nginx_mbps = nginx_throughput(bench, path) if not bench.args.no_nginx else None
    if nginx_mbps is not None:
        row.anchor = f"nginx {nginx_mbps:.0f} MB/s"
    elif bench.args.no_nginx:
        row.anchor = "nginx skipped (--no-nginx)"
    if status == 404:
        row.result = "n/a: endpoint absent (404)"
        return
    if status != 200:
        raise BenchError(f"GET /files/{path.name}: HTTP {status}")
    for _ in range(bench.args.runs):
        got = curl(f"{base}/files/{path.name}", bench.args.timeout)
        if got.bytes != size:
            raise BenchError(f"/files/{path.name} sent {got.bytes} of {size} bytes")
        bench.record("exporter large file MB/s", size / MB / got.seconds)
    ours = bench.median("exporter large file MB/s")
    row.exporter = f"{ours:.0f} MB/s"
    if nginx_mbps is None:
        row.result = f"n/a: {row.anchor or 'nginx not available'}"
        return
    row.value = f"{ours / nginx_mbps:.0%}"
    row.result = row.judge(ours / nginx_mbps)


def nginx_throughput(bench: Bench, path: Path) -> float | None:
    nginx = find_tool("nginx")
    if not nginx and bench.apt_install("nginx-light"):
        nginx = find_tool("nginx")
    if not nginx:
        bench.rows["large_file"].anchor = "nginx not installable"
        return None
    bench.versions["nginx"] = subprocess.run(
        [nginx, "-v"], capture_output=True, text=True, timeout=30
    ).stderr.strip().removeprefix("nginx version: ")
    prefix = bench.work / "nginx"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    server {{
        listen {LOOPBACK}:{port};
        root {path.parent.resolve()};
    }}
}}
""")
    proc = bench.procs.start("nginx", [nginx, "-p", str(prefix), "-c", str(conf)])
    base = f"http://{LOOPBACK}:{port}"
    try:
        wait_for_http(f"{base}/{path.name}", proc, 30, "nginx", bench.procs)
        size = path.stat().st_size
        for _ in range(bench.args.runs):
            got = curl(f"{base}/{path.name}", bench.args.timeout)
            if got.bytes != size:
                raise BenchError(f"nginx sent {got.bytes} of {size} bytes")
            bench.record("nginx large file MB/s", size / MB / got.seconds)
    finally:
        bench.procs.stop(proc)
    return bench.median("nginx large file MB/s")
