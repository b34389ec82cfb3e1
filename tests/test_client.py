"""The ingesting side (exporter.client, ``exporter pull``) against a real uvicorn, through a
proxy that cuts the connection at random byte offsets, and across a server killed and
started again. The oracle is the uninterrupted export: its bytes for files, its rows parsed
by Python's json and csv modules for the client."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tqdm import tqdm

from exporter.client import AsyncClient, Client, ExportError, Records, Refused, Retry
from exporter.pull import Target, pull_export, pull_job
from tests.conftest import (
    SEED,
    SEEDED_USERS,
    Database,
    build_database,
    free_port,
    running_server,
    scratch_postgres_url,
    stop_process,
)
from tests.proxy import CuttingProxy

FAST = Retry(attempts=6, first_wait=0.01, longest_wait=0.2)
QUERY = {"country": "DE,FR,JP,US,BR"}  # a filtered export, so that after= meets filters too
CUTS = 25


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Database:
    url = await scratch_postgres_url("client") if request.param == "postgresql" else None
    return await build_database(request.param, tmp_path_factory.mktemp("client"),
                                SEEDED_USERS, SEED, url)


@pytest.fixture(scope="module")
def server(seeded: Database) -> Iterator[str]:
    with running_server(seeded.env()) as url:
        yield url


def uninterrupted(server: str, fmt: str, query: dict[str, str] = QUERY) -> bytes:
    response = httpx.get(f"{server}/exports/users.{fmt}", params=query)
    assert response.status_code == 200
    return response.content


def parsed(body: bytes, fmt: str) -> list[dict[str, Any]]:
    """Python's own reading of a whole export: the oracle for the client's rows."""
    if fmt == "ndjson":
        return [json.loads(line) for line in body.decode().split("\n") if line]
    return list(csv.DictReader(io.StringIO(body.decode(), newline="")))


def cuts(size: int, seed: int) -> list[int]:
    """``CUTS`` byte offsets, each under a tenth of the body (so that all of them fall
    within one export), a few of them inside the response's headers."""
    rng = random.Random(seed)
    return [rng.randint(20, 400) if i % 8 == 0 else rng.randint(400, size // 10)
            for i in range(CUTS)]


# --- Records: the one place that decides where a row ends ----------------------------------

def test_records_split_anywhere_are_the_csv_modules_records() -> None:
    rows = [["id", "bio"], ["1", 'a "quoted"\r\nline'], ["2", ""], ["3", "\n\n"], ["4", ',"']]
    text = io.StringIO(newline="")
    csv.writer(text, lineterminator="\r\n").writerows(rows * 50)
    body = text.getvalue().encode()
    rng = random.Random(3)
    for _ in range(40):
        records, got, count = Records(csv_records=True), b"", 0
        points = sorted(rng.sample(range(1, len(body)), 30))
        for start, end in zip([0, *points], [*points, len(body)], strict=True):
            block, rows_in = records.feed(body[start:end])
            got, count = got + block, count + rows_in
        assert got == body and count == len(rows) * 50 and records.tail == b""
        assert list(csv.reader(io.StringIO(records.last.decode(), newline=""))) == [rows[-1]]


# --- Rows and files through cuts --------------------------------------------------------

@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_rows_through_25_cuts_are_the_uninterrupted_exports_rows(server: str, fmt: str) -> None:
    expected = parsed(uninterrupted(server, fmt), fmt)
    size = len(uninterrupted(server, fmt))
    with CuttingProxy(server, cuts(size, 1)) as proxy, Client(proxy.url, retry=FAST) as client:
        rows = list(client.rows("users", fmt, QUERY))
    assert proxy.cut >= 20
    assert rows == expected
    if fmt == "csv":
        assert any("\n" in row["bio"] for row in rows)  # quoted line breaks survived the cuts


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_a_pulled_file_through_25_cuts_has_the_uninterrupted_exports_bytes(
    server: str, fmt: str, tmp_path: Path
) -> None:
    expected = uninterrupted(server, fmt)
    out = tmp_path / f"users.{fmt}"
    with CuttingProxy(server, cuts(len(expected), 2)) as proxy, \
            Client(proxy.url, retry=FAST) as client:
        rows = pull_export(client, Target(proxy.url, "users", fmt, tuple(QUERY.items())), out)
    assert proxy.cut >= 20
    assert out.read_bytes() == expected
    assert rows == len(parsed(expected, fmt))
    assert not (tmp_path / f"users.{fmt}.part").exists()


async def test_the_async_client_through_cuts_yields_each_row_once(server: str) -> None:
    expected = parsed(uninterrupted(server, "ndjson"), "ndjson")
    with CuttingProxy(server, cuts(len(uninterrupted(server, "ndjson")), 3)) as proxy:
        async with AsyncClient(proxy.url, retry=FAST) as client:
            rows = [row async for row in client.rows("users", "ndjson", QUERY)]
    assert proxy.cut >= 20
    assert rows == expected


def test_limit_and_after_hold_across_cuts(server: str) -> None:
    query = {"after": "500", "limit": "1200"}
    expected = parsed(uninterrupted(server, "csv", query), "csv")
    with CuttingProxy(server, [3000, 9000, 20000, 41000]) as proxy, \
            Client(proxy.url, retry=FAST) as client:
        rows = list(client.rows("users", "csv", query))
    assert proxy.cut == 4
    assert len(rows) == 1200 and rows == expected and rows[0]["id"] == "501"


def test_a_refusal_is_raised_at_once_with_the_services_message(server: str) -> None:
    with Client(server, retry=FAST) as client:
        with pytest.raises(Refused) as refused:
            list(client.rows("users", "ndjson", {"country": "Germany"}))
    assert refused.value.status == 422 and "country" in refused.value.message
    with Client(server, retry=FAST) as client, pytest.raises(ValueError, match="key"):
        list(client.rows("users", "ndjson", {"fields": "email"}))


# --- A server killed and started again mid-pull -----------------------------------------

def start_server(database: Database, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "serve", "--port", str(port), "--log-level",
         "warning"], env=database.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    stop_process(process)
    raise RuntimeError("exporter serve did not start")


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_a_pull_goes_on_across_a_server_killed_and_started_again(
    seeded: Database, server: str, fmt: str, tmp_path: Path
) -> None:
    expected = uninterrupted(server, fmt)
    port = free_port()
    process = start_server(seeded, port)
    out = tmp_path / f"users.{fmt}"
    failures: list[BaseException] = []
    # Slowed so that the pull is under way for seconds; patient enough for a restart.
    with CuttingProxy(f"http://127.0.0.1:{port}", rate=len(expected) / 4) as proxy, \
            Client(proxy.url, retry=Retry(attempts=40, first_wait=0.1, longest_wait=0.5)
                   ) as client:
        def pull() -> None:
            try:
                pull_export(client, Target(proxy.url, "users", fmt, tuple(QUERY.items())), out,
                            quiet=True)
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)

        puller = threading.Thread(target=pull)
        puller.start()
        try:
            deadline = time.monotonic() + 20
            while proxy.sent < len(expected) // 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            process.wait()
            time.sleep(0.5)  # refused connections meanwhile
            process = start_server(seeded, port)
            puller.join(60)
        finally:
            stop_process(process)
    assert not failures, failures
    assert not puller.is_alive()
    assert out.read_bytes() == expected


