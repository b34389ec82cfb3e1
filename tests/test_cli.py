"""The ``exporter`` command line: the same pipeline as HTTP, writing to files and stdout."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from exporter.app import create_app
from tests.conftest import Database, free_port, serving

QUERY = {"country": "DE,FR,JP", "fields": "id,full_name,lifetime_value,bio,is_active,created_at"}


def exporter(database: Database, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args], env=database.env(), capture_output=True,
        timeout=120,
    )


@pytest.mark.parametrize("fmt", ["csv", "tsv", "ndjson", "json", "parquet"])
async def test_cli_export_to_stdout_equals_the_http_body(
    database: Database, client: httpx.AsyncClient, fmt: str
) -> None:
    flags = [f"--{name}={value}" for name, value in QUERY.items()]
    result = exporter(database, "export", "--format", fmt, *flags)
    assert result.returncode == 0, result.stderr
    http = await client.get(f"/exports/users.{fmt}", params=QUERY)
    assert result.stdout == http.content
    assert len(result.stdout) > 1000


async def test_cli_export_to_a_file_equals_the_http_body(
    database: Database, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    out = tmp_path / "users.ndjson"
    result = exporter(database, "export", "--format", "ndjson", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (await client.get("/exports/users.ndjson")).content
    assert list(tmp_path.iterdir()) == [out], "no temporary file is left behind"


def test_cli_export_rejects_a_bad_filter_naming_it(database: Database, tmp_path: Path) -> None:
    out = tmp_path / "users.csv"
    result = exporter(database, "export", "--format", "csv", "--plan", "gold", "--out", str(out))
    assert result.returncode == 2
    assert b"plan='gold'" in result.stderr and b"enterprise" in result.stderr
    assert not out.exists()


def test_cli_export_that_fails_midway_leaves_no_file(tmp_path: Path) -> None:
    import sqlite3

    env = {**Database("sqlite", "", tmp_path).env(), "EXPORTER_DATABASE_URL": "",
           "EXPORTER_BATCH_ROWS": "10"}
    empty_demo = ["seed", "--users", "0", "--images", "1", "--large-file-mb", "0"]
    subprocess.run([sys.executable, "-m", "exporter", *empty_demo], env=env, check=True)
    good = [(i, f"u{i}@x", "A", "DE", None, "free", 1, 1, "2024-01-01 00:00:00.000000", None,
             "fine", None) for i in range(1, 101)]
    with sqlite3.connect(tmp_path / "exporter.db") as conn:
        conn.executemany(f"INSERT INTO users VALUES ({','.join('?' * 12)})", good)
        conn.execute("UPDATE users SET bio = CAST(X'FF' AS TEXT) WHERE id = 95")
    out = tmp_path / "users.csv"
    command = [sys.executable, "-m", "exporter", "export", "--format", "csv"]
    to_file = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True)
    assert to_file.returncode == 1
    assert b"failed" in to_file.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "users" in p.name] == []
    to_stdout = subprocess.run(command, env=env, capture_output=True)
    assert to_stdout.returncode == 1
    assert to_stdout.stdout.count(b"\r\n") > 5, "it failed midway, after the first batch"


def test_a_text_holding_a_nul_fails_csv_and_tsv_and_goes_whole_in_ndjson(tmp_path: Path) -> None:
    """SQLite keeps a NUL inside a text; CSV and TSV would have ended it there."""
    import json
    import sqlite3

    with sqlite3.connect(tmp_path / "own.db") as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, day DATE)")
        conn.executemany("INSERT INTO notes VALUES (?, ?, ?)",
                         [(1, "fine", "2024-01-01"), (2, "before\x00, after", None),
                          (3, "fine too", "2024-01-02\x00garbage")])
    env = {**Database("sqlite", "", tmp_path).env(),
           "EXPORTER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'own.db'}"}
    command = [sys.executable, "-m", "exporter", "export", "--table", "notes", "--format"]
    for fmt in ("csv", "tsv"):
        out = tmp_path / f"notes.{fmt}"
        result = subprocess.run([*command, fmt, "--out", str(out)], env=env,
                                capture_output=True, timeout=120)
        assert result.returncode == 1, result.stderr
        assert b"NUL character" in result.stderr and b"NDJSON" in result.stderr
        assert not out.exists()
    whole = subprocess.run([*command, "ndjson"], env=env, capture_output=True, timeout=120)
    assert whole.returncode == 0, whole.stderr
    assert [(row["body"], row["day"]) for row in map(json.loads, whole.stdout.splitlines())
            ] == [("fine", "2024-01-01"), ("before\x00, after", None),
                  ("fine too", "2024-01-02\x00garbage")]  # as stored, not 2024-01-02
    days = [*command, "csv", "--fields", "id,day"]
    assert subprocess.run(days, env=env, capture_output=True, timeout=120).returncode == 1


def test_cli_export_to_a_missing_directory_is_a_usage_error(
    database: Database, tmp_path: Path
) -> None:
    result = exporter(database, "export", "--format", "csv", "--out", str(tmp_path / "no" / "x"))
    assert result.returncode == 2
    assert b"existing directory" in result.stderr


def test_python_dash_m_exporter_shows_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True)
    assert result.returncode == 0
    for command in (b"serve", b"migrate", b"seed", b"export"):
        assert command in result.stdout


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_beyond_loopback_without_keys_exits_before_binding_naming_the_ways_out(
    sqlite_database: Database, host: str
) -> None:
    result = subprocess.run(  # at uvicorn's own log level, which says so when it binds
        [sys.executable, "-m", "exporter", "serve", "--host", host, "--port", str(free_port())],
        env=sqlite_database.env(), capture_output=True, timeout=30,
    )
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert f"refusing to listen on {host}, which is not a loopback address" in stderr
    assert "EXPORTER_API_KEYS=" in stderr and "EXPORTER_ALLOW_OPEN=true" in stderr
    assert "Uvicorn running" not in stderr + result.stdout.decode()


def test_serve_on_all_interfaces_starts_when_told_it_is_open(sqlite_database: Database) -> None:
    env = sqlite_database.env(EXPORTER_ALLOW_OPEN="true", EXPORTER_RUN_WORKER="false")
    with serving(env, host="0.0.0.0") as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert httpx.get(f"{server.url}/files").status_code == 200, "open: no key needed"


def test_serve_on_all_interfaces_starts_with_api_keys_and_asks_for_one(
    sqlite_database: Database,
) -> None:
    env = sqlite_database.env(EXPORTER_API_KEYS="cli-key-Pq3", EXPORTER_RUN_WORKER="false")
    with serving(env, host="0.0.0.0") as server:
        assert httpx.get(f"{server.url}/files").status_code == 401
        answer = httpx.get(f"{server.url}/files", headers={"Authorization": "Bearer cli-key-Pq3"})
        assert answer.status_code == 200


def test_a_bad_key_list_stops_every_command_without_showing_a_key(
    sqlite_database: Database,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "migrate"], capture_output=True, timeout=30,
        env=sqlite_database.env(EXPORTER_API_KEYS="hunter2-Xy,,other-Zw"),
    )
    assert result.returncode == 2
    assert b"EXPORTER_API_KEYS: key 2 of 3 is empty" in result.stderr
    assert b"hunter2" not in result.stderr and b"other-Zw" not in result.stderr


# Any table, on a database the service did not create.

@pytest.fixture(scope="module")
async def foreign_client(foreign_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(foreign_database.settings(run_worker=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as c:
            yield c


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "json"])
async def test_cli_export_of_a_foreign_table_to_a_file_equals_the_http_body(
    foreign_database: Database, foreign_client: httpx.AsyncClient, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"orders.{fmt}"
    result = exporter(foreign_database, "export", "--table", "orders", "--format", fmt,
                      "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (await foreign_client.get(f"/exports/orders.{fmt}")).content
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


async def test_cli_where_filters_a_foreign_table_as_the_query_string_does(
    foreign_database: Database, foreign_client: httpx.AsyncClient,
) -> None:
    where = {"customer": "customer 3,customer 5", "total__gte": "10", "placed_at__lt":
             "2024-01-10", "fields": "id,total"}
    result = exporter(foreign_database, "export", "--table", "orders", "--format", "csv",
                      "--fields", where.pop("fields"),
                      *(f"--where={name}={value}" for name, value in where.items()))
    assert result.returncode == 0, result.stderr
    http = await foreign_client.get("/exports/orders.csv", params={**where, "fields": "id,total"})
    assert result.stdout == http.content
    assert 3 < result.stdout.count(b"\r\n") < 100


@pytest.mark.parametrize(("args", "says"), [
    (["--table", "customers"], b"--table: no exportable table or view named 'customers'; "
                               b"valid: accounts, big_orders, orders, report_2024"),
    (["--table", "orders", "--where", "nope=1"], b"valid values: fields, limit, after, id, "
                                                 b"customer, total, placed_at"),
    (["--table", "orders", "--where", "total=ten"], b"column 'total' is numeric"),
    (["--table", "orders", "--fields", "id,password_hash"], b"unknown field 'password_hash'"),
    ([], b"no exportable table or view named 'users'"),
])
def test_cli_export_of_a_bad_table_or_filter_exits_2_naming_the_valid_ones(
    foreign_database: Database, tmp_path: Path, args: list[str], says: bytes
) -> None:
    out = tmp_path / "out.csv"
    result = exporter(foreign_database, "export", "--format", "csv", *args, "--out", str(out))
    assert result.returncode == 2
    assert says in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == [], "no file, not even a partial one"


def test_cli_export_refuses_a_hidden_column_as_an_absent_one(
    foreign_database: Database,
) -> None:
    env = foreign_database.env(EXPORTER_HIDDEN_COLUMNS="accounts.password_hash")
    command = [sys.executable, "-m", "exporter", "export", "--table", "accounts",
               "--format", "ndjson"]
    whole = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert whole.returncode == 0 and b"hash" not in whole.stdout
    asked = subprocess.run([*command, "--where", "password_hash=hash1"], env=env,
                           capture_output=True, timeout=120)
    assert asked.returncode == 2
    assert b"has no column 'password_hash'" in asked.stderr
