"""The report: the table's rows in order with their targets, docs/benchmarks.md around the
filled table (machine, versions, how each row is measured, the raw runs), and the README's
copy of the table."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
from collections.abc import Sequence
from datetime import datetime
from fractions import Fraction
from typing import TYPE_CHECKING

from bench import ROOT, follow, wide
from bench.health import CONCURRENT_EXPORTS, MORE_CONCURRENT_EXPORTS
from bench.job_storage import JOB_VIEW
from bench.memory import STORM_AT_ONCE, STORM_READ_BYTES
from bench.probes import MB
from bench.rows import Row, at_least, at_most, below, plural, within

if TYPE_CHECKING:
    from bench.run import Bench

DOCS_OUT = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
README_START = "<!-- bench-table:start -->"
README_END = "<!-- bench-table:end -->"


def fresh_rows() -> dict[str, Row]:
    """Every row of the table, in order; a stage that cannot run leaves its reason in it."""
    near_csv = at_most(1.5, "{:.1f}x `sqlite3 -csv -header`")
    near_json = at_most(1.3, "{:.1f}x `sqlite3 -json`")
    near_copy = at_most(1.2, "{:.1f}x `psql \\copy`")
    above_idle = at_most(64, "{:g} MB")  # one budget for what any export adds to RSS
    rows = [
        Row("csv", "CSV download, all rows (curl)", near_csv),
        Row("ndjson", "NDJSON download, all rows", near_json),
        Row("json", "JSON array download, all rows", near_json),
        Row("wide_csv", f"`{wide.TABLE}` ({len(wide.COLUMNS)} columns, not ours): CSV",
            near_csv),
        Row("wide_ndjson", f"`{wide.TABLE}`: NDJSON", near_json),
        Row("wide_json", f"`{wide.TABLE}`: JSON array", near_json),
        Row("parquet", "Parquet download, all users",
            at_most(2.0, "{:.1f}x `sqlite3 -csv -header`")),
        Row("parquet_adbc", "Parquet download vs ADBC's SQLite driver + pyarrow to a file "
            "(no HTTP)", at_most(1.5, "{:.1f}x ADBC + pyarrow")),
        Row("parquet_size", "Parquet file vs gzip CSV body, all users",
            at_most(Fraction(1, 3), "{} of the gzip CSV")),
        Row("parquet_rss", "server RSS peak, all-users Parquet export, above idle", above_idle),
        Row("pull", "`exporter pull` of all users (NDJSON) to a file vs `curl -o` and an "
            "fsync of its file", at_most(1.2, "{:.1f}x `curl -o` + fsync")),
        Row("count", "time to first byte of all users (CSV) with `Prefer: count=exact`",
            "none (reported)"),
        Row("datasette", "Datasette CSV stream vs exporter CSV", at_least(5, "{:g}x faster")),
        Row("naive", "naive tutorial endpoint (NDJSON) vs exporter NDJSON", "none (peer)"),
        Row("postgres", "PostgreSQL CSV download", near_copy),
        Row("wide_postgres", f"PostgreSQL `{wide.TABLE}`: CSV", near_copy),
        Row("mem_idle", "server RSS peak, all-rows CSV export, above idle", above_idle),
        Row("mem_growth", "server RSS peak, all-rows export vs 100k-row export",
            within(10, "{:g} MB")),
        Row("health", f"`/health` p99 during {CONCURRENT_EXPORTS} concurrent full CSV exports",
            at_most(25, "{:g} ms")),
        Row("health_more", f"`/health` p99 during {MORE_CONCURRENT_EXPORTS} concurrent full "
            "CSV exports", "none (reported)"),
        Row("storm", f"after clients hang up mid-export, {STORM_AT_ONCE} at a time: RSS and "
            "open files above idle",
            # SQLite keeps a closed connection's descriptors of a file while the process
            # holds locks on it (POSIX locks are per process), and reuses them: the user's
            # file and the state's, two a connection.
            (at_most(160, "+{:g} MB", "RSS"),
             at_most(2, "+{:g} a connection open at the peak", "files"))),
        Row("large_file", "large-file download throughput vs nginx sendfile",
            at_least(0.5, "{:.0%} of nginx")),
        Row("seed", "`exporter seed` of all users in a fresh data dir", at_most(30, "{:g} s")),
        Row("job_bucket", f"job file uploaded to a bucket (`rclone serve s3`) vs written to "
            f"the local jobs directory: `{JOB_VIEW}` as JSON", "none (reported)"),
        Row("job_bucket_rss", "server RSS peak above idle while that job uploads", above_idle),
        Row("follow_sqlite", "live stream, commit to wire, SQLite (the file watched)",
            below(1, "{:g} s (polling's goal)", "p99")),
        Row("follow_notify", "live stream, commit to wire, PostgreSQL with "
            "`exporter follow install`", below(0.1, "{:g} ms", "p99", scale=1000)),
        Row("follow_poll", "live stream, commit to wire, PostgreSQL polled",
            below(1, "{:g} s", "p99")),
        Row("follow_health", f"`/health` p99 while {follow.FULL.idle_followers} live streams wait",
            at_most(25, "{:g} ms")),
    ]
    return {row.key: row for row in rows}


ROW_LABELS = tuple(row.what for row in fresh_rows().values())


def render_table(rows: dict[str, Row]) -> str:
    lines = [
        "| what | exporter | anchor | ratio or value | target | result |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        cells = (row.what, row.exporter, row.anchor, row.value, row.target, row.result)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / MB:.1f} GiB"
                break
    return {
        "CPU": cpu,
        "nproc": str(len(os.sched_getaffinity(0))),
        "memory": memory,
        "kernel": platform.release(),
    }


def reproduce_command(argv: Sequence[str]) -> str:
    return "./scripts/bench" + (" " + shlex.join(argv) if argv else "")


def render_markdown(bench: Bench, argv: Sequence[str], started: datetime, took: float) -> str:
    args = bench.args
    raw = "\n".join(
        f"- {name}: " + ", ".join(f"{value:.3f}" for value in values)
        for name, values in bench.raw.items()
    )
    facts = "\n".join(f"- {key}: {value}" for key, value in machine().items())
    facts += "\n- load average (1, 5, 15 min) at the start: {}; at the end: {}".format(
        *(", ".join(f"{x:.2f}" for x in load) for load in bench.load)
    )
    versions = "\n".join(f"- {key}: {value}" for key, value in bench.versions.items())
    notes = "".join(f"- {note}\n" for note in bench.notes)
    health_loads = f"{CONCURRENT_EXPORTS} (and {MORE_CONCURRENT_EXPORTS})"
    return f"""# Benchmarks

