"""The probes: what the bench reads off a download, a command or a running process (wall
and CPU seconds, RSS, bytes and records), the nearest-rank percentile it reports, and the
error of a measurement that could not be taken."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import resource
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
RSS_INTERVAL_S = 0.050


class BenchError(Exception):
    """A measurement could not be taken; its row says why, the others go on."""


@dataclass
class Download:
    seconds: float
    bytes: int


def curl(url: str, timeout: float, out: str = "/dev/null") -> Download:
    """One full download with curl; its own ``time_total`` is the wall time."""
    command = [
        "curl", "-sS", "--noproxy", "*", "--max-time", str(int(timeout)), "-o", out,
        "-w", "%{http_code} %{size_download} %{time_total}", url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 30)
    if done.returncode != 0:
        raise BenchError(f"curl {url}: exit {done.returncode}: {done.stderr.strip()}")
    code, size, total = done.stdout.split()
    if code != "200":
        raise BenchError(f"curl {url}: HTTP {code}")
    return Download(float(total), int(size))


def timed_cpu(command: Sequence[str], timeout: float) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of a command whose output goes to /dev/null."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        list(command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(
            f"{shlex.join(command)}: exit {done.returncode}: {done.stderr.decode()[-300:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def timed(command: Sequence[str], timeout: float) -> float:
    return timed_cpu(command, timeout)[0]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a running process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Peak VmRSS of one process, sampled every 50 ms on a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, BenchError):
                self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
                self.samples += 1
            if self._stop.wait(RSS_INTERVAL_S):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def count_csv_records(path: Path) -> int:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1  # minus the header


def count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as handle:
        while block := handle.read(MB):
            count += block.count(b"\n")
    return count