# --- exporter pull on the command line ----------------------------------------------------

def run_pull(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    return subprocess.run([sys.executable, "-m", "exporter", "pull", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_pull_killed_midway_goes_on_from_its_partial_file(server: str, tmp_path: Path) -> None:
    expected = uninterrupted(server, "csv")
    with CuttingProxy(server, rate=len(expected) / 3) as slow:
        pull = subprocess.Popen(
            [sys.executable, "-m", "exporter", "pull", "--quiet",
             f"{slow.url}/exports/users.csv?country=DE,FR,JP,US,BR"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while slow.sent < len(expected) // 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        pull.send_signal(signal.SIGKILL)
        pull.wait()
    part = tmp_path / "users.csv.part"
    kept = part.stat().st_size
    assert 0 < kept < len(expected)
    with part.open("ab") as file:
        file.write(b'999999,"half a ro')  # what a crash mid-write leaves
    with CuttingProxy(server) as proxy:
        done = run_pull(f"{proxy.url}/exports/users.csv?country=DE,FR,JP,US,BR", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "users.csv").read_bytes() == expected
    assert not part.exists()
    assert proxy.sent < len(expected) - kept // 2  # the kept rows were not asked for again


def test_pull_exit_codes_name_what_went_wrong(server: str, tmp_path: Path) -> None:
    usage = run_pull("ftp://example.com/x", cwd=tmp_path)
    assert usage.returncode == 2 and "http(s) URL" in usage.stderr
    refused = run_pull(f"{server}/exports/nope.ndjson", cwd=tmp_path)
    assert refused.returncode == 2 and "nope" in refused.stderr
    unreachable = run_pull(f"http://127.0.0.1:{free_port()}/exports/users.ndjson",
                           "--attempts", "2", cwd=tmp_path)
    assert unreachable.returncode == 1 and "gave up" in unreachable.stderr
    assert not list(tmp_path.iterdir())


# --- A job's file -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def job(server: str) -> dict[str, Any]:
    response = httpx.post(f"{server}/jobs", json={"format": "csv", "filters": {"plan": "pro"}})
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 30
    while (done := httpx.get(f"{server}/jobs/{response.json()['id']}").json())["status"] in (
            "queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert done["status"] == "succeeded", done
    return done  # type: ignore[no-any-return]


def test_a_job_file_pulled_through_cuts_has_the_jobs_sha256(
    server: str, job: dict[str, Any], tmp_path: Path
) -> None:
    whole = httpx.get(f"{server}{job['file']['url']}").content
    offsets = [random.Random(4).randint(100, len(whole) // 6) for _ in range(8)]
    with CuttingProxy(server, offsets) as proxy, Client(proxy.url, retry=FAST) as client:
        out = pull_job(client, job["id"], tmp_path / "job.csv", quiet=True)
    assert proxy.cut == 8
    assert hashlib.sha256(out.read_bytes()).hexdigest() == job["file"]["sha256"]
    assert out.read_bytes() == whole
    # Range resumes: each cut costs its own bytes once, not the file again.
    assert proxy.sent < len(whole) + 8 * 1000


def test_a_damaged_partial_job_file_is_detected_and_fetched_again(
    server: str, job: dict[str, Any], tmp_path: Path
) -> None:
    whole = httpx.get(f"{server}{job['file']['url']}").content
    name = job["file"]["name"]
    damaged = bytearray(whole[: len(whole) // 2])
    damaged[100] ^= 0x20
    (tmp_path / f"{name}.part").write_bytes(bytes(damaged))
    done = run_pull("--job", job["id"], "--server", server, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / name).read_bytes() == whole
    assert "sha256 checked" in done.stderr


def test_a_job_url_works_as_well_as_its_id(server: str, job: dict[str, Any], tmp_path: Path
                                           ) -> None:
    done = run_pull(f"{server}/jobs/{job['id']}/download", "-o", "mine.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256((tmp_path / "mine.csv").read_bytes()).hexdigest() == \
        job["file"]["sha256"]



def test_on_a_terminal_pull_shows_rows_of_the_announced_total(server: str, tmp_path: Path
                                                              ) -> None:
    expected = parsed(uninterrupted(server, "ndjson"), "ndjson")
    leader, follower = os.openpty()  # standard error is a terminal, as in a shell
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "exporter", "pull",
             f"{server}/exports/users.ndjson?country=DE,FR,JP,US,BR"],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=follower, timeout=60)
        os.close(follower)
        shown = b""
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all of it was read
                break
            if not data:
                break
            shown += data
    finally:
        os.close(leader)
    assert done.returncode == 0
    last = shown.decode(errors="replace").replace("\r", "\n").strip().splitlines()
    bar = [line for line in last if "rows" in line and "%" in line]
    total = tqdm.format_sizeof(len(expected))  # 1.26k: as the bar writes numbers
    assert bar and f"{total}/{total}" in bar[-1] and "100%" in bar[-1], last


# --- Tables whose keys are not plain integers ---------------------------------------------

ODD_SQL = [
    "CREATE TABLE readings (at NUMERIC(30,6) PRIMARY KEY, note TEXT)",
    "CREATE TABLE tickets (id INTEGER PRIMARY KEY, after_id INTEGER)",
    "CREATE TABLE events (at TIMESTAMP PRIMARY KEY, what TEXT)",
    "CREATE TABLE codes (code TEXT PRIMARY KEY, note TEXT)",  # SQLite: NULL allowed
]


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite file of a user's own: a decimal key, a column named after_id, a timestamp
    key with fractions of a second."""
    data = tmp_path_factory.mktemp("odd")
    with sqlite3.connect(data / "odd.db") as conn:
        for statement in ODD_SQL:
            conn.execute(statement)
        conn.executemany("INSERT INTO readings VALUES (?, ?)",
                         [(n / 1e6, f"r{n}") for n in range(1, 301)])
        conn.executemany("INSERT INTO tickets VALUES (?, ?)",
                         [(n, n % 3) for n in range(1, 3001)])
        conn.executemany("INSERT INTO events VALUES (?, ?)",
                         [(f"2024-03-01 12:00:{n // 4:02d}.{n % 4 * 25:02d}", f"e{n}")
                          for n in range(200)])
        # 100 rows of 500 bytes whose key is NULL (they come first), then 300 keyed ones.
        conn.executemany("INSERT INTO codes VALUES (?, ?)",
                         [(None, "n" * 500)] * 100 + [(f"c{n:04d}", "c" * 300)
                                                      for n in range(300)])
    conn.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env |= {"EXPORTER_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'odd.db'}",
            "EXPORTER_DATA_DIR": str(data / "state")}
    subprocess.run([sys.executable, "-m", "exporter", "migrate"], env=env, check=True,
                   capture_output=True, timeout=120)
    with running_server(env) as url:
        yield url


def test_a_decimal_key_resumes_after_its_exported_text(odd: str) -> None:
    expected = parsed(httpx.get(f"{odd}/exports/readings.ndjson").content, "ndjson")
    with CuttingProxy(odd, [700, 2100, 5000]) as proxy, Client(proxy.url, retry=FAST) as c:
        rows = list(c.rows("readings", "ndjson"))
    assert proxy.cut == 3 and rows == expected and len(rows) == 300


def test_a_column_named_after_id_stays_a_filter_across_cuts(odd: str) -> None:
    query = {"after_id": "1"}
    expected = parsed(httpx.get(f"{odd}/exports/tickets.csv", params=query).content, "csv")
    # Each cut falls inside the export (the first connection also carried GET /tables).
    with CuttingProxy(odd, [4000, 2500, 2500]) as proxy, \
            Client(proxy.url, retry=FAST) as client:
        rows = list(client.rows("tickets", "csv", query))
    assert proxy.cut == 3 and rows == expected and {row["after_id"] for row in rows} == {"1"}


def test_a_key_exported_to_the_second_is_not_resumed_into_duplicates(odd: str) -> None:
    with CuttingProxy(odd, [1500]) as proxy, Client(proxy.url, retry=FAST) as client:
        seen: list[dict[str, Any]] = []
        with pytest.raises(ExportError, match="exactly"):
            for row in client.rows("events", "ndjson"):
                seen.append(row)
    assert len(seen) == len({json.dumps(row) for row in seen}) > 0  # no duplicate


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_a_cut_after_the_rows_whose_key_holds_null_resumes_and_one_among_them_stops(
    odd: str, fmt: str,
) -> None:
    expected = parsed(httpx.get(f"{odd}/exports/codes.{fmt}").content, fmt)
    assert len(expected) == 400 and not expected[99]["code"] and expected[100]["code"]
    with CuttingProxy(odd, [80_000]) as proxy, Client(proxy.url, retry=FAST) as client:
        rows = list(client.rows("codes", fmt))
    assert proxy.cut == 1 and rows == expected
    # Inside the first 50 KB: no after= comes after a NULL key (an empty text, in CSV).
    with CuttingProxy(odd, [20_000]) as proxy, Client(proxy.url, retry=FAST) as client:
        seen: list[dict[str, Any]] = []
        with pytest.raises(ExportError, match="holds NULL"):
            for row in client.rows("codes", fmt):
                seen.append(row)
    assert 0 < len(seen) < 100 and seen == expected[: len(seen)]


def test_limit_0_still_asks_and_a_part_of_another_export_is_refused(
    server: str, tmp_path: Path
) -> None:
    header_only = run_pull(f"{server}/exports/users.csv?limit=0", cwd=tmp_path)
    assert header_only.returncode == 0, header_only.stderr
    assert (tmp_path / "users.csv").read_bytes() == uninterrupted(server, "csv", {"limit": "0"})
    refused = run_pull(f"{server}/exports/users.csv?limit=-1", "-o", "neg.csv", cwd=tmp_path)
    assert refused.returncode == 2 and "limit" in refused.stderr
    with CuttingProxy(server, rate=200_000) as slow:
        first = subprocess.Popen(
            [sys.executable, "-m", "exporter", "pull", "--quiet", "-o", "mixed.csv",
             f"{slow.url}/exports/users.csv?fields=id,email"], cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while slow.sent < 20_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
    other = run_pull(f"{server}/exports/users.csv", "-o", "mixed.csv", cwd=tmp_path)
    assert other.returncode == 2 and "fields" in other.stderr and "remove it" in other.stderr
    assert not (tmp_path / "mixed.csv").exists()


def test_an_empty_job_file_and_a_part_longer_than_the_file(server: str, tmp_path: Path) -> None:
    made = httpx.post(f"{server}/jobs", json={"format": "ndjson", "filters": {"country": "ZZ"}})
    job_id = made.json()["id"]
    deadline = time.monotonic() + 30
    while (job := httpx.get(f"{server}/jobs/{job_id}").json())["status"] != "succeeded":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    empty = run_pull("--job", job_id, "--server", server, "-o", "empty.ndjson", cwd=tmp_path)
    assert empty.returncode == 0, empty.stderr
    assert (tmp_path / "empty.ndjson").read_bytes() == b""
    (tmp_path / "long.ndjson.part").write_bytes(b"x" * 1000)
    again = run_pull("--job", job_id, "--server", server, "-o", "long.ndjson", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "long.ndjson").read_bytes() == b""
