"""``/health`` under load: its latency, every 10 ms, while full CSV exports run at once."""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import TYPE_CHECKING

import httpx

from bench.probes import BenchError, percentile

if TYPE_CHECKING:
    from bench.run import Bench

HEALTH_INTERVAL_S = 0.010
CONCURRENT_EXPORTS = 4  # the load the row with a goal is measured under
MORE_CONCURRENT_EXPORTS = 8  # reported beside it: how the latency grows with the load


def during_exports(bench: Bench, base: str, key: str, exports: int) -> None:
    """``/health`` every 10 ms while ``exports`` full CSV downloads run at once."""
    p50s, p99s, counts = [], [], []
    # The raw runs under the first load were named before there was a second: no count.
    label = "health" if exports == CONCURRENT_EXPORTS else f"health {exports}"
    for run in range(1, bench.args.runs + 1):
        bench.say(f"/health under {exports} concurrent CSV exports: "
                  f"run {run}/{bench.args.runs}")
        started = time.perf_counter()
        latencies = one_run(bench, base, exports)
        bench.record(f"{label} run s", time.perf_counter() - started)
        p50s.append(percentile(latencies, 50) * 1000)
        p99s.append(percentile(latencies, 99) * 1000)
        counts.append(len(latencies))
        bench.record(f"{label} max ms", max(latencies) * 1000)
    bench.raw[f"{label} p50 ms"], bench.raw[f"{label} p99 ms"] = p50s, p99s
    bench.raw[f"{label} samples"] = [float(c) for c in counts]
    p50, p99 = statistics.median(p50s), statistics.median(p99s)
    row = bench.rows[key]
    row.exporter = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    row.anchor = (f"{int(statistics.median(counts))} requests in "
                  f"{bench.median(f'{label} run s'):.0f} s, one per 10 ms at most")
    row.value = f"p99 {p99:.1f} ms"
    row.result = row.judge(p99) if row.goals else "info"


def one_run(bench: Bench, base: str, concurrent: int = CONCURRENT_EXPORTS) -> list[float]:
    url = f"{base}/exports/users.csv"
    exports = [
        bench.procs.start(
            f"health-curl-{i}",
            ["curl", "-sS", "--noproxy", "*", "--max-time", str(int(bench.args.timeout)),
             "-o", "/dev/null", "-w", "%{http_code}", url],
            stdout=subprocess.PIPE,
        )
        for i in range(concurrent)
    ]
    latencies: list[float] = []
    deadline = time.monotonic() + bench.args.timeout
    try:
        with httpx.Client(base_url=base, trust_env=False, timeout=10) as client:
            client.get("/health").raise_for_status()  # connect outside the measurement
            next_at = time.perf_counter()
            while any(p.poll() is None for p in exports) or len(latencies) < 20:
                if time.monotonic() > deadline:
                    raise BenchError("concurrent exports did not finish in time")
                pause = next_at - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                started = time.perf_counter()
                client.get("/health").raise_for_status()
                latencies.append(time.perf_counter() - started)
                next_at = max(next_at + HEALTH_INTERVAL_S, time.perf_counter())
        for proc in exports:
            assert proc.stdout is not None
            status = proc.stdout.read().decode().strip()
            proc.wait(timeout=bench.args.timeout)
            if proc.returncode != 0 or status != "200":
                raise BenchError(f"a concurrent export failed: curl exit "
                                 f"{proc.returncode}, HTTP {status}")
    finally:
        for proc in exports:
            bench.procs.stop(proc)
    return latencies
