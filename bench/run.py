"""The benchmark for issue 3: the exporter against its floors and peers, on one machine, in one run.

The service is a black box here: it is seeded with ``exporter seed``, served with
``exporter serve`` and measured over HTTP with curl, exactly as a user would run it.
Every measurement is the median of ``--runs`` runs, interleaved with its anchor so that
drift on the machine hits both alike. Every process started here runs in its own session
and is ended (its process group) in a ``finally``; every address is loopback.

This module is the runner: the run (``Bench``: its arguments, children, rows and raw runs),
its preparation, the order of its stages, and the command line. Each stage's measurements
are functions of the run in a module of their own (downloads, parquet, memory, health,
peers, postgres, seed_time, job_storage, follow) and fill their rows; report.py renders
the table and the page; rows.py, processes.py and probes.py are what the measurements use.

    ./scripts/bench                 # the full run: 1M users, 3 runs, writes docs/benchmarks.md
    ./scripts/bench --quick         # smoke test: 50k users, 1 run, its own data dir
    .venv/bin/python -m bench.run --help
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    ROOT,
    downloads,
    follow,
    health,
    job_storage,
    memory,
    parquet,
    peers,
    postgres,
    seed_time,
    wide,
)
from bench.health import CONCURRENT_EXPORTS, MORE_CONCURRENT_EXPORTS
from bench.probes import BenchError, timed
from bench.processes import LOOPBACK, Processes, find_tool, free_port, wait_for_http
from bench.report import DOCS_OUT, README, fresh_rows, render_markdown, render_table, update_readme
from bench.rows import Row
from exporter.config import Settings

# The service's own cap on exports at once, which the bench's environment never lowers.
DEFAULT_EXPORT_CAP: int = Settings.model_fields["max_concurrent_exports"].default

# --------------------------------------------------------------------------- the bench


@dataclass
class Bench:
    """One run: its arguments, children, rows and raw runs; the measurements record into it
    and start their servers through it."""

    args: argparse.Namespace
    procs: Processes
    work: Path
    rows: dict[str, Row] = field(default_factory=fresh_rows)
    raw: dict[str, list[float]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load: list[tuple[float, float, float]] = field(default_factory=list)

    # ---- helpers

    @property
    def data_dir(self) -> Path:
        path: Path = self.args.data_dir
        return path

    @property
    def db(self) -> Path:
        return self.data_dir / "exporter.db"

    @property
    def users(self) -> int:
        users: int = self.args.users
        return users

    def say(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def record(self, name: str, value: float) -> None:
        self.raw.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        """The median of a measurement's runs; some rows read another stage's (a peer's
        anchor is the exporter's download), which may have failed or been skipped."""
        runs = self.raw.get(name)
        if not runs:
            raise BenchError(f"no runs of {name!r}: the stage that measures it failed or "
                             "was skipped")
        return statistics.median(runs)

    def exporter_env(self, database_url: str | None = None, data_dir: Path | None = None
                     ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
        env["EXPORTER_DATA_DIR"] = str(data_dir or self.data_dir)
        # The service's default, or room for every export /health is measured under.
        env["EXPORTER_MAX_CONCURRENT_EXPORTS"] = str(
            max(DEFAULT_EXPORT_CAP, CONCURRENT_EXPORTS, MORE_CONCURRENT_EXPORTS))
        if database_url:
            env["EXPORTER_DATABASE_URL"] = database_url
        return env

    def stage(self, keys: Sequence[str], run: Callable[[], None]) -> None:
        """Run one stage; if it fails, its rows say so and the bench goes on."""
        try:
            run()
        except Exception as exc:  # a failed stage must not lose the others' numbers
            message = str(exc).replace("\n", " ")[:300]
            self.say(f"{'/'.join(keys)} failed: {message}")
            for key in keys:
                if self.rows[key].result.startswith("n/a: not run"):
                    self.rows[key].result = f"error: {message}"

    @contextlib.contextmanager
    def exporter_server(
        self, name: str, database_url: str | None = None, **extra_env: str,
    ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
        port = free_port()
        proc = self.procs.start(
            name,
            [sys.executable, "-m", "exporter", "serve", "--host", LOOPBACK, "--port", str(port),
             "--log-level", "warning"],
            env={**self.exporter_env(database_url), **extra_env},
        )
        base = f"http://{LOOPBACK}:{port}"
        try:
            wait_for_http(f"{base}/ready", proc, 60, name, self.procs)
            yield base, proc
        finally:
            self.procs.stop(proc)

    # ---- preparation

    def ensure_tools(self) -> None:
        for tool, package in (("curl", "curl"), ("sqlite3", "sqlite3")):
            if not find_tool(tool) and not self.apt_install(package):
                raise SystemExit(f"bench: `{tool}` is needed (apt-get install {package})")

    def apt_install(self, package: str) -> bool:
        if self.args.no_install or os.geteuid() != 0 or not shutil.which("apt-get"):
            return False
        self.say(f"installing {package} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
            try:
                done = subprocess.run(command, capture_output=True, env=env, timeout=600)
            except subprocess.TimeoutExpired:
                return False
            if done.returncode != 0:
                self.notes.append(f"`{shlex.join(command)}` failed: "
                                  f"{done.stderr.decode(errors='replace').strip()[-200:]}")
                return False
        return True

    def ensure_venv(self, venv: Path, requirements: Sequence[str], program: str) -> Path:
        """A contender in a venv of its own (its dependencies never meet the service's):
        ``program`` in it, installed on first use."""
        path = venv / "bin" / program
        if path.exists():
            return path
        self.say(f"installing {', '.join(requirements)} into {venv}")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)],
                       check=True, timeout=300, capture_output=True)
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", *requirements],
            capture_output=True, text=True, timeout=900,
        )
        if done.returncode != 0 or not path.exists():
            shutil.rmtree(venv, ignore_errors=True)
            raise BenchError(f"could not install {', '.join(requirements)}: {done.stderr[-300:]}")
        return path

    def existing_users(self) -> int | None:
        if not self.db.exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as conn:
                count: int = conn.execute("select count(*) from users").fetchone()[0]
                return count
        except sqlite3.Error:
            return None

    def migrate(self, env: dict[str, str]) -> None:
        """Bring a reused database up to this code's schema (idempotent)."""
        done = subprocess.run([sys.executable, "-m", "exporter", "migrate"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise BenchError(f"exporter migrate failed: {done.stderr[-300:]}")

    def ensure_data(self) -> None:
        existing = self.existing_users()
        if existing == self.users:
            self.say(f"{self.db} already holds {existing} users")
            self.migrate(self.exporter_env())
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "exporter", "seed", "--users", str(self.users),
                   "--large-file-mb", str(self.args.large_file_mb)]
        if existing:
            command.append("--reset")
        self.say(f"seeding {self.users} users into {self.data_dir} (found {existing})")
        done = subprocess.run(command, env=self.exporter_env(), cwd=ROOT, timeout=1800,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench: seeding failed: {done.stderr[-1000:]}")
        if self.existing_users() != self.users:
            raise SystemExit(f"bench: {self.db} does not hold {self.users} users after seeding")

    def ensure_wide(self) -> None:
        """The second table, as a user's own: made with plain SQL beside the users."""
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            try:
                found = conn.execute(f"select count(*) from {wide.TABLE}").fetchone()[0]
            except sqlite3.Error:
                found = None
            if found == self.users:
                return
            self.say(f"making {wide.TABLE}: {self.users} rows of {len(wide.COLUMNS)} columns")
            started = time.perf_counter()
            conn.executescript(wide.sqlite_script(self.users))
            self.record(f"make {wide.TABLE} (sqlite)", time.perf_counter() - started)

    def warm_cache(self) -> None:
        """Read the tables once so every contender starts from a warm page cache."""
        for table in ("users", wide.TABLE):
            timed(["sqlite3", str(self.db), f"select * from {table}"], timeout=self.args.timeout)

    # ---- SQLite: downloads, memory, health, large file

    def sqlite_stage(self) -> None:
        self.stage(["mem_idle", "mem_growth"], lambda: memory.peaks(self))
        self.stage(["storm"], lambda: memory.storm(self))
        self.stage(["parquet_rss"], lambda: parquet.memory(self))
        with self.exporter_server("exporter") as (base, proc):
            self.stage(["csv", "ndjson", "json"],
                       lambda: downloads.every_format(self, base, proc.pid))
            self.stage(["wide_csv", "wide_ndjson", "wide_json"],
                       lambda: downloads.every_format(self, base, proc.pid, wide.TABLE, "wide_"))
            self.stage(["parquet", "parquet_adbc", "parquet_size"],
                       lambda: parquet.download(self, base))
            self.stage(["pull"], lambda: downloads.pull(self, base))
            self.stage(["count"], lambda: downloads.count(self, base))
            self.stage(["health"], lambda: health.during_exports(
                self, base, "health", CONCURRENT_EXPORTS))
            self.stage(["health_more"], lambda: health.during_exports(
                self, base, "health_more", MORE_CONCURRENT_EXPORTS))
            self.stage(["large_file"], lambda: downloads.large_file(self, base))

    # ---- everything

    def run(self) -> None:
        self.load.append(os.getloadavg())
        self.ensure_tools()
        self.ensure_data()
        self.ensure_wide()
        self.collect_versions()
        self.warm_cache()
        self.sqlite_stage()
        self.stage(["datasette"], lambda: peers.datasette(self))
        self.stage(["naive"], lambda: peers.naive(self))
        self.stage(["postgres", "wide_postgres"], lambda: postgres.downloads(self))
        self.stage(["seed"], lambda: seed_time.in_fresh_data_dir(self))
        self.stage(["job_bucket", "job_bucket_rss"],
                   lambda: job_storage.bucket_against_local(self))
        self.stage(["follow_sqlite", "follow_health"], lambda: follow.on_sqlite(self))
        self.stage(["follow_notify", "follow_poll"], lambda: follow.on_postgres(self))

    def collect_versions(self) -> None:
        def first_line(command: Sequence[str]) -> str:
            try:
                done = subprocess.run(list(command), capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                return "not found"
            return (done.stdout or done.stderr).strip().splitlines()[0]

        commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"])
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()
        self.versions.update({
            "exporter commit": commit + (" (with uncommitted changes)" if dirty else ""),
            "python": platform.python_version(),
            "sqlite3 CLI": first_line(["sqlite3", "--version"]).split()[0],
            "SQLite library (python)": sqlite3.sqlite_version,
            "curl": first_line(["curl", "--version"]).split()[1],
        })
        for package in ("fastapi", "uvicorn", "sqlalchemy", "aiosqlite", "asyncpg"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                self.versions[package] = importlib.metadata.version(package)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description="Benchmark the exporter against its floors and peers."
    )
    parser.add_argument("--users", type=int, help="users to seed (default 1000000; quick 50000)")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 3; quick 1)")
    parser.add_argument("--data-dir", type=Path,
                        help="bench data dir (default ./data-bench; quick ./data-bench-quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: fewer users, one run, no README update")
    parser.add_argument("--out", type=Path,
                        help="markdown report (default docs/benchmarks.md; quick: in the data dir)")
    parser.add_argument("--large-file-mb", type=float,
                        help="size of large-file.bin when seeding (default 256; quick 16)")
    parser.add_argument("--postgres-url", help="postgresql+asyncpg://... to bench PostgreSQL too")
    parser.add_argument("--storm-clients", type=int,
                        help="clients in the disconnect storm (default 800; quick 100)")
    parser.add_argument("--naive-runs", type=int, default=1,
                        help="runs of the naive endpoint, about 5 min each at 1M (default 1)")
    parser.add_argument("--no-datasette", action="store_true", help="skip Datasette")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive endpoint")
    parser.add_argument("--no-nginx", action="store_true", help="skip nginx")
    parser.add_argument("--no-seed-time", action="store_true", help="skip timing a fresh seed")
    parser.add_argument("--no-install", action="store_true",
                        help="never apt-get install a missing tool (nginx, sqlite3)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds allowed for any one download or command (default 900)")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    quick = args.quick
    if args.users is None:
        args.users = 50_000 if quick else 1_000_000
    if args.runs is None:
        args.runs = 1 if quick else 3
    if args.storm_clients is None:  # issue 16's storm: each reads a few KB, then hangs up
        args.storm_clients = 100 if quick else 800
    if args.data_dir is None:
        args.data_dir = ROOT / ("data-bench-quick" if quick else "data-bench")
    if args.large_file_mb is None:
        args.large_file_mb = 16 if quick else 256
    if args.out is None:
        args.out = args.data_dir / "benchmarks-quick.md" if quick else DOCS_OUT
    if args.users < 1 or args.runs < 1 or args.naive_runs < 1:
        raise SystemExit("bench: --users and --runs must be at least 1")
    args.data_dir = args.data_dir.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started, clock = datetime.now(UTC), time.monotonic()

    def terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    with tempfile.TemporaryDirectory(prefix="exporter-bench-") as work_dir:
        work = Path(work_dir)
        procs = Processes(work)
        bench = Bench(args, procs, work)
        try:
            bench.run()
        finally:
            procs.stop_all()
            bench.load.append(os.getloadavg())
            if bench.load[0][0] > 0.5:
                bench.notes.append(
                    f"The machine was not idle when the run started (1-min load "
                    f"{bench.load[0][0]:.2f}): other processes shared its cores, so wall times "
                    "are noisier than usual; the CPU ratios and the raw runs show by how much."
                )
    table = render_table(bench.rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_markdown(bench, argv, started, time.monotonic() - clock))
    print(f"\nwritten to {args.out}", file=sys.stderr)
    if args.out.resolve() == DOCS_OUT and update_readme(table):
        print(f"table copied into {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
