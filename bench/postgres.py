"""PostgreSQL (with ``--postgres-url``): the exporter's CSV of both tables against
``psql \\copy``, after making the database, its users and its ``wide`` table if missing."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from bench import ROOT, wide
from bench.probes import BenchError, curl, timed
from bench.processes import find_tool
from bench.rows import seconds

if TYPE_CHECKING:
    from bench.run import Bench


def downloads(bench: Bench) -> None:
    row = bench.rows["postgres"]
    url: str | None = bench.args.postgres_url
    if not url:
        row.result = bench.rows["wide_postgres"].result = "n/a: no --postgres-url given"
        return
    if not url.startswith("postgresql+asyncpg://"):
        raise BenchError("--postgres-url must start with postgresql+asyncpg://")
    libpq = "postgresql://" + url.removeprefix("postgresql+asyncpg://")
    psql = find_tool("psql")
    if not psql:
        raise BenchError("psql is not installed")
    try:
        bench.versions["postgresql"] = query(psql, libpq, "show server_version")
    except BenchError as exc:
        if "does not exist" not in str(exc):
            raise
        create_database(bench, psql, libpq)
        bench.versions["postgresql"] = query(psql, libpq, "show server_version")
    try:
        existing: int | None = int(query(psql, libpq, "select count(*) from users"))
    except BenchError:
        existing = None
    if existing != bench.users:
        bench.say(f"postgres: seeding {bench.users} users (found {existing})")
        scratch = Path(tempfile.mkdtemp(dir=bench.work, prefix="pg-seed-"))
        command = [sys.executable, "-m", "exporter", "seed", "--users", str(bench.users),
                   "--large-file-mb", "0"] + (["--reset"] if existing else [])
        done = subprocess.run(command, env=bench.exporter_env(url, scratch), cwd=ROOT,
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise BenchError(f"seeding PostgreSQL failed: {done.stderr[-300:]}")
    else:
        bench.migrate(bench.exporter_env(url, Path(tempfile.mkdtemp(dir=bench.work))))
    try:
        made: int | None = int(query(psql, libpq, f"select count(*) from {wide.TABLE}"))
    except BenchError:
        made = None
    if made != bench.users:
        bench.say(f"postgres: making {wide.TABLE} ({bench.users} rows)")
        query(psql, libpq, wide.postgres_script(bench.users), timeout=bench.args.timeout)
    with bench.exporter_server("exporter-pg", url) as (base, _proc):
        for table, key in (("users", "postgres"), (wide.TABLE, "wide_postgres")):
            bench.stage([key], functools.partial(
                table_csv, bench, psql, libpq, base, table, key))


def table_csv(bench: Bench, psql: str, libpq: str, base: str, table: str, key: str) -> None:
    copy = (rf"\copy (select * from {table} order by id) to stdout "
            "with (format csv, header)")
    floor_command = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", libpq, "-c", copy]
    label = "" if table == "users" else f"{table} "
    for run in range(1, bench.args.runs + 1):
        bench.say(f"postgres {table}: run {run}/{bench.args.runs}")
        bench.record(f"{label}psql \\copy", timed(floor_command, bench.args.timeout))
        bench.record(f"exporter pg {label}csv",
                     curl(f"{base}/exports/{table}.csv", bench.args.timeout).seconds)
    ours, theirs = bench.median(f"exporter pg {label}csv"), bench.median(f"{label}psql \\copy")
    row = bench.rows[key]
    row.exporter, row.anchor = seconds(ours), f"`psql \\copy ... csv`: {seconds(theirs)}"
    row.value = f"{ours / theirs:.2f}x"
    row.result = row.judge(ours / theirs)


def create_database(bench: Bench, psql: str, libpq: str) -> None:
    """The database named in --postgres-url is missing: create it from ``postgres``."""
    parts = urllib.parse.urlsplit(libpq)
    name = parts.path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise BenchError(f"database {name!r} does not exist; create it first")
    bench.say(f"postgres: creating database {name}")
    query(psql, parts._replace(path="/postgres").geturl(), f'CREATE DATABASE "{name}"')


def query(psql: str, libpq: str, sql: str, timeout: float = 60) -> str:
    """psql's answer to one statement, unaligned, without the header."""
    done = subprocess.run([psql, "-X", "-tAq", "-v", "ON_ERROR_STOP=1", "-d", libpq,
                           "-c", sql], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BenchError(f"psql: {done.stderr.strip()[:300]}")
    return done.stdout.strip()
