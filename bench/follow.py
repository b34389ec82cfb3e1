"""The live streams' measurements (docs/follow.md): how long a committed row takes to reach
a follower's socket, and how quick ``/health`` stays while hundreds of followers wait.

Latency: one follower reads ``/exports/ticks.ndjson?follow=true`` on a thread; one writer
commits a row every ``WRITE_EVERY_S``, noting the clock when each COMMIT returned; the
reader notes the clock when each row's line arrived. Both clocks are this process's
``perf_counter``, so the difference is commit to wire (to the reader's socket, in fact:
the time the client takes to parse a line is included, a few microseconds).

The stages at the end run both against a served SQLite file and, with ``--postgres-url``,
PostgreSQL with and without ``exporter follow install``, and fill their rows.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench import ROOT
from bench.probes import BenchError, percentile

if TYPE_CHECKING:
    from bench.run import Bench

TABLE = "ticks"
WRITE_EVERY_S = 0.02
HEALTH_EVERY_S = 0.010


@dataclass(frozen=True)
class Sizes:
    """How much the stages do: rows committed one by one to a follower, idle followers
    waiting, and ``/health`` requests among them."""

    writes: int
    idle_followers: int
    health_samples: int


FULL = Sizes(writes=200, idle_followers=200, health_samples=300)
# --quick (tests/test_bench.py runs it) checks that the stages work, and at the full sizes
# the SQLite stage took 13 s of its minute, mostly a commit or a request every 10-20 ms;
# these take 8. 100 is the fewest latencies whose p99 (nearest rank) is not their largest,
# and 100 commits still span four of PostgreSQL's 0.5 s polls; 50 idle followers still
# show whether waiting streams hold connections or slow /health down.
QUICK = Sizes(writes=100, idle_followers=50, health_samples=100)


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL
SCHEMA = {
    "sqlite": f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, note TEXT)",
    "postgresql": f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, note text)",
}


def make_table(url: str) -> None:
    async def make() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(SCHEMA[engine.dialect.name])
        finally:
            await engine.dispose()

    asyncio.run(make())


def latencies(base: str, url: str, writes: int) -> list[float]:
    """Seconds from each row's COMMIT to its line at a follower, for ``writes`` rows."""
    start = _largest(url)
    arrived: dict[int, float] = {}
    ready = threading.Event()
    failed: list[BaseException] = []

    def follow() -> None:
        try:
            with httpx.Client(timeout=60, trust_env=False) as client, client.stream(
                "GET", f"{base}/exports/{TABLE}.ndjson",
                params={"follow": "true", "after": str(start)},
            ) as response:
                response.raise_for_status()
                ready.set()
                for line in response.iter_lines():
                    if line.strip():
                        arrived[json.loads(line)["id"]] = time.perf_counter()
                        if len(arrived) == writes:
                            return
        except BaseException as exc:  # reported by the caller
            failed.append(exc)
            ready.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    if not ready.wait(30) or failed:
        raise RuntimeError(f"the follower did not start: {failed}")
    time.sleep(1.0)  # its watcher (or LISTEN connection) is up
    committed = asyncio.run(_write(url, writes))
    reader.join(60)
    if failed or len(arrived) < writes:
        raise RuntimeError(f"the follower got {len(arrived)} of {writes} rows: {failed}")
    return [arrived[key] - at for key, at in committed.items()]


def _largest(url: str) -> int:
    async def largest() -> int:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                found = (await conn.execute(text(f"SELECT max(id) FROM {TABLE}"))).scalar()
                return int(found or 0)
        finally:
            await engine.dispose()

    return asyncio.run(largest())


async def _write(url: str, writes: int) -> dict[int, float]:
    engine = create_async_engine(url)
    committed: dict[int, float] = {}
    try:
        for _ in range(writes):
            async with engine.connect() as conn:
                made = await conn.execute(
                    text(f"INSERT INTO {TABLE} (note) VALUES ('tick') RETURNING id"))
                key = int(made.scalar_one())
                await conn.commit()
                committed[key] = time.perf_counter()
            await asyncio.sleep(WRITE_EVERY_S)
    finally:
        await engine.dispose()
    return committed


