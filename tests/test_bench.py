"""The benchmark harness runs end to end on a tiny data set and writes its whole table.

Only that it works is checked here, never how fast anything is: timing goals live in the
benchmark's own table (docs/benchmarks.md), not in unit tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.probes import percentile
from bench.processes import Processes
from bench.report import ROW_LABELS, fresh_rows, render_table
from bench.run import Bench, parse_args

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("sqlite3")),
    reason="the bench needs the curl and sqlite3 command-line tools",
)
def test_quick_run_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--users", "2000", "--runs", "1",
         "--large-file-mb", "1", "--data-dir", str(tmp_path / "data"), "--out", str(out),
         "--storm-clients", "20", "--no-datasette", "--no-nginx", "--no-seed-time",
         "--no-install"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| what | exporter | anchor |")
    for label in ROW_LABELS:
        rows = [line for line in table if line.startswith(f"| {label} |")]
        assert len(rows) == 1, f"row {label!r} missing from the table"
        assert "error" not in rows[0], rows[0]
    by_label = {line.split(" | ")[0][2:]: line.rsplit(" | ", 1)[1] for line in table[1:]}
    results = {key: by_label[row.what] for key, row in fresh_rows().items()}
    # Measured for real even on 2000 rows: the downloads of both tables (the wide one made
    # with plain SQL, as a user's own), memory, /health and the naive peer.
    for key in ("csv", "ndjson", "json", "wide_csv", "wide_ndjson", "wide_json", "mem_idle",
                "mem_growth", "health", "storm", "pull"):
        assert results[key].startswith(("PASS", "FAIL")), (key, results[key])
    assert results["count"] == "info |"
    assert results["naive"] == "info |"
    assert results["health_more"] == "info |"
    assert "n/a: skipped (--no-datasette)" in results["datasette"]
    assert "./scripts/bench --quick --users 2000" in report
    assert "## Machine" in report and "nproc:" in report and "## Versions" in report
    assert "README" not in done.stderr, "a quick run must not touch the README"
    assert not list((tmp_path / "data").glob("seed-time-*"))


def test_the_readme_shows_the_latest_table() -> None:
    readme = (ROOT / "README.md").read_text()
    docs = ROOT / "docs" / "benchmarks.md"
    assert "./scripts/bench" in readme and "docs/benchmarks.md" in readme
    if docs.exists():
        table = "\n".join(line for line in docs.read_text().splitlines() if line.startswith("|"))
        assert table in readme, "README's table differs from docs/benchmarks.md"


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0


def test_table_escapes_pipes() -> None:
    rows = fresh_rows()
    rows["csv"].anchor = "a | b"
    assert "a \\| b" in render_table(rows)


def test_a_row_reading_a_measurement_never_taken_says_which(tmp_path: Path) -> None:
    bench = Bench(parse_args(["--quick"]), Processes(tmp_path), tmp_path)

    def datasette_against_a_failed_download() -> None:
        bench.median("exporter csv")

    bench.stage(["datasette"], datasette_against_a_failed_download)
    assert bench.rows["datasette"].result == (
        "error: no runs of 'exporter csv': the stage that measures it failed or was skipped")
