"""``GET /tables`` and the exposure settings, on a database the service did not create:
what is listed, what is kept out (the service's own state, tables not exposed, hidden
columns), and a schema that changes while the service runs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from exporter.app import create_app
from exporter.catalog import Catalog
from tests.conftest import FOREIGN_ORDERS, Database, build_foreign_database, serving

FOREIGN_TABLES = ["accounts", "big_orders", "orders", "report_2024", "report_2025", "tokens"]
STATE_TABLES = ["export_jobs", "schedules", "alembic_version"]
DECLARED = {  # orders' columns as each backend declares them
    "sqlite": ["INTEGER", "TEXT", "NUMERIC(10,2)", "TIMESTAMP"],
    "postgresql": ["integer", "text", "numeric(10,2)", "timestamp without time zone"],
}


@pytest.fixture
def foreign(foreign_database: Database) -> Database:
    """Read only: tests that change the schema build their own."""
    return foreign_database


@asynccontextmanager
async def service(database: Database, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(database.settings(run_worker=False, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as c:
            yield c


async def run_sql(database: Database, *statements: str) -> None:
    """As the user's own application: an engine that knows nothing of the service."""
    engine = create_async_engine(database.url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


# What is listed.

async def test_tables_lists_every_table_and_view_of_a_database_the_service_did_not_create(
    foreign: Database,
) -> None:
    async with service(foreign) as client:
        listed = (await client.get("/tables")).json()["tables"]
    by_name = {table["name"]: table for table in listed}
    assert [table["name"] for table in listed] == FOREIGN_TABLES
    orders = by_name["orders"]
    assert orders["type"] == "table" and orders["primary_key"] == ["id"]
    assert orders["columns"] == [
        {"name": name, "type": declared, "kind": kind, "nullable": nullable}
        for name, declared, kind, nullable in zip(
            ["id", "customer", "total", "placed_at"], DECLARED[foreign.backend],
            ["integer", "text", "numeric", "timestamp"], [False, False, True, True],
            strict=True,
        )
    ]
    assert orders["approximate_rows"] == FOREIGN_ORDERS
    assert orders["exports"]["csv"] == "http://exporter/exports/orders.csv"
    assert orders["exports"]["ndjson"] == "http://exporter/exports/orders.ndjson"
    assert by_name["report_2024"]["primary_key"] == ["region", "month"]
    view = by_name["big_orders"]
    assert view["type"] == "view" and view["primary_key"] == []
    assert [column["name"] for column in view["columns"]] == ["id", "customer", "total"]


async def test_every_listed_table_exports_with_its_rows(foreign: Database) -> None:
    async with service(foreign) as client:
        for name in FOREIGN_TABLES:
            response = await client.get(f"/exports/{name}.ndjson")
            assert response.status_code == 200, (name, response.text)
        orders = (await client.get("/exports/orders.csv")).text.split("\r\n")
    assert orders[0] == "id,customer,total,placed_at"
    assert orders[50] == '50,"O\'Brien, ""Ltd""",18.50,2024-01-03T02:00:00Z'
    assert len(orders) == FOREIGN_ORDERS + 2  # the header, and the empty string after the last CRLF


@pytest.mark.parametrize("path", [
    *(f"/tables/{name}" for name in STATE_TABLES),
    *(f"/exports/{name}.csv" for name in STATE_TABLES),
    "/exports/exporter.export_jobs.csv", "/exports/exporter.schedules.ndjson",
    "/tables/exporter.export_jobs",
])
async def test_the_services_own_state_is_neither_listed_nor_exportable(
    foreign: Database, path: str
) -> None:
    async with service(foreign) as client:
        assert not {t["name"] for t in (await client.get("/tables")).json()["tables"]} & {
            *STATE_TABLES, "exporter.export_jobs"}
        response = await client.get(path)
        assert response.status_code == 404, response.text
        assert response.json()["valid"] == FOREIGN_TABLES
        job = await client.post("/jobs", json={"table": "export_jobs", "format": "csv"})
        assert job.status_code == 422 and job.json()["parameter"] == "table"


async def test_the_state_stays_apart_when_the_search_path_names_its_schema_first(
    tmp_path: Path,
) -> None:
    """A PostgreSQL user called ``exporter`` (docker-compose.yml's) has the schema
    ``exporter`` first in its search path (``"$user", public``): its tables are still the
    user's, and the state is still not among them."""
    database = await build_foreign_database("postgresql", tmp_path, "search_path")
    name = database.url.rsplit("/", 1)[1]
    await run_sql(database, f'ALTER DATABASE "{name}" SET search_path TO exporter, public')
    async with service(database) as client:
        listed = [t["name"] for t in (await client.get("/tables")).json()["tables"]]
        assert listed == FOREIGN_TABLES
        assert (await client.get("/exports/export_jobs.csv")).status_code == 404
        job = (await client.post("/jobs", json={"table": "orders", "format": "csv"})).json()
        assert [j["id"] for j in (await client.get("/jobs")).json()] == [job["id"]]


# A schema that changes while the service runs.

def wait_for(check: Callable[[], bool], seconds: float) -> float:
    """How long ``check`` took to hold; fails after ``seconds``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, "not within the refresh time"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_table_or_column_added_while_the_service_runs_is_exported_without_restart(
    backend: str, tmp_path: Path,
) -> None:
    database = await build_foreign_database(backend, tmp_path, "refresh")
    env = database.env(EXPORTER_CATALOG_REFRESH_SECONDS="0.2", EXPORTER_RUN_WORKER="false")
    with serving(env) as server:
        def status(path: str) -> int:
            return httpx.get(f"{server.url}{path}").status_code

        assert status("/exports/shipments.csv") == 404
        await run_sql(database, "CREATE TABLE shipments (id INTEGER PRIMARY KEY, carrier TEXT)",
                      "INSERT INTO shipments VALUES (1, 'DHL'), (2, 'UPS')")
        wait_for(lambda: status("/exports/shipments.csv") == 200, 3)
        assert httpx.get(f"{server.url}/exports/shipments.csv").text == \
            "id,carrier\r\n1,DHL\r\n2,UPS\r\n"
        assert "shipments" in httpx.get(f"{server.url}/tables").text

        await run_sql(database, "ALTER TABLE orders ADD COLUMN note TEXT",
                      "UPDATE orders SET note = 'fragile' WHERE id = 2")
        wait_for(lambda: status("/exports/orders.csv?fields=id,note&limit=2") == 200, 3)
        assert httpx.get(f"{server.url}/exports/orders.csv?fields=id,note&limit=2").text == \
            "id,note\r\n1,\r\n2,fragile\r\n"
        columns = httpx.get(f"{server.url}/tables/orders").json()["columns"]
        assert columns[-1] == {"name": "note", "type": "TEXT" if backend == "sqlite" else "text",
                               "kind": "text", "nullable": True}

        await run_sql(database, "DROP TABLE shipments")
        wait_for(lambda: status("/exports/shipments.csv") == 404, 3)
        assert status("/tables/shipments") == 404


async def test_the_catalog_reads_the_schema_at_most_once_per_refresh_time(
    foreign: Database,
) -> None:
    engine = foreign.engine()
    statements: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    try:
        catalog = Catalog(engine, max_age=0.3)
        assert (await catalog.get("orders")).key == ("id",)
        read_once = len(statements)
        assert read_once > 0
        for _ in range(50):
            await catalog.get("orders")
            await catalog.tables()
        assert len(statements) == read_once, "no statement until the list is old"
        time.sleep(0.35)
        await catalog.get("orders")
        assert len(statements) == 2 * read_once
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_sqlite_row_counts_come_from_analyze_else_from_the_largest_rowid(
    backend: str, tmp_path: Path,
) -> None:
    database = await build_foreign_database(backend, tmp_path, "rows")
    await run_sql(database, "DELETE FROM orders WHERE id > 250",
                  "CREATE TABLE pairs (a TEXT PRIMARY KEY, b TEXT) WITHOUT ROWID",
                  "INSERT INTO pairs VALUES ('x', 'y')")

    async def rows() -> dict[str, int | None]:
        async with service(database) as client:
            return {t["name"]: t["approximate_rows"]
                    for t in (await client.get("/tables")).json()["tables"]}

    before = await rows()
    # No ANALYZE: the largest rowid, an upper bound (deleted rows leave no gap here).
    assert before["orders"] == 250 and before["accounts"] == 20
    assert before["tokens"] == 3  # a TEXT key: still a rowid table
    assert before["big_orders"] is None, "a view has no rowid, and is not counted"
    assert before["pairs"] is None, "nor has a table WITHOUT ROWID"
    await run_sql(database, "DELETE FROM orders WHERE id < 11", "ANALYZE")
    after = await rows()
    assert after["orders"] == 240, "ANALYZE's count, where there is one"


# Exposure: which tables, and which of their columns.

EXPOSED = {"tables": ("orders", "report_*")}
HIDDEN = {"hidden_columns": ("accounts.password_hash", "*.secret_*")}


@pytest.mark.parametrize("path", [
    "/tables/accounts", "/exports/accounts.csv", "/exports/big_orders.json",
    "/exports/tokens.ndjson",
])
async def test_only_the_exposed_tables_are_listed_and_exported(
    foreign: Database, path: str
) -> None:
    async with service(foreign, **EXPOSED) as client:
        listed = [t["name"] for t in (await client.get("/tables")).json()["tables"]]
        assert listed == ["orders", "report_2024", "report_2025"]
        assert (await client.get("/exports/report_2025.csv")).status_code == 200
        refused = await client.get(path)
        assert refused.status_code == 404
        assert refused.json()["valid"] == listed
        assert "valid: orders, report_2024, report_2025" in refused.json()["message"]


@pytest.mark.parametrize("endpoint", ["/jobs", "/schedules"])
async def test_a_job_or_schedule_of_a_table_not_exposed_is_refused_when_posted(
    foreign: Database, endpoint: str
) -> None:
    job = {"table": "accounts", "format": "csv"}
    body = job if endpoint == "/jobs" else {"cron": "0 2 * * *", "job": job}
    async with service(foreign, **EXPOSED) as client:
        response = await client.post(endpoint, json=body)
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["parameter"] == ("table" if endpoint == "/jobs" else "job.table")
        assert error["valid"] == ["orders", "report_2024", "report_2025"]
        assert (await client.get(endpoint)).json() == [], "nothing stored"


async def test_hidden_columns_are_neither_listed_nor_exported(foreign: Database) -> None:
    async with service(foreign, **HIDDEN) as client:
        tables = {t["name"]: t for t in (await client.get("/tables")).json()["tables"]}
        assert [c["name"] for c in tables["accounts"]["columns"]] == ["id", "login"]
        assert not [p for p in tables["accounts"]["parameters"] if "password" in p]
        assert [c["name"] for c in tables["tokens"]["columns"]] == ["label"]
        assert tables["tokens"]["primary_key"] == [], "a key that lost a column is no key"
        csv = (await client.get("/exports/accounts.csv")).text
        assert csv.startswith("id,login\r\n1,login1\r\n") and "hash" not in csv
        ndjson = (await client.get("/exports/accounts.ndjson")).text
        assert ndjson.splitlines()[0] == '{"id":1,"login":"login1"}'
        json = (await client.get("/exports/tokens.json")).json()
        assert sorted(json, key=str) == [{"label": "one"}, {"label": "three"}, {"label": "two"}]


def unnamed(error: dict[str, Any], name: str) -> dict[str, Any]:
    """An error with a column's name put out of the way, to compare it with another's."""
    return {key: value.replace(name, "<column>") if isinstance(value, str) else value
            for key, value in error.items()}


@pytest.mark.parametrize("asked", [
    "fields={}", "fields=id,{}", "{}=x", "{}__isnull=true", "{}__gt=a", "{}__exact=a,b",
])
@pytest.mark.parametrize("column", ["password_hash", "secret_question"])
async def test_asking_for_a_hidden_column_is_answered_as_for_one_that_does_not_exist(
    foreign: Database, asked: str, column: str
) -> None:
    async with service(foreign, **HIDDEN) as client:
        hidden = await client.get(f"/exports/accounts.csv?{asked.format(column)}")
        absent = await client.get(f"/exports/accounts.csv?{asked.format('no_such_col')}")
    assert hidden.status_code == absent.status_code == 422
    assert unnamed(hidden.json(), column) == unnamed(absent.json(), "no_such_col")


@pytest.mark.parametrize("job", [
    {"table": "accounts", "format": "csv", "fields": ["id", "password_hash"]},
    {"table": "accounts", "format": "csv", "filters": {"password_hash": "hash1"}},
    {"table": "accounts", "format": "csv", "filters": {"password_hash__isnull": False}},
    {"table": "tokens", "format": "csv", "filters": {"secret_id__gte": "s-2"}},
])
@pytest.mark.parametrize("endpoint", ["/jobs", "/schedules"])
async def test_a_job_or_schedule_naming_a_hidden_column_is_refused_when_posted(
    foreign: Database, job: dict[str, Any], endpoint: str
) -> None:
    body = job if endpoint == "/jobs" else {"cron": "0 2 * * *", "job": job}
    async with service(foreign, **HIDDEN) as client:
        response = await client.post(endpoint, json=body)
        assert response.status_code == 422, response.text
        assert "unknown" in response.json()["message"]
        assert (await client.get(endpoint)).json() == [], "nothing stored"


async def test_a_table_whose_key_is_hidden_cannot_be_resumed(foreign: Database) -> None:
    async with service(foreign, **HIDDEN) as client:
        refused = await client.get("/exports/tokens.csv?after=s-1")
        assert refused.status_code == 422
        assert "no primary key" in refused.json()["message"]
        assert "secret" not in refused.text
        job = await client.post("/jobs", json={"table": "tokens", "format": "csv",
                                               "filters": {"after": "s-1"}})
        assert job.status_code == 422 and job.json()["parameter"] == "filters.after"


@pytest.mark.parametrize("readers", [1, 2])
async def test_rows_whose_sqlite_key_holds_null_come_first_and_none_is_left_out(
    tmp_path: Path, readers: int,
) -> None:
    """SQLite lets a key not declared NOT NULL hold NULL, and NULL compares to no key: cut
    into keyset batches alone, an export left those rows out and looked complete."""
    database = await build_foreign_database("sqlite", tmp_path, "null_keys")
    await run_sql(
        database,
        "CREATE TABLE codes (code TEXT PRIMARY KEY, label TEXT)",
        "INSERT INTO codes VALUES (NULL, 'n1'), ('b', 'two'), (NULL, 'n2'), ('a', 'one'), "
        "('c', 'three'), (NULL, 'n3')",
        "CREATE TABLE pairs (a TEXT, b TEXT, label TEXT, PRIMARY KEY (a, b))",
        "INSERT INTO pairs VALUES ('x', NULL, 'p1'), ('a', 'b', 'p2'), (NULL, 'y', 'p3'), "
        "('x', 'z', 'p4'), ('a', 'a', 'p5'), ('b', NULL, 'p6')",
        # Not the rowid, for all its INTEGER PRIMARY KEY: DESC keeps NULL as NULL.
        "CREATE TABLE descs (id INTEGER PRIMARY KEY DESC, label TEXT)",
        "INSERT INTO descs VALUES (2, 'two'), (NULL, 'n1'), (1, 'one'), (NULL, 'n2')",
    )
    async with service(database, batch_rows=2, readers=readers) as client:
        async def labels(path: str) -> list[str]:
            response = await client.get(path)
            assert response.status_code == 200, response.text
            return [row.split(",")[-1] for row in response.text.split("\r\n")[1:-1]]

        assert await labels("/exports/codes.csv") == ["n1", "n2", "n3", "one", "two", "three"]
        assert await labels("/exports/codes.csv?limit=4") == ["n1", "n2", "n3", "one"]
        assert await labels("/exports/codes.csv?limit=2") == ["n1", "n2"]
        # after= names a key: the rows whose key holds NULL came before any.
        assert await labels("/exports/codes.csv?after=a") == ["two", "three"]
        # NULL sorts first in ORDER BY (NULL, 'y') < ('b', NULL) < ('x', NULL); but (b, NULL)
        # and (x, NULL) come with the other NULLs, before every whole key.
        assert await labels("/exports/pairs.csv") == ["p3", "p6", "p1", "p5", "p2", "p4"]
        assert await labels("/exports/pairs.csv?after=a,a") == ["p2", "p4"]
        assert await labels("/exports/pairs.csv?label__gte=p2&limit=4") == ["p3", "p6", "p5", "p2"]
        assert (await client.get("/exports/pairs.ndjson")).text.count("\n") == 6
        assert await labels("/exports/descs.csv") == ["n1", "n2", "one", "two"]


async def test_a_sqlite_table_without_rowid_whose_key_is_hidden_still_exports(
    tmp_path: Path,
) -> None:
    """No key left to order by, and no rowid either: read in one statement, as a view."""
    database = await build_foreign_database("sqlite", tmp_path, "without_rowid")
    await run_sql(database, "CREATE TABLE codes (secret_code TEXT PRIMARY KEY, label TEXT) "
                  "WITHOUT ROWID", "INSERT INTO codes VALUES ('b', 'two'), ('a', 'one')")
    async with service(database, **HIDDEN, batch_rows=1) as client:
        response = await client.get("/exports/codes.csv")
        assert response.status_code == 200, response.text
        assert sorted(response.text.split("\r\n")) == ["", "label", "one", "two"]
        assert (await client.get("/tables/codes")).json()["primary_key"] == []