def health_while_followed(base: str, followers: int, samples: int
                          ) -> tuple[list[float], str]:
    """``/health`` latencies while ``followers`` live streams wait for rows; and the
    service's own count of them and of checked-out connections, from /metrics."""
    async def measure() -> tuple[list[float], str]:
        limits = httpx.Limits(max_connections=followers + 10)
        async with httpx.AsyncClient(timeout=60, limits=limits, trust_env=False) as client:
            streams = []
            try:
                for _ in range(followers):
                    stream = client.stream("GET", f"{base}/exports/{TABLE}.ndjson",
                                           params={"follow": "true", "after": str(2**62)})
                    (await stream.__aenter__()).raise_for_status()
                    streams.append(stream)
                metrics = (await client.get(f"{base}/metrics")).text
                seen = _metric(metrics, "exporter_followers") + " followers, " + _metric(
                    metrics, "exporter_db_connections_checked_out") + " connections checked out"
                async with httpx.AsyncClient(base_url=base, trust_env=False) as probe:
                    await probe.get("/health")
                    waits = []
                    for _ in range(samples):
                        started = time.perf_counter()
                        (await probe.get("/health")).raise_for_status()
                        waits.append(time.perf_counter() - started)
                        await asyncio.sleep(HEALTH_EVERY_S)
                return waits, seen
            finally:
                for stream in streams:
                    await stream.__aexit__(None, None, None)

    return asyncio.run(measure())


def _metric(text_format: str, name: str) -> str:
    for line in text_format.splitlines():
        if line.startswith(f"{name} "):
            return str(int(float(line.split()[1])))
    return "?"


def summary(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50) * 1000:.1f} ms, "
            f"p99 {percentile(values, 99) * 1000:.1f} ms")


def on_sqlite(bench: Bench) -> None:
    work = Path(tempfile.mkdtemp(dir=bench.work, prefix="follow-"))
    url = f"sqlite+aiosqlite:///{work / 'ticks.db'}"
    make_table(url)
    bench.migrate(bench.exporter_env(url, work))
    with bench.exporter_server("exporter-follow", url, EXPORTER_DATA_DIR=str(work)) as (
        base, _proc
    ):
        commit_to_wire(bench, "follow_sqlite", base, url)
        size = sizes(bench.args.quick)
        waits, seen = health_while_followed(base, size.idle_followers, size.health_samples)
    bench.raw["follow health ms"] = [wait * 1000 for wait in waits]
    p99 = percentile(waits, 99) * 1000
    row = bench.rows["follow_health"]
    row.exporter = summary(waits)
    row.anchor = f"{len(waits)} requests, one per 10 ms; /metrics: {seen}"
    row.value = f"p99 {p99:.1f} ms"
    row.result = row.judge(p99)


def on_postgres(bench: Bench) -> None:
    url: str | None = bench.args.postgres_url
    if not url:
        for key in ("follow_notify", "follow_poll"):
            bench.rows[key].result = "n/a: no --postgres-url given"
        return
    work = Path(tempfile.mkdtemp(dir=bench.work, prefix="follow-pg-"))
    make_table(url)
    env = bench.exporter_env(url, work)
    bench.migrate(env)
    for action, key in (("install", "follow_notify"), ("uninstall", "follow_poll")):
        done = subprocess.run([sys.executable, "-m", "exporter", "follow", action,
                               TABLE], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise BenchError(f"exporter follow {action}: {done.stderr[-300:]}")
        with bench.exporter_server(f"exporter-{key}", url) as (base, _proc):
            commit_to_wire(bench, key, base, url)


def commit_to_wire(bench: Bench, key: str, base: str, url: str) -> None:
    writes = sizes(bench.args.quick).writes
    bench.say(f"{key}: {writes} rows committed one by one while a follower reads")
    waits = latencies(base, url, writes)
    bench.raw[f"{key} ms"] = [wait * 1000 for wait in waits]
    p99 = percentile(waits, 99)
    row = bench.rows[key]
    row.exporter = summary(waits)
    row.anchor = (f"{writes} rows, one commit each {WRITE_EVERY_S * 1000:.0f}"
                  " ms apart")
    row.value = f"p99 {p99 * 1000:.1f} ms"
    row.result = row.judge(p99)
