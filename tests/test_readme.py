"""Every curl line of the README runs, as written, against a real server; so do its
``exporter pull`` lines and its Python client blocks.

A newcomer copies these lines first; a line that fails (a renamed parameter, an option
pair that curl refuses, an endpoint that moved) is the first thing they would meet. The
server runs on the embedded default, seeded with a small demo plus two tables of a user's
own, the ones the README's examples name (`orders`, `Order Items`); the sample job and
schedule ids are swapped for real ones.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import serving

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
README_BASE = "http://127.0.0.1:8000"
SAMPLE_JOB = "3f0c9e2a7b5d4e1f8a6c2b9d0e7f1a3c"
SAMPLE_SCHEDULE = "9b1e4d7c2a8f4e6b9c3d5a7e1f2b4c6d"
KEY = "readme-test-key"
CURL_OPTIONS = ["-sS", "--max-time", "60", "-w", "\n%{http_code}"]

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")


def readme_curl_lines(program: str = "curl ") -> list[str]:
    """The curl commands (or another program's) of the README's shell blocks that talk to
    the service, as the shell would read them: continuation lines joined, a quoted argument
    running over lines kept whole."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.DOTALL):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            if pending.lstrip().startswith(program) and README_BASE in pending:
                commands.append(pending.strip())
            pending = ""
    return commands


def user_tables(database: Path) -> None:
    """Two tables of a user's own, as the README's examples name them."""
    with sqlite3.connect(database) as conn:
        conn.executescript("""
            CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL,
                                 placed_at TIMESTAMP, total NUMERIC(10,2));
            CREATE TABLE "Order Items" (order_id INTEGER, sku TEXT, qty INTEGER,
                                        PRIMARY KEY (order_id, sku));
        """)
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", [
            (n, ("paid", "shipped", "new")[n % 3], f"2024-{n % 12 + 1:02d}-01 10:00:00",
             n * 1.5) for n in range(1, 61)
        ])
        conn.executemany('INSERT INTO "Order Items" VALUES (?, ?, ?)', [
            (n // 3 + 1, f"B-{n % 3}", n) for n in range(90)
        ])


def finished_job(base: str, body: dict[str, object]) -> str:
    job = httpx.post(f"{base}/jobs", json=body, timeout=10).json()
    deadline = time.monotonic() + 30
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = httpx.get(f"{base}/jobs/{job['id']}", timeout=10).json()
    assert job["status"] == "succeeded", job
    return str(job["id"])


def test_every_curl_line_of_the_readme_runs_as_written(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"PATH": "/usr/bin:/bin", "EXPORTER_DATA_DIR": str(data_dir), "HOME": str(tmp_path)}
    seeded = subprocess.run(
        [sys.executable, "-m", "exporter", "seed", "--users", "300", "--images", "2",
         "--large-file-mb", "1"], env=env, capture_output=True, text=True, timeout=120,
    )
    assert seeded.returncode == 0, seeded.stderr
    user_tables(data_dir / "exporter.db")
    work = tmp_path / "work"
    work.mkdir()
    large = data_dir / "files" / "large-file.bin"

    with serving(env) as open_server, serving({**env, "EXPORTER_API_KEYS": KEY}) as keyed:
        job_id = finished_job(open_server.url, {"table": "orders", "format": "ndjson",
                                                "compression": "gzip"})
        # The lines that cancel or delete get a job and a schedule of their own, so that
        # the lines after them still find theirs.
        doomed_job = finished_job(open_server.url, {"table": "orders", "format": "csv"})
        schedule, doomed_schedule = (
            httpx.post(f"{open_server.url}/schedules", timeout=10, json={
                "cron": "0 2 * * *", "job": {"table": "orders", "format": "csv"}}).json()["id"]
            for _ in range(2)
        )
        lines = readme_curl_lines()
        assert len(lines) >= 30, "the README lost its curl lines"
        for line in lines:
            keyed_line = "$KEY" in line
            base = keyed.url if keyed_line else open_server.url
            ending = "/cancel" in line or "DELETE" in line
            args = [
                arg.replace(README_BASE, base)
                .replace(SAMPLE_JOB, doomed_job if ending else job_id)
                .replace(SAMPLE_SCHEDULE, doomed_schedule if ending else schedule)
                .replace("$KEY", KEY)
                for arg in shlex.split(line, comments=True)
            ]
            resumed = work / "large-file.bin"
            if "-C" in args and resumed.exists():  # an interrupted download, to resume
                resumed.write_bytes(resumed.read_bytes()[: large.stat().st_size // 2])
            live = "follow=true" in line or "/streams/" in line
            options = [*CURL_OPTIONS[:2], "2", *CURL_OPTIONS[3:]] if live else CURL_OPTIONS
            done = subprocess.run(
                [args[0], *options, *args[1:]], cwd=work, capture_output=True, timeout=90,
            )
            if live:  # it never ends by itself: curl gives up after 2 s (28), rows in hand
                assert done.returncode == 28 and b'{"id":' in done.stdout, (line, done)
                assert done.stdout.endswith(b"\n200"), (line, done.stdout[-300:])
                continue
            assert done.returncode == 0, (line, done.stderr.decode())
            status = int(done.stdout.rsplit(b"\n", 1)[-1])
            # Canceling a job that has already succeeded is the documented 409.
            allowed = {409} if "/cancel" in line else set()
            assert status < 400 or status in allowed, (line, status, done.stdout[-300:])
            if "large-file.bin" in line and "-O" in args:
                digest = hashlib.sha256(resumed.read_bytes()).hexdigest()
                assert digest == hashlib.sha256(large.read_bytes()).hexdigest(), line

        # The ingesting side: exporter pull and the client, against the same server.
        pulls = readme_curl_lines("exporter pull ")
        assert len(pulls) >= 3, "the README lost its exporter pull lines"
        for line in pulls:
            args = [arg.replace(README_BASE, open_server.url).replace(SAMPLE_JOB, job_id)
                    for arg in shlex.split(line, comments=True)]
            done = subprocess.run([sys.executable, "-m", "exporter", *args[1:]], cwd=work,
                                  env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, (line, done.stderr)
        pulled = (work / "users.ndjson").read_bytes()
        assert pulled == httpx.get(f"{open_server.url}/exports/users.ndjson",
                                   params={"country": "DE"}).content
        assert (work / "paid.csv").read_bytes().startswith(b"id,status,placed_at,total\r\n")
        programs = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
        assert any("exporter.client" in program for program in programs)
        for program in programs:
            done = subprocess.run([sys.executable, "-c", program.replace(README_BASE,
                                                                          open_server.url)],
                                  cwd=work, env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (program, done.stderr)
            assert done.stdout.count("\n") > 0, program  # it printed rows