{args.users:,} users, SQLite unless the row says otherwise; each number is the median of
{plural(args.runs, "run")}. Measured {started:%Y-%m-%d %H:%M} UTC; the whole run took
{took / 60:.1f} min.
Produced by `bench/run.py` (issue 3); do not edit by hand, run the command below.

{render_table(bench.rows)}

## Reproduce

```sh
{reproduce_command(argv)}
```

## Machine

{facts}

## Versions

{versions}

## How each row is measured

- Downloads: `curl -sS -o /dev/null -w %{{time_total}}` of `/exports/users.<format>` from
  `exporter serve` on a loopback port, against `sqlite3 -csv -header <db> "select * from users"`
  or `sqlite3 -json <db> "select * from users"` to `/dev/null` on the same file, interleaved
  run by run, after one untimed read of the table to warm the page cache. CPU in the ratio
  column: the server process's user + system seconds (all threads) per download against
  `sqlite3`'s, which is steadier than wall time when the machine is shared.
- Pull: `exporter pull --quiet -o <file>` of `/exports/users.ndjson` (a new Python process:
  its start is included, about 0.15 s; it fsyncs the file before it exits) against `curl -o
  <file>` of the same URL followed by an fsync of that file, so that both are as durable and
  neither pays for the other's write-back, interleaved; the two files must be equal. Time
  to first byte: curl's `time_starttransfer` of the full CSV export with and without
  `Prefer: count=exact` (the count runs before the first batch).
