"""PostgreSQL exports through COPY against the row pipeline and ``psql \\copy``, in-process.

Each run, interleaved so that drift on the machine hits all alike: the ``psql \\copy`` floor
(CSV to /dev/null), then for each format ``pg_copy.copy_blocks`` and ``streaming.open_export``
drained to /dev/null. Wall, the client's CPU (this process, or psql), and PostgreSQL's CPU:
the backend's, plus what the postmaster reaped meanwhile (parallel workers; psql's backend
once it ends; but also any other session's that ended then), read from /proc, so the
database must run on this machine. Medians of ``--runs``.

    .venv/bin/python -m bench.pg_copy --url postgresql+asyncpg://postgres@127.0.0.1/db
    .venv/bin/python -m bench.pg_copy --url ... --verify   # also compares the bytes once
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.config import load_settings
from exporter.db import create_engine, snapshot
from exporter.formats import FORMATS
from exporter.pg_copy import copy_blocks
from exporter.queries import ExportQuery
from exporter.streaming import open_export

FLOOR = r"\copy (select * from users order by id) to stdout with (format csv, header)"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    wall: float
    cpu: float  # this process, or psql
    pg_cpu: float | None
    rows: int
    size: int


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def own_cpu(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICK


def reaped_cpu(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[13]) + int(fields[14])) / TICK


def postmaster_of(backend: int) -> int:
    return int(_stat(backend)[1])


def psql_floor(url: str, postmaster: int) -> Sample:
    libpq = "postgresql://" + url.removeprefix("postgresql+asyncpg://")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = reaped_cpu(postmaster)
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", libpq, "-c", FLOOR],
                   stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.2)  # for the postmaster to reap psql's backend
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Sample(wall, cpu, reaped_cpu(postmaster) - reaped, 0, 0)


async def measured(engine: AsyncEngine, body: Callable[[], AsyncIterator[bytes]]) -> Sample:
    async with engine.connect() as conn:  # the pool's one connection: its backend's pid
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    postmaster = postmaster_of(pid)
    sink = os.open(os.devnull, os.O_WRONLY)
    size = 0
    pg0 = own_cpu(pid) + reaped_cpu(postmaster)
    cpu0, started = time.process_time(), time.perf_counter()
    try:
        async for data in body():
            os.write(sink, data)
            size += len(data)
    finally:
        os.close(sink)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    return Sample(wall, cpu, own_cpu(pid) + reaped_cpu(postmaster) - pg0, 0, size)


def copied(engine: AsyncEngine, fmt: str, chunk_bytes: int) -> Callable[[], AsyncIterator[bytes]]:
    """copy_blocks, framed as the encoders frame them: CSV header, JSON brackets."""
    async def body() -> AsyncIterator[bytes]:
        query = ExportQuery()
        if fmt == "csv":
            yield FORMATS["csv"](query.fields).begin()
        if fmt == "json":
            yield b"["
        lead = b"\n"
        async with snapshot(engine) as conn:
            async for _, data in copy_blocks(conn, query, fmt, chunk_bytes=chunk_bytes):
                yield lead + data if fmt == "json" else data
                lead = b",\n"
        if fmt == "json":
            yield b"]\n" if lead == b"\n" else b"\n]\n"
    return body


def piped(engine: AsyncEngine, fmt: str, url: str) -> Callable[[], AsyncIterator[bytes]]:
    settings = load_settings(database_url=url)
    return lambda: open_export(engine, ExportQuery(), fmt, settings)


async def digest(body: Callable[[], AsyncIterator[bytes]]) -> str:
    sha = hashlib.sha256()
    async for data in body():
        sha.update(data)
    return sha.hexdigest()


async def main(args: argparse.Namespace) -> None:
    engine = create_engine(args.url, pool_size=1, max_overflow=0)
    formats = args.formats.split(",")
    samples: dict[str, list[Sample]] = defaultdict(list)
    loads: list[tuple[float, float, float]] = []
    try:
        if args.verify:
            for fmt in formats:
                ours = await digest(copied(engine, fmt, args.chunk_bytes))
                theirs = await digest(piped(engine, fmt, args.url))
                print(f"verify {fmt}: {'same bytes' if ours == theirs else 'DIFFERENT'} {ours}")
        variants: dict[str, Callable[[], Awaitable[Sample]]] = {}
        for fmt in formats:
            variants[f"copy_blocks {fmt}"] = (
                lambda fmt=fmt: measured(engine, copied(engine, fmt, args.chunk_bytes))
            )
            if not args.skip_pipeline:
                variants[f"open_export {fmt}"] = (
                    lambda fmt=fmt: measured(engine, piped(engine, fmt, args.url))
                )
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        postmaster = postmaster_of(pid)
        for run in range(args.runs):
            loads.append(os.getloadavg())
            samples["psql \\copy csv"].append(psql_floor(args.url, postmaster))
            for name, measure in variants.items():
                samples[name].append(await measure())
                print(f"run {run + 1} {name}: {samples[name][-1].wall:.2f} s", file=sys.stderr)
            loads.append(os.getloadavg())
    finally:
        await engine.dispose()
    floor = statistics.median(s.wall for s in samples["psql \\copy csv"])
    print(f"{'':22} {'wall s':>7} {'x psql':>7} {'cpu s':>6} {'pg cpu s':>8} {'MB':>6}")
    for name, runs in samples.items():
        wall = statistics.median(s.wall for s in runs)
        cpu = statistics.median(s.cpu for s in runs)
        pg = [s.pg_cpu for s in runs if s.pg_cpu is not None]
        pg_text = f"{statistics.median(pg):8.2f}" if pg else f"{'-':>8}"
        size = max(s.size for s in runs) / 1e6
        print(f"{name:22} {wall:7.2f} {wall / floor:7.2f} {cpu:6.2f} {pg_text} {size:6.1f}")
    print("load average (1 min) during the runs:", " ".join(f"{load[0]:.2f}" for load in loads))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="postgresql+asyncpg://... with users")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--formats", default="csv,ndjson,json")
    parser.add_argument("--chunk-bytes", type=int, default=load_settings().chunk_bytes)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop",
                        help="uvloop is what uvicorn runs the service on")
    parser.add_argument("--skip-pipeline", action="store_true", help="only COPY and psql")
    parser.add_argument("--verify", action="store_true", help="compare bytes first (slow)")
    arguments = parser.parse_args()
    if arguments.loop == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(main(arguments))