- Datasette: `datasette serve <db> --setting max_csv_mb 0 --setting sql_time_limit_ms 1000000`
  (its own venv, `bench/.venv-datasette`), `curl` of `/<db>/users.csv?_stream=on&_size=max`.
  The first run's body is written to a file and its CSV records counted (must equal the users).
- Naive endpoint: `bench/naive_app.py` under uvicorn (SQLAlchemy rows, `json.dumps(dict(row))`
  per yield), `/users.ndjson`; {plural(args.naive_runs, "run")} (`--naive-runs`: each takes
  minutes and the row has no target); the first run's body is kept and its lines counted.
- Memory: `VmRSS` of the server process every 50 ms. Idle is the peak over 1 s after a
  10-row warm-up export; then {args.runs} exports of `?limit=100000` and {args.runs} full
  exports (CSV), each on a fresh server warmed up by one `?limit=100000` export (peak RSS
  only rises, so runs on one server would hide each other), each run's peak, medians
  compared.
- `/health`: {health_loads} concurrent full CSV downloads (curl) while one
  persistent httpx client requests `/health` every 10 ms until they finish; p50/p99 per run,
  medians.
- Storm: on a fresh server with `EXPORTER_MAX_CONCURRENT_EXPORTS={STORM_AT_ONCE}`,
  {args.storm_clients} clients, {STORM_AT_ONCE} at a time, each asking for a full export, reading
  {STORM_READ_BYTES} bytes and hanging up; `VmRSS` and `/proc/<pid>/fd` 1 s after a warm-up
  and 3 s after the last client.
- Large file: `curl` of `/files/large-file.bin` from the exporter (n/a while that endpoint is
  absent) against nginx (`sendfile on`, one worker) serving the same file; MB/s.
- PostgreSQL (only with `--postgres-url`): the exporter's CSV against
  `psql -c "\\copy (select * from users order by id) to stdout with (format csv, header)"`.
- Seeding: wall time of `exporter seed --users N` (with its large file) in a fresh data dir.
- Wide table (`bench/wide.py`): 33 columns of mixed kinds made with plain SQL in the same
  database, as a user's own table; its downloads are measured as the users' are, against
  the same `sqlite3` commands on `wide` (and `psql \\copy` with `--postgres-url`).
- Parquet: `curl` of `/exports/users.parquet` against `sqlite3 -csv`, and against ADBC's
  SQLite driver and pyarrow writing the file without HTTP (`bench/adbc_parquet.py`, its own
  venv `bench/.venv-adbc`), interleaved; the file's size against the gzip CSV body's; the
  server's `VmRSS` peak while it writes one, on a fresh server.
- Job storage: one job exporting a view of every wide row twice (a JSON file above 1 GiB at
  1M rows) uploaded to a bucket served by `rclone serve s3`, against the same job written
  to the local jobs directory, interleaved; the server's `VmRSS` peak above idle meanwhile.
- Live streams (`bench/follow.py`): one follower of `/exports/ticks.ndjson?follow=true`
  while one writer commits a row every 20 ms; the latency is from each COMMIT's return to
  the row's line at the follower (one clock, this process's); on SQLite, and on PostgreSQL
  with the trigger (`exporter follow install`) and polled without it. Then `/health` every
  10 ms while {follow.sizes(args.quick).idle_followers} idle followers wait.

{("## Notes" + chr(10) + chr(10) + notes + chr(10)) if notes else ""}## Raw runs

Seconds unless the name says otherwise.

{raw}
"""


def update_readme(table: str) -> bool:
    text = README.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        return False
    README.write_text(pattern.sub(lambda _m: f"{README_START}\n{table}\n{README_END}", text))
    return True

