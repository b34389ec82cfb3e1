"""queries.py on its own: the SQL it builds, run on real SQLite and PostgreSQL databases that
are made here with plain SQL, against an oracle that is Python's own filtering, sorting and
cutting of the rows inserted (and Python's ``csv`` and ``json`` for the few rendered lines).

It exists as the fast first line of the mutation run of exporter/queries.py
(tests/mutation.py): each mutant meets these tests first, in seconds, before the whole
exports of test_exports and test_foreign. So it checks, directly, what a user would notice
of each function: which rows an export gives, in which order and how many, with which fields
in which order; how a plan cuts an export into ranges (the key each stops at, the rows each
holds) and what each planned batch holds; how many rows a count says; and which columns
Parquet is told hold a value that does not fit their kind.

The PostgreSQL database (a scratch one beside ``EXPORTER_TEST_DATABASE_URL``'s, as conftest
makes them; skipped without it, as every PostgreSQL test is) runs in a time zone far from
UTC, so that a moment bound as the wrong kind of timestamp picks other rows. Its text columns
are ``COLLATE "C"``: it then orders and compares text as Python and SQLite do (by code point),
whatever the server's locale. SQLite's timestamps are stored in the forms SQLite databases
hold them in ('YYYY-MM-DD HH:MM:SS', with 'T', with milliseconds, with 'Z' or an offset),
which filters must compare as the moments they are.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sqlite3
import time as clock
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement

from exporter.catalog import Table, reflect
from exporter.db import DriverStatement, create_engine, driver_connection
from exporter.queries import (
    ExportQuery,
    Filter,
    Keyed,
    Op,
    Planned,
    Shape,
    batch_rows,
    build_batch,
    build_count,
    build_misfits,
    build_plan,
    build_rowids,
    build_statement,
    key_arguments,
    plan_ranges,
    plan_row,
)
from tests.conftest import csv_records, query_for, scratch_postgres_url

Row = dict[str, Any]

# --- The rows, as the oracle knows them -----------------------------------------------------

START = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
NAMES: dict[int, str | None] = {
    3: 'Zoë "Zee" O\'Brien, Jr.', 7: "a,b", 11: "王伟 🚀", 15: "", 19: None,
    23: "line\r\nbreak", 27: "tab\there", 31: 'quote " only',
}
MOODS = ("sad", "ok", "happy")  # PostgreSQL: an enum in this order, compared as its text


def thing(i: int) -> Row:
    """Row ``i`` of ``things``: every kind, NULLs sprinkled, values that repeat across rows
    (so that one moment is stored in several forms on SQLite)."""
    return {
        "id": 5 * i + i % 3,  # increasing, with gaps
        "name": NAMES[i] if i in NAMES else f"name{i:03d}",
        "n": None if i % 11 == 0 else (i * 37 % 41 - 20) * 250_000_000,  # beyond 32 bits
        "f": None if i % 13 == 0 else i * 0.25 - 6.0,
        "m": None if i % 17 == 0 else Decimal(i * 37 % 1000) / 100,
        "b": (True, False, None)[i % 3],
        "d": None if i % 19 == 0 else date(2024, 1, 1) + timedelta(days=i * 7 % 60),
        "ts": None if i % 10 == 9 else START + timedelta(
            minutes=i * 7 % 45, milliseconds=500 if i % 4 == 1 else 0),
        "tz": None if i % 14 == 0 else START + timedelta(minutes=i * 13 % 45),
        "tm": None if i % 12 == 5 else time(i % 24, i * 15 % 60, 0 if i % 2 else 30),
        "u": None if i % 9 == 4 else str(uuid.UUID(int=i * 0x0123456789ABCDEF + 0xFEDCBA)),
        "mood": None if i % 16 == 0 else MOODS[i % 4 % 3],
    }


THINGS = [thing(i) for i in range(1, 97)]  # in key order
ID, LAST_ID = THINGS[40]["id"], THINGS[-1]["id"]
REGIONS = ("east", "nor", "north", "south")  # 'nor' < 'north': a key's prefix orders first
PAIRS: list[Row] = [
    {"region": region, "month": month, "amount": Decimal(f"{j * 100 + month}.50")}
    for j, region in enumerate(REGIONS) for month in range(1, 13) if (j * 12 + month) % 5]
# No key: SQLite reads it in rowid order, the order of insertion (n is not in order).
LOGS: list[Row] = [
    {"rowid": i + 1, "msg": 'comma, "quoted"' if i == 5 else f"log {i}", "n": i * 17 % 40}
    for i in range(40)]
POSITIVE: list[Row] = [{"id": r["id"], "name": r["name"], "n": r["n"]}
                       for r in THINGS if r["n"] is not None and r["n"] > 0]  # a view
EVENTS: list[Row] = [{"at": START + timedelta(minutes=10 * i), "label": f"event {i}"}
                     for i in range(12)]


@dataclass(frozen=True)
class Oracle:
    rows: list[Row]
    key: tuple[str, ...]  # what the rows come in order of
    shown: tuple[str, ...]  # fields that tell its rows apart, as the JSON objects give them

    def key_of(self, row: Row) -> tuple[Any, ...]:
        return tuple(row[name] for name in self.key)

    def shown_of(self, row: Row) -> tuple[Any, ...]:
        return tuple(row[name] for name in self.shown)


ORACLES = {
    "things": Oracle(THINGS, ("id",), ("id",)),
    "pairs": Oracle(PAIRS, ("region", "month"), ("region", "month")),
    "logs": Oracle(LOGS, ("rowid",), ("msg", "n")),
    "positive": Oracle(POSITIVE, ("id",), ("id",)),
    "events": Oracle(EVENTS, ("at",), ("label",)),
}


def everything(_row: Row) -> bool:
    return True


def where(column: str, op: str, *values: Any) -> Callable[[Row], bool]:
    """A filter as Python reads it."""
    def keep(row: Row) -> bool:
        value = row[column]
        if op == "isnull":
            return (value is None) is values[0]
        if value is None:
            return False
        if op == "exact":
            return value in values
        return {"gt": value > values[0], "gte": value >= values[0], "lt": value < values[0],
                "lte": value <= values[0]}[op]
    return keep


def every(*tests: Callable[[Row], bool]) -> Callable[[Row], bool]:
    return lambda row: all(test(row) for test in tests)


@dataclass(frozen=True)
class Case:
    """An export of one table: its parameters, and what Python makes of them."""

    table: str
    params: tuple[tuple[str, str], ...] = ()
    keep: Callable[[Row], bool] = everything
    after: tuple[Any, ...] | None = None
    limit: int | None = None

    def query(self, db: Db, fields: Sequence[str] = ()) -> ExportQuery:
        params = [*((("fields", ",".join(fields)),) if fields else ()), *self.params]
        if self.after is not None:
            params.append(("after", ",".join(str(value) for value in self.after)))
        if self.limit is not None:
            params.append(("limit", str(self.limit)))
        return query_for(db.tables[self.table], urlencode(params))

    def rows(self) -> list[Row]:
        """The oracle: the rows inserted, kept, resumed and cut by Python, in key order."""
        oracle = ORACLES[self.table]
        kept = [row for row in sorted(oracle.rows, key=oracle.key_of) if self.keep(row)]
        if self.after is not None:
            kept = [row for row in kept if oracle.key_of(row) > self.after]
        return kept if self.limit is None else kept[:self.limit]


def filtered(param: str, raw: str, keep: Callable[[Row], bool], name: str = "") -> Any:
    return pytest.param(Case("things", ((param, raw),), keep), id=name or f"{param}={raw}")


UUID5, UUID8 = THINGS[4]["u"], THINGS[7]["u"]
PLUS_ONE, PLUS_NINE = timezone(timedelta(hours=1)), timezone(timedelta(hours=9))
FILTERS = [
    filtered("id", str(ID), where("id", "exact", ID)),
    filtered("id", f"1,{ID},{LAST_ID}", where("id", "exact", 1, ID, LAST_ID)),
    filtered("id__gt", str(ID), where("id", "gt", ID)),
    filtered("id__gte", str(ID), where("id", "gte", ID)),
    filtered("id__lt", str(ID), where("id", "lt", ID)),
    filtered("id__lte", str(ID), where("id", "lte", ID)),
    # id is a 32-bit integer on PostgreSQL: a 64-bit value compares, and fails no export.
    filtered("id__lt", "3000000000", where("id", "lt", 3_000_000_000)),
    filtered("id__gt", "3000000000", where("id", "gt", 3_000_000_000)),
    filtered("n__gt", "3000000000", where("n", "gt", 3_000_000_000)),
    filtered("n__gte", "0", where("n", "gte", 0)),
    filtered("n__lt", "0", where("n", "lt", 0)),
    filtered("n__lte", "-2250000000", where("n", "lte", -2_250_000_000)),
    filtered("n", "-5000000000,5000000000", where("n", "exact", -5_000_000_000, 5_000_000_000)),
    filtered("n__isnull", "true", where("n", "isnull", True)),
    filtered("n__isnull", "false", where("n", "isnull", False)),
    filtered("name__exact", str(NAMES[3]), where("name", "exact", NAMES[3]), "name__exact"),
    filtered("name", "name005,a,name010", where("name", "exact", "name005", "a", "name010")),
    filtered("name__gte", "name050", where("name", "gte", "name050")),
    filtered("name__lt", "name010", where("name", "lt", "name010")),
    filtered("name__isnull", "true", where("name", "isnull", True)),
    filtered("f__gt", "2.5", where("f", "gt", 2.5)),
    filtered("f__lte", "-5.5", where("f", "lte", -5.5)),
    filtered("m__gte", "3.7", where("m", "gte", Decimal("3.7"))),
    filtered("m__lt", "1.11", where("m", "lt", Decimal("1.11"))),
    filtered("b", "true", where("b", "exact", True)),
    filtered("b", "false", where("b", "exact", False)),
    filtered("b", "true,false", where("b", "exact", True, False)),
    filtered("b__isnull", "true", where("b", "isnull", True)),
    # SQLite: a row stores 2024-01-11 as '2024-01-11 10:00:00', another as '2024-01-11'.
    filtered("d", "2024-01-11", where("d", "exact", date(2024, 1, 11))),
    filtered("d__gt", "2024-02-20", where("d", "gt", date(2024, 2, 20))),
    filtered("d__lte", "2024-01-11", where("d", "lte", date(2024, 1, 11))),
    filtered("d__lt", "2024-01-11", where("d", "lt", date(2024, 1, 11))),
    # SQLite: 12:14 is stored as 'YYYY-MM-DD HH:MM:SS', with 'T', and with 'T' and 'Z'.
    filtered("ts", "2024-03-01T12:14:00Z", where("ts", "exact", START + timedelta(minutes=14))),
    # ... and at 12:07 one row is 12:07:00.5, two are 12:07:00: the milliseconds count.
    filtered("ts", "2024-03-01T12:07:00Z", where("ts", "exact", START + timedelta(minutes=7))),
    filtered("ts__gt", "2024-03-01T12:07:00Z", where("ts", "gt", START + timedelta(minutes=7))),
    filtered("ts__lt", "2024-03-01T12:07:00.5Z",
             where("ts", "lt", START + timedelta(minutes=7, milliseconds=500))),
    filtered("ts__lte", "2024-03-01T12:07:00.5Z",
             where("ts", "lte", START + timedelta(minutes=7, milliseconds=500))),
    filtered("ts__gte", "2024-03-01 12:30", where("ts", "gte", START + timedelta(minutes=30))),
    filtered("ts__gte", "2024-03-01", where("ts", "gte", START - timedelta(hours=12))),
    filtered("ts__isnull", "true", where("ts", "isnull", True)),
    # SQLite: 12:26 UTC is stored as '2024-03-01 14:26:00+02:00' and '2024-03-01T12:26:00Z'.
    filtered("tz", "2024-03-01T12:26:00Z", where("tz", "exact", START + timedelta(minutes=26))),
    filtered("tz__lt", "2024-03-01T13:30:00+01:00",
             where("tz", "lt", datetime(2024, 3, 1, 13, 30, tzinfo=PLUS_ONE))),
    filtered("tz__gte", "2024-03-01T21:26:00+09:00",
             where("tz", "gte", datetime(2024, 3, 1, 21, 26, tzinfo=PLUS_NINE))),
    # SQLite: 07:45:00 is stored as '07:45'.
    filtered("tm", "07:45:00", where("tm", "exact", time(7, 45))),
    filtered("tm__gt", "20:00:00", where("tm", "gt", time(20))),
    filtered("tm__lte", "02:30:30", where("tm", "lte", time(2, 30, 30))),
    filtered("tm__lt", "07:45", where("tm", "lt", time(7, 45))),
    filtered("u", str(UUID5), where("u", "exact", UUID5)),
    filtered("u", f"{str(UUID5).upper()},{UUID8}", where("u", "exact", UUID5, UUID8), "u=two"),
    filtered("u__isnull", "true", where("u", "isnull", True)),
    filtered("mood", "sad", where("mood", "exact", "sad")),
    filtered("mood__lt", "ok", where("mood", "lt", "ok")),  # as text: happy; as the enum: sad
    filtered("mood__gte", "ok", where("mood", "gte", "ok")),
    pytest.param(Case("things", (("n__gt", "0"), ("b", "true"), ("d__lt", "2024-02-01")),
                      every(where("n", "gt", 0), where("b", "exact", True),
                            where("d", "lt", date(2024, 2, 1)))), id="three-filters"),
    pytest.param(Case("things", (("n__gt", "-5000000000"), ("n__lt", "5000000000")),
                      every(where("n", "gt", -5_000_000_000), where("n", "lt", 5_000_000_000))),
                 id="n-between"),
]

# --- The databases --------------------------------------------------------------------------

SQLITE_SCHEMA = [
    "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT, n BIGINT, f REAL, "
    "m NUMERIC(10,2), b BOOLEAN, d DATE, ts TIMESTAMP, tz TIMESTAMPTZ, tm TIME, u UUID, "
    "mood TEXT)",
    "CREATE TABLE pairs (region TEXT NOT NULL, month INTEGER NOT NULL, amount NUMERIC(12,2), "
    "PRIMARY KEY (region, month))",
    "CREATE TABLE logs (msg TEXT, n INTEGER)",
    "CREATE TABLE events (at TIMESTAMP PRIMARY KEY, label TEXT)",
    "CREATE VIEW positive AS SELECT id, name, n FROM things WHERE n > 0",
    # Values that do not fit their column's kind (SQLite keeps whatever it is given).
    "CREATE TABLE mixed (id INTEGER PRIMARY KEY, n INTEGER, d DATE, t TEXT, f REAL)",
    "CREATE VIEW mixed_view AS SELECT * FROM mixed",
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",  # named as an alias might be
    "INSERT INTO t VALUES (1, 'one'), (2, NULL)",
]
POSTGRES_SCHEMA = [
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
    'CREATE TABLE things (id integer PRIMARY KEY, name text COLLATE "C", n bigint, '
    "f double precision, m numeric(10,2), b boolean, d date, ts timestamp, tz timestamptz, "
    "tm time, u uuid, mood mood)",
    'CREATE TABLE pairs (region text COLLATE "C", month integer, amount numeric(12,2), '
    "PRIMARY KEY (region, month))",
    'CREATE TABLE logs (msg text COLLATE "C", n integer)',
    "CREATE TABLE events (at timestamp PRIMARY KEY, label text)",  # UTC, without its zone
    "CREATE VIEW positive AS SELECT id, name, n FROM things WHERE n > 0",
    "CREATE TABLE t (id integer PRIMARY KEY, v text)",  # named as an alias might be
    "INSERT INTO t VALUES (1, 'one'), (2, NULL)",
]
MISFIT_AT = {"n": 6, "d": 8}  # mixed: 'abc' in the INTEGER n of row 6, 'someday' in d of 8
MIXED = [(i, "abc" if i == MISFIT_AT["n"] else i,
          "someday" if i == MISFIT_AT["d"] else f"2024-01-{i:02d}", f"t{i}", i + 0.5)
         for i in range(1, 11)]


def shuffled(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """In an order that is not the key's: a statement that forgets ORDER BY shows it."""
    return random.Random(5).sample(rows, len(rows))


def sqlite_thing(i: int, row: Row) -> tuple[Any, ...]:
    """Row ``i`` as a SQLite database may hold it: moments in one of several text forms."""
    ts, tz, d, tm = row["ts"], row["tz"], row["d"], row["tm"]
    forms = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S",
             "%Y-%m-%dT%H:%M:%SZ")
    return (
        row["id"], row["name"], row["n"], row["f"],
        None if row["m"] is None else float(row["m"]),
        None if row["b"] is None else int(row["b"]),
        None if d is None else f"{d} 10:00:00" if i % 10 == 0 else d.isoformat(),
        None if ts is None else ts.strftime(forms[i % 4])[:23],
        None if tz is None else tz.strftime(forms[3]) if i % 2
        else tz.astimezone(timezone(timedelta(hours=2))).isoformat(sep=" "),
        None if tm is None else tm.strftime("%H:%M" if tm.second == 0 else "%H:%M:%S"),
        row["u"], row["mood"],
    )


def build_sqlite(path: Path) -> None:
    connection = sqlite3.connect(path)
    try:
        with connection:
            for statement in SQLITE_SCHEMA:
                connection.execute(statement)
            connection.executemany(f"INSERT INTO things VALUES ({', '.join('?' * 12)})",
                                   shuffled([sqlite_thing(i, row)
                                             for i, row in enumerate(THINGS, 1)]))
            connection.executemany("INSERT INTO pairs VALUES (?, ?, ?)", shuffled(
                [(r["region"], r["month"], float(r["amount"])) for r in PAIRS]))
            connection.executemany("INSERT INTO logs VALUES (?, ?)",
                                   [(r["msg"], r["n"]) for r in LOGS])
            connection.executemany("INSERT INTO events VALUES (?, ?)", shuffled(
                [(r["at"].strftime("%Y-%m-%d %H:%M:%S"), r["label"]) for r in EVENTS]))
            connection.executemany("INSERT INTO mixed VALUES (?, ?, ?, ?, ?)", MIXED)
    finally:
        connection.close()


async def build_postgres(url: str) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for statement in POSTGRES_SCHEMA:
            await connection.execute(statement)
        await connection.executemany(
            f"INSERT INTO things VALUES ({', '.join(f'${i}' for i in range(1, 13))})",
            shuffled([(r["id"], r["name"], r["n"], r["f"], r["m"], r["b"], r["d"],
                       None if r["ts"] is None else r["ts"].replace(tzinfo=None), r["tz"],
                       r["tm"], r["u"], r["mood"]) for r in THINGS]))
        await connection.executemany("INSERT INTO pairs VALUES ($1, $2, $3)", shuffled(
            [(r["region"], r["month"], r["amount"]) for r in PAIRS]))
        await connection.executemany("INSERT INTO logs VALUES ($1, $2)",
                                     shuffled([(r["msg"], r["n"]) for r in LOGS]))
        await connection.executemany("INSERT INTO events VALUES ($1, $2)",
                                     shuffled([(r["at"].replace(tzinfo=None), r["label"])
                                               for r in EVENTS]))
        # Every later session runs far from UTC: a moment bound without its zone shows.
        name = make_url(url).database
        await connection.execute(f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Tokyo'")
    finally:
        await connection.close()


async def on_driver(dialect: str, driver: Any, sql: str, arguments: Sequence[Any]
                    ) -> list[tuple[Any, ...]]:
    """A compiled statement run on the driver (aiosqlite's, asyncpg's), as cursors.py and
    pg_copy.py run theirs."""
    if dialect == "sqlite":
        return [tuple(row) for row in await driver.execute_fetchall(sql, arguments)]
    return [tuple(row) for row in await driver.fetch(sql, *arguments)]


@dataclass(frozen=True)
class Db:
    dialect: str  # as queries.py names it: "sqlite" or "postgresql"
    engine: AsyncEngine
    tables: dict[str, Table]

    async def run(self, sql: str, arguments: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self.engine.connect() as conn:
            return await on_driver(self.dialect, await driver_connection(conn), sql, arguments)

    async def fetch(self, statement: ClauseElement, **values: Any) -> list[tuple[Any, ...]]:
        compiled = DriverStatement(statement, self.engine.dialect)
        return await self.run(compiled.sql, compiled.arguments(**values))

    async def one(self, statement: Any) -> tuple[Any, ...]:
        """Through SQLAlchemy, as pipeline.py counts and parquet.py checks misfits."""
        async with self.engine.connect() as conn:
            return tuple((await conn.execute(statement)).one())

    async def objects(self, query: ExportQuery, shape: Shape = Shape.JSON) -> list[Any]:
        """The JSON objects of an export, each as its (name, value) pairs in order."""
        rows = await self.fetch(build_statement(query, self.dialect, shape))
        return [json.loads(text, object_pairs_hook=list) for (text,) in rows]

    async def copy(self, query: ExportQuery, shape: Shape, copy_format: str) -> bytes:
        """PostgreSQL: the statement's rows as COPY writes them, as pg_copy.py runs it."""
        compiled = DriverStatement(build_statement(query, self.dialect, shape),
                                   self.engine.dialect)
        chunks: list[bytes] = []

        async def sink(chunk: bytes) -> None:
            chunks.append(chunk)

        async with self.engine.connect() as conn:
            driver = await driver_connection(conn)
            await driver.copy_from_query(compiled.sql, *compiled.arguments(), output=sink,
                                         format=copy_format)
        return b"".join(chunks)


async def opened(dialect: str, url: str, state_path: Path | None = None) -> Db:
    engine = create_engine(url, state_path=state_path)  # as the service makes it
    async with engine.connect() as conn:
        tables = {table.name: table for table in await reflect(conn)}
    return Db(dialect, engine, tables)


@pytest.fixture(scope="module")
async def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Db]:
    directory = tmp_path_factory.mktemp("queries")
    build_sqlite(directory / "queries.db")
    db = await opened("sqlite", f"sqlite+aiosqlite:///{directory / 'queries.db'}",
                      directory / "state.db")
    yield db
    await db.engine.dispose()


@pytest.fixture(scope="module")
async def postgresql_db() -> AsyncIterator[Db]:
    url = await scratch_postgres_url("queries")  # skips without EXPORTER_TEST_DATABASE_URL
    await build_postgres(url)
    db = await opened("postgresql", url)
    yield db
    await db.engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Db:
    """Each backend's database, built once per run of this module."""
    built: Db = request.getfixturevalue(f"{request.param}_db")
    return built


# --- Helpers --------------------------------------------------------------------------------


@contextmanager
def local_time_zone(name: str) -> Iterator[None]:
    """The process's local time zone, for a while."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = name
    clock.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        clock.tzset()


def csv_line(values: Sequence[Any]) -> str:
    """A row as csv.writer writes it, without its line end."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(values)
    return out.getvalue()[:-2]


def tsv_line(values: Sequence[Any]) -> str:
    """A row as PostgreSQL's text COPY writes it."""
    def escaped(value: Any) -> str:
        if value is None:
            return "\\N"
        text = str(value)
        for char, escape in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
            text = text.replace(char, escape)
        return text
    return "\t".join(escaped(value) for value in values)


def shown(case: Case, objects: list[Any]) -> list[tuple[Any, ...]]:
    """Each object's fields that tell its table's rows apart."""
    names = ORACLES[case.table].shown
    return [tuple(dict(pairs)[name] for name in names) for pairs in objects]


def expected(case: Case) -> list[tuple[Any, ...]]:
    return [ORACLES[case.table].shown_of(row) for row in case.rows()]


def chunks(rows: list[Row], size: int) -> list[list[Row]]:
    return [rows[start:start + size] for start in range(0, len(rows), size)]


def expected_plan(case: Case, rows_each: int) -> list[Planned]:
    """The ranges a plan must give: ``rows_each`` rows each (the last fewer), each after
    the last key of the one before, the first with no lower bound of its own."""
    oracle = ORACLES[case.table]
    ranges: list[Planned] = []
    for rows in chunks(case.rows(), rows_each):
        after = ranges[-1].until if ranges else None
        ranges.append(Planned(after, oracle.key_of(rows[-1]), len(rows)))
    return ranges


PLAN_GUARD = 200  # more ranges than any case has: a plan that never ends fails at once


async def plan(db: Db, query: ExportQuery, rows_each: int) -> tuple[list[Planned], list[int]]:
    """``plan_ranges`` driven by ``build_plan`` on one connection, as cursors.py and
    pg_copy.py drive it; with the number of rows each step was asked for."""
    keyed = Keyed(lambda first: build_plan(query, db.dialect, first), db.engine.dialect)
    asked: list[int] = []
    ranges: list[Planned] = []
    async with db.engine.connect() as conn:
        driver = await driver_connection(conn)

        async def step(after: tuple[Any, ...] | None, rows: int
                       ) -> tuple[tuple[Any, ...] | None, int]:
            asked.append(rows)
            found = await on_driver(db.dialect, driver, *keyed.call(after, batch_rows=rows))
            return plan_row(found[0] if found else None)

        async with aclosing(plan_ranges(step, query, rows_each)) as planned:
            async for each in planned:
                ranges.append(each)
                if len(ranges) > PLAN_GUARD:
                    break
    return ranges, asked


# --- Which rows, in which order -------------------------------------------------------------


@pytest.mark.parametrize("case", FILTERS)
async def test_filters_keep_the_rows_python_keeps_in_key_order(db: Db, case: Case) -> None:
    assert shown(case, await db.objects(case.query(db, ("id",)))) == expected(case)


RESUMED = [
    Case("things", after=(ID,)),
    Case("things", after=(ID,), limit=10),
    Case("things", (("n__isnull", "false"),), where("n", "isnull", False), after=(ID,), limit=7),
    Case("things", after=(LAST_ID,)),
    Case("things", after=(0,)),
    Case("things", after=(3_000_000_000,)),
    Case("things", limit=0),
    Case("things", limit=1),
    Case("things", limit=2**63 - 1),  # the largest limit: a 64-bit parameter
    Case("pairs", after=("north", 5)),
    Case("pairs", after=("nor", 12)),
    Case("pairs", after=("east", 99)),
    Case("pairs", after=("north", 5), limit=4),
    Case("pairs", (("month__lte", "3"),), where("month", "lte", 3), after=("nor", 1)),
    Case("events", after=(EVENTS[4]["at"],)),
    Case("events", after=(EVENTS[4]["at"],), limit=3),
]


@pytest.mark.parametrize("case", RESUMED)
async def test_after_resumes_strictly_after_the_key_and_limit_keeps_the_first_rows(
    db: Db, case: Case
) -> None:
    fields = ORACLES[case.table].shown
    assert shown(case, await db.objects(case.query(db, fields))) == expected(case)


async def test_a_moment_given_in_any_offset_is_compared_as_that_moment(
    postgresql_db: Db,
) -> None:
    """A Filter built directly (not by params.py, which gives UTC) with another offset, in
    a process whose local time is not UTC either (a server run outside a container)."""
    for moment in (datetime(2024, 3, 1, 13, 30, tzinfo=PLUS_ONE), START):
        for column in ("ts", "tz"):
            for op, name in ((Op.GTE, "gte"), (Op.LT, "lt")):
                query = ExportQuery(postgresql_db.tables["things"], ("id",),
                                    (Filter(column, op, (moment,)),))
                with local_time_zone("America/New_York"):
                    statement = build_statement(query, "postgresql", Shape.JSON)
                found = [json.loads(text) for (text,) in await postgresql_db.fetch(statement)]
                case = Case("things", keep=where(column, name, moment))
                assert [(row["id"],) for row in found] == expected(case), (column, moment)


async def test_a_view_or_a_keyless_table_gives_every_row_it_keeps(db: Db) -> None:
    """Without a key there is no order to expect (PostgreSQL, views): the rows as a set."""
    for case in (Case("positive", (("n__gte", "3000000000"),), where("n", "gte", 3_000_000_000)),
                 Case("positive", (("name__lt", "name050"),), where("name", "lt", "name050")),
                 Case("logs"), Case("logs", (("n__lt", "10"),), where("n", "lt", 10))):
        fields = ORACLES[case.table].shown
        got = shown(case, await db.objects(case.query(db, fields)))
        assert sorted(got) == sorted(expected(case))


async def test_a_sqlite_table_without_a_key_comes_in_rowid_order(sqlite_db: Db) -> None:
    for case in (Case("logs"), Case("logs", (("n__gte", "20"),), where("n", "gte", 20)),
                 Case("logs", limit=7)):
        got = shown(case, await sqlite_db.objects(case.query(sqlite_db, ("msg", "n"))))
        assert got == expected(case)


# --- Which fields, in which form ------------------------------------------------------------


async def test_json_objects_hold_the_fields_asked_in_their_order(db: Db) -> None:
    things = db.tables["things"]
    for fields in (("name", "id", "n"), ("n", "name"), ("id",)):
        objects = await db.objects(query_for(things, "fields=" + ",".join(fields)))
        assert objects == [[(name, row[name]) for name in fields] for row in THINGS], fields
    # Built directly, with the dataclass's defaults: every row, no filter, no limit.
    objects = await db.objects(ExportQuery(things, ("u", "id")))
    assert objects == [[("u", row["u"]), ("id", row["id"])] for row in THINGS]
    # No fields asked: every column, in the table's order.
    objects = await db.objects(query_for(things, "limit=3"))
    assert [[name for name, _ in pairs] for pairs in objects] == [list(things.names)] * 3
    assert list(things.names) == list(THINGS[0])


async def test_a_table_named_like_an_alias_exports_its_rows(db: Db) -> None:
    """PostgreSQL's JSON rows come from a lateral subquery: its name must clash with none."""
    objects = await db.objects(query_for(db.tables["t"], "fields=v,id"))
    assert objects == [[("v", "one"), ("id", 1)], [("v", None), ("id", 2)]]


async def test_isnull_asks_for_null_as_stored_not_for_a_moment_sqlite_cannot_read(
    sqlite_db: Db,
) -> None:
    """'someday' in a DATE column is no date, but it is not NULL either: it exports as
    'someday', so __isnull=true must not pick it (nor __isnull=false leave it out)."""
    mixed = sqlite_db.tables["mixed"]
    nulls = await sqlite_db.objects(query_for(mixed, "fields=id&d__isnull=true"))
    assert nulls == []
    others = await sqlite_db.objects(query_for(mixed, "fields=id&d__isnull=false"))
    assert [[value for _, value in row] for row in others] == [[i] for i in range(1, 11)]


async def test_texts_give_each_value_as_its_text_and_null_apart_from_empty(db: Db) -> None:
    """Parquet's rows: CSV lines (SQLite's, or COPY's CSV) that a reader telling a quoted
    empty field from an unquoted one reads back to each value's text, or None."""
    query = query_for(db.tables["things"], "fields=id,n,name")
    if db.dialect == "sqlite":
        lines = await db.fetch(build_statement(query, "sqlite", Shape.TEXTS))
        text = "".join(line + "\n" for (line,) in lines)
    else:
        text = (await db.copy(query, Shape.TEXTS, "csv")).decode()
    assert csv_records(text) == [  # after an empty first field
        [None, str(row["id"]), None if row["n"] is None else str(row["n"]), row["name"]]
        for row in THINGS]
    query = query_for(db.tables["things"], "fields=name&name__isnull=true")
    if db.dialect == "sqlite":
        lines = await db.fetch(build_statement(query, "sqlite", Shape.TEXTS))
        assert [line for (line,) in lines] == [","], "a lone NULL: no empty line"


async def test_sqlite_csv_lines_are_what_csv_writer_writes(sqlite_db: Db) -> None:
    for fields in (("name", "id", "n"), ("n", "name"), ("name",), ("id",)):
        query = query_for(sqlite_db.tables["things"], "fields=" + ",".join(fields))
        lines = await sqlite_db.fetch(build_statement(query, "sqlite", Shape.CSV))
        assert [line for (line,) in lines] == [
            csv_line([row[name] for name in fields]) for row in THINGS], fields


async def test_postgresql_values_copy_out_as_csv_writer_writes(postgresql_db: Db) -> None:
    for fields in (("name", "id", "n"), ("n", "name"), ("name",), ("id",)):
        query = query_for(postgresql_db.tables["things"], "fields=" + ",".join(fields))
        data = await postgresql_db.copy(query, Shape.VALUES, "csv")
        assert data.decode() == "".join(
            csv_line([row[name] for name in fields]) + "\n" for row in THINGS), fields


async def test_tsv_rows_are_each_values_escaped_text(db: Db) -> None:
    query = query_for(db.tables["things"], "fields=name,id&id__lte=200")
    want = [tsv_line([row["name"], row["id"]]) for row in THINGS if row["id"] <= 200]
    if db.dialect == "sqlite":
        lines = [line for (line,) in await db.fetch(build_statement(query, "sqlite", Shape.TSV))]
    else:
        lines = (await db.copy(query, Shape.TSV, "text")).decode().split("\n")[:-1]
    assert lines == want


# --- How many -------------------------------------------------------------------------------

COUNTED = [
    Case("things"),
    Case("things", (("b", "true"),), where("b", "exact", True)),
    Case("things", after=(ID,)),
    Case("things", limit=5),
    Case("things", (("n__gt", "0"),), where("n", "gt", 0), limit=1000),
    Case("things", (("n__gt", "0"),), where("n", "gt", 0), after=(ID,), limit=9),
    Case("things", limit=0),
    Case("things", limit=2**63 - 1),
    Case("pairs", after=("nor", 6), limit=9),
    Case("logs", (("n__lt", "10"),), where("n", "lt", 10)),
    Case("positive", (("n__gte", "3000000000"),), where("n", "gte", 3_000_000_000)),
]


@pytest.mark.parametrize("case", COUNTED)
async def test_count_is_the_number_of_rows_the_export_gives(db: Db, case: Case) -> None:
    assert await db.one(build_count(case.query(db), db.dialect)) == (len(case.rows()),)


# --- Plans and batches ----------------------------------------------------------------------

PLANNED = [
    (Case("things"), 1),
    (Case("things"), 7),
    (Case("things"), len(THINGS)),
    (Case("things"), 200),
    (Case("things", (("n__isnull", "false"),), where("n", "isnull", False), after=(ID,),
          limit=11), 4),
    (Case("things", limit=8), 4),
    (Case("things", (("ts__gte", "2024-03-01 12:30"),),
          where("ts", "gte", START + timedelta(minutes=30))), 5),
    (Case("things", limit=0), 4),
    (Case("things", (("id__gt", str(LAST_ID)),), where("id", "gt", LAST_ID)), 4),
    (Case("pairs"), 5),
    (Case("pairs", after=("nor", 12), limit=13), 4),
    (Case("pairs", (("region", "west"),), where("region", "exact", "west")), 4),
]


@pytest.mark.parametrize(("case", "rows_each"), PLANNED)
async def test_a_plan_cuts_the_rows_into_ranges_of_the_asked_size(
    db: Db, case: Case, rows_each: int
) -> None:
    ranges, asked = await plan(db, case.query(db), rows_each)
    assert ranges == expected_plan(case, rows_each)
    assert all(0 < rows <= rows_each for rows in asked), "no step is asked for no rows"


@pytest.mark.parametrize(("case", "rows_each"), [
    (Case("logs"), 6), (Case("logs", (("n__lt", "20"),), where("n", "lt", 20)), 3),
])
async def test_sqlite_plans_a_table_without_a_key_by_rowid(
    sqlite_db: Db, case: Case, rows_each: int
) -> None:
    ranges, _ = await plan(sqlite_db, case.query(sqlite_db), rows_each)
    assert ranges == expected_plan(case, rows_each)


async def test_keyed_call_runs_the_first_batch_or_the_one_after_a_key(db: Db) -> None:
    query = query_for(db.tables["things"], "n__isnull=false")
    ids = [row["id"] for row in THINGS if row["n"] is not None]
    keyed = Keyed(lambda first: build_plan(query, db.dialect, first), db.engine.dialect)
    assert plan_row((await db.run(*keyed.call(None, batch_rows=3)))[0]) == ((ids[2],), 3)
    found = await db.run(*keyed.call((ids[10],), batch_rows=4))
    assert plan_row(found[0]) == ((ids[14],), 4)
    found = await db.run(*keyed.call((ids[-2],), batch_rows=4))
    assert plan_row(found[0]) == ((ids[-1],), 1)
    found = await db.run(*keyed.call((ids[-1],), batch_rows=4))  # max() of no rows: NULL
    assert plan_row(found[0]) == (None, 0)
    assert plan_row(None) == (None, 0)


BOUNDED = [  # (case, after, until): the rows of one planned range
    (Case("things"), None, (ID,)),
    (Case("things"), (THINGS[3]["id"],), (THINGS[9]["id"],)),
    (Case("things", (("b", "true"),), where("b", "exact", True)),
     (THINGS[3]["id"],), (THINGS[30]["id"],)),
    # The query's own after holds for the first range too.
    (Case("things", after=(THINGS[5]["id"],)), None, (THINGS[12]["id"],)),
    (Case("pairs"), ("nor", 3), ("north", 4)),
    (Case("pairs"), None, ("east", 7)),
]


@pytest.mark.parametrize(("case", "after", "until"), BOUNDED)
async def test_batch_rows_are_those_after_one_key_up_to_and_with_another(
    db: Db, case: Case, after: tuple[Any, ...] | None, until: tuple[Any, ...]
) -> None:
    oracle = ORACLES[case.table]
    query = case.query(db, oracle.shown)
    keyed = Keyed(lambda first: batch_rows(query, db.dialect, Shape.JSON, first),
                  db.engine.dialect)
    rows = await db.run(*keyed.call(after, **key_arguments("until", until)))
    objects = [json.loads(text, object_pairs_hook=list) for (text,) in rows]
    assert shown(case, objects) == [
        oracle.shown_of(row) for row in case.rows()
        if (after is None or oracle.key_of(row) > after) and oracle.key_of(row) <= until]


BATCHED = [  # (case, fields, shape, separator, rows_each)
    (Case("things"), ("name", "id", "n"), Shape.CSV, "\r\n", 10),
    (Case("things", (("b", "false"),), where("b", "exact", False), after=(ID,), limit=11),
     ("id", "name"), Shape.JSON, ",\n", 4),
    (Case("pairs"), ("region", "month"), Shape.CSV, "\n", 7),
    (Case("logs"), ("msg", "n"), Shape.CSV, "\r\n", 6),
    (Case("logs", (("n__lt", "20"),), where("n", "lt", 20)), ("n", "msg"), Shape.JSON, "\n", 4),
]


@pytest.mark.parametrize(("case", "fields", "shape", "separator", "rows_each"), BATCHED)
async def test_a_sqlite_batch_is_its_planned_rows_joined_by_the_separator(
    sqlite_db: Db, case: Case, fields: tuple[str, ...], shape: Shape, separator: str,
    rows_each: int,
) -> None:
    query = case.query(sqlite_db, fields)
    ranges, _ = await plan(sqlite_db, query, rows_each)
    render = Keyed(lambda first: build_batch(query, shape, separator, first),
                   sqlite_db.engine.dialect)
    batches: list[tuple[Any, int]] = []
    for planned in ranges:
        [(data, rows)] = await sqlite_db.run(
            *render.call(planned.after, **key_arguments("until", planned.until)))
        assert isinstance(data, bytes)
        if shape is Shape.JSON:
            batches.append(([json.loads(text, object_pairs_hook=list)
                             for text in data.decode().split(separator)], rows))
        else:  # CSV lines may hold the separator: compared whole
            batches.append((data.decode(), rows))
    want = [([[(name, row[name]) for name in fields] for row in chunk] if shape is Shape.JSON
             else separator.join(csv_line([row[name] for name in fields]) for row in chunk),
             len(chunk)) for chunk in chunks(case.rows(), rows_each)]
    assert batches == want
    assert len(want) > 1, "the case crosses batches"


# --- Misfits (SQLite) -----------------------------------------------------------------------

MISFITS = [  # (table, query string, the names checked, the ids of the rows checked)
    ("mixed", "", ["id", "n", "d", "f"], range(1, 11)),
    ("mixed", "fields=f,n,t", ["f", "n"], range(1, 11)),
    ("mixed", "fields=t,d,id", ["d", "id"], range(1, 11)),
    ("mixed", "limit=5", ["id", "n", "d", "f"], range(1, 6)),
    ("mixed", "after=5", ["id", "n", "d", "f"], range(6, 11)),
    ("mixed", "after=6&limit=1", ["id", "n", "d", "f"], [7]),
    ("mixed", "after=7&limit=1", ["id", "n", "d", "f"], [8]),
    ("mixed", "id__gte=7&limit=1", ["id", "n", "d", "f"], [7]),
    ("mixed", "n__isnull=false&limit=6", ["id", "n", "d", "f"], range(1, 7)),
    ("mixed", "id__gt=100", ["id", "n", "d", "f"], []),
    # As the export compares it: 'someday' is no date on or after 2024-01-06.
    ("mixed", "d__gte=2024-01-06", ["id", "n", "d", "f"], [6, 7, 9, 10]),
    ("mixed", "limit=0", ["id", "n", "d", "f"], []),
    # No key: a LIMIT might not pick the export's rows, so every row is checked.
    ("mixed_view", "limit=1", ["id", "n", "d", "f"], range(1, 11)),
    ("mixed_view", "id__lte=7&limit=1", ["id", "n", "d", "f"], range(1, 8)),
]


@pytest.mark.parametrize(("table", "raw", "names", "checked"), MISFITS)
async def test_misfits_flag_the_columns_holding_a_value_not_of_their_kind(
    sqlite_db: Db, table: str, raw: str, names: list[str], checked: Sequence[int]
) -> None:
    found = build_misfits(query_for(sqlite_db.tables[table], raw))
    assert found is not None
    statement, checked_names = found
    assert checked_names == names
    flags = await sqlite_db.one(statement)
    assert flags == tuple(int(MISFIT_AT.get(name) in checked) for name in names)


@pytest.mark.parametrize(("low", "high"), [(1, 5), (6, 7), (8, 8), (9, 10), (-5, 0),
                                          (1, 10)])
async def test_misfits_within_rowids_check_those_rows_alone(
    sqlite_db: Db, low: int, high: int
) -> None:
    """Parquet cuts the scan by rowid into parts (``build_rowids``' bounds), one for each
    reader: a part flags the misfits of its own rows, and of no other."""
    mixed = sqlite_db.tables["mixed"]
    assert await sqlite_db.one(build_rowids(query_for(mixed, ""))) == (1, 10)
    found = build_misfits(query_for(mixed, "fields=n,d,id"), (low, high))
    assert found is not None
    flags = await sqlite_db.one(found[0])
    assert flags == tuple(int(name in MISFIT_AT and low <= MISFIT_AT[name] <= high)
                          for name in ("n", "d", "id"))


async def test_only_a_table_with_a_rowid_has_rowid_bounds(sqlite_db: Db) -> None:
    assert build_rowids(query_for(sqlite_db.tables["mixed_view"], "")) is None
    keyed = await _made(sqlite_db, [
        "CREATE TABLE keyed (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID",
        "INSERT INTO keyed VALUES ('a', 1)"], "keyed")
    assert build_rowids(query_for(keyed, "")) is None  # SQLite has no rowid to cut by
    pairs = sqlite_db.tables["pairs"]  # a composite key, and a rowid
    assert await sqlite_db.one(build_rowids(query_for(pairs, ""))) == (1, len(PAIRS))
    logs = sqlite_db.tables["logs"]  # no key: the rowid is its order
    assert await sqlite_db.one(build_rowids(query_for(logs, ""))) == (1, len(LOGS))


WIDE_COLUMNS = 130  # more than a SQLite call takes (127): two calls a line, three an object


async def test_a_row_wider_than_a_sqlite_call_holds_every_value_in_every_shape(db: Db) -> None:
    names = [f"c{i}" for i in range(WIDE_COLUMNS)]
    values = [None if i % 7 == 3 else "" if i % 7 == 5 else f'v{i}, "q" {{}}' if i % 2
              else f"é{i}}}" for i in range(WIDE_COLUMNS)]
    literals = ", ".join("NULL" if v is None else "'" + v.replace("'", "''") + "'"
                         for v in values)
    wide = await _made(db, [
        f"CREATE TABLE wide (id integer PRIMARY KEY, {', '.join(f'{n} text' for n in names)})",
        f"INSERT INTO wide VALUES (1, {literals})"], "wide")
    query = query_for(wide, "")
    row = [1, *values]
    assert await db.objects(query) == [list(zip(["id", *names], row, strict=True))]
    some = query_for(wide, "fields=" + ",".join(names[:60]))  # two calls of json_object
    assert await db.objects(some) == [list(zip(names[:60], values[:60], strict=True))]
    if db.dialect == "sqlite":
        [(line,)] = await db.fetch(build_statement(query, "sqlite", Shape.CSV))
        assert line == csv_line(row)
        [(line,)] = await db.fetch(build_statement(query, "sqlite", Shape.TSV))
        assert line == tsv_line(row)
        [(line,)] = await db.fetch(build_statement(query, "sqlite", Shape.TEXTS))
        texts = line + "\n"
    else:
        data = await db.copy(query, Shape.TSV, "text")
        assert data.decode() == tsv_line(row) + "\n"
        texts = (await db.copy(query, Shape.TEXTS, "csv")).decode()
    assert csv_records(texts) == [[None, "1", *values]]


async def test_misfits_need_a_column_whose_kind_has_a_typed_form(sqlite_db: Db) -> None:
    assert build_misfits(query_for(sqlite_db.tables["mixed"], "fields=t")) is None


def test_the_cases_boundaries_are_values_the_tables_hold() -> None:
    """So that gt and gte (lt and lte) differ on each: the oracle's data, checked."""
    for column, value in (("id", ID), ("n", 3_000_000_000), ("n", -2_250_000_000), ("n", 0),
                          ("f", 2.5), ("f", -5.5), ("m", Decimal("3.7")),
                          ("d", date(2024, 1, 11)), ("d", date(2024, 2, 20)),
                          ("ts", START + timedelta(minutes=7, milliseconds=500)),
                          ("tz", START + timedelta(minutes=26)), ("tm", time(7, 45)),
                          ("tm", time(2, 30, 30)), ("name", "name050"), ("name", "name010")):
        assert any(row[column] == value for row in THINGS), (column, value)
    assert sum(row["ts"] == START + timedelta(minutes=14) for row in THINGS) == 3


async def _made(db: Db, statements: Sequence[str], name: str) -> Table:
    """A table made for one test, as the catalog reflects it."""
    async with db.engine.begin() as conn:
        for statement in statements:
            await conn.exec_driver_sql(statement)
    async with db.engine.connect() as conn:
        return {table.name: table for table in await reflect(conn)}[name]


async def test_after_on_a_uuid_or_enum_key_compares_as_the_keys_own_type(
    postgresql_db: Db,
) -> None:
    """uuid > varchar has no operator in PostgreSQL, and an enum sorts in its declared
    order ('sad' < 'ok' < 'happy'), not its text's: resuming after such a key failed."""
    ids = [str(uuid.UUID(int=i)) for i in (3, 1, 2)]
    tokens = await _made(postgresql_db, [
        "CREATE TABLE tokens (id uuid PRIMARY KEY, v text)",
        "INSERT INTO tokens VALUES " + ", ".join(f"('{i}', 'v')" for i in ids)], "tokens")
    objects = await postgresql_db.objects(query_for(tokens, f"fields=id&after={ids[1]}"))
    assert objects == [[("id", ids[2])], [("id", ids[0])]]
    moods = await _made(postgresql_db, [
        "CREATE TABLE moods (m mood PRIMARY KEY)",
        "INSERT INTO moods VALUES ('happy'), ('sad'), ('ok')"], "moods")
    objects = await postgresql_db.objects(query_for(moods, "after=sad"))
    assert objects == [[("m", "ok")], [("m", "happy")]], "in the enum's order"


async def test_after_on_sqlite_compares_a_moment_key_in_one_text_form(sqlite_db: Db) -> None:
    """A key stored as '2024-03-01 12:00:00' and the bound '2024-03-01 12:00:00.000': as
    text the stored one sorts below, so the rows sharing that moment were skipped."""
    ticks = await _made(sqlite_db, [
        "CREATE TABLE ticks (at TIMESTAMP, seq INTEGER, PRIMARY KEY (at, seq))",
        "INSERT INTO ticks VALUES ('2024-03-01 12:00:00', 2), ('2024-03-01 12:00:01', 1), "
        "('2024-03-01 12:00:00', 1), ('2024-03-01 12:00:00', 3)"], "ticks")
    objects = await sqlite_db.objects(query_for(ticks, "fields=seq&after=2024-03-01T12:00:00Z,1"))
    assert objects == [[("seq", 2)], [("seq", 3)], [("seq", 1)]]


async def test_after_on_a_timestamptz_key_is_the_moment_given(postgresql_db: Db) -> None:
    """A key with a zone is compared as a moment; the database's sessions run in Tokyo, so
    a bound read as a local time without a zone would pick hours of other rows."""
    moments = await _made(postgresql_db, [
        "CREATE TABLE moments (at timestamptz PRIMARY KEY)",
        "INSERT INTO moments VALUES ('2024-03-01 13:00:00+00'), ('2024-03-01 11:00:00+00'), "
        "('2024-03-01 12:00:00+00')"], "moments")
    objects = await postgresql_db.objects(query_for(moments, "after=2024-03-01T12:00:00Z"))
    assert objects == [[("at", "2024-03-01T13:00:00Z")]]


async def test_after_on_a_sqlite_moment_key_with_microseconds_loses_and_repeats_nothing(
    sqlite_db: Db,
) -> None:
    """Keys as Python's sqlite3 stores a datetime (microseconds when there are some):
    compared as stored, exactly, and with the key's index (a seek, not a scan)."""
    stamps = await _made(sqlite_db, [
        "CREATE TABLE stamps (at TIMESTAMP PRIMARY KEY)",
        "INSERT INTO stamps VALUES ('2024-03-01 12:00:02.123600'), "
        "('2024-03-01 12:00:02.123300'), ('2024-03-01 12:00:02.124100'), "
        "('2024-03-01 12:00:02.123400'), ('2024-03-01 12:00:02')"], "stamps")
    rows = await sqlite_db.fetch(build_statement(
        query_for(stamps, "after=2024-03-01T12:00:02.1233Z"), "sqlite", Shape.JSON))
    assert len(rows) == 3, "after .1233: .1234, .1236 and .1241"
    rows = await sqlite_db.fetch(build_statement(
        query_for(stamps, "after=2024-03-01T12:00:02Z"), "sqlite", Shape.JSON))
    assert len(rows) == 4, "after the whole second: the four with a fraction"
    plan = await sqlite_db.run("EXPLAIN QUERY PLAN SELECT 1 FROM stamps WHERE at > ?",
                               ["2024-03-01 12:00:02"])
    assert any("SEARCH" in str(step) for step in plan)


async def test_a_postgresql_table_named_as_any_alias_exports_its_rows(postgresql_db: Db) -> None:
    for name in ("anon_1", "exporter_row"):
        table = await _made(postgresql_db, [
            f'CREATE TABLE "{name}" (id integer PRIMARY KEY)',
            f'INSERT INTO "{name}" VALUES (1), (2)'], name)
        assert await postgresql_db.objects(query_for(table)) == [[("id", 1)], [("id", 2)]]
    # Never the alias the other would take either (a fixed alias is wrong for one table).
    table = await _made(postgresql_db, [
        'CREATE TABLE "exporter_row_" (id integer PRIMARY KEY)',
        'INSERT INTO "exporter_row_" VALUES (1), (2)'], "exporter_row_")
    assert await postgresql_db.objects(query_for(table)) == [[("id", 1)], [("id", 2)]]


async def test_after_on_a_sqlite_date_key_is_compared_as_stored_in_any_local_zone(
    sqlite_db: Db,
) -> None:
    """A date key is bound as its ISO text, a timestamp key as its UTC text: the process's
    own time zone (a host far from UTC) must not move either."""
    days = await _made(sqlite_db, [
        "CREATE TABLE days (d DATE, seq INTEGER, PRIMARY KEY (d, seq))",
        "INSERT INTO days VALUES ('2024-03-02', 1), ('2024-03-01', 2), ('2024-03-01', 1), "
        "('2024-02-29', 1)"], "days")
    marks = await _made(sqlite_db, [
        "CREATE TABLE marks (at TIMESTAMP PRIMARY KEY)",
        "INSERT INTO marks VALUES ('2024-03-01 23:30:00'), ('2024-03-01 12:00:00'), "
        "('2024-03-02 00:30:00')"], "marks")
    with local_time_zone("America/New_York"):
        objects = await sqlite_db.objects(query_for(days, "after=2024-03-01,1"))
        assert objects == [[("d", "2024-03-01"), ("seq", 2)], [("d", "2024-03-02"), ("seq", 1)]]
        objects = await sqlite_db.objects(query_for(marks, "after=2024-03-01T18:30:00-05:00"))
        assert objects == [[("at", "2024-03-02T00:30:00Z")]], "23:30 UTC, the key, is not after"


# --- SQLite keys that may hold NULL ---------------------------------------------------------
# SQLite lets a primary key column not declared NOT NULL hold NULL. The rows whose key holds
# one are read apart (null_key=True), first, in key order and then rowid order; the batches
# take the whole keys (null_key=False). A filter on another, indexed column makes SQLite
# read in that index's order and sort by the key: the rowid then decides among NULLs.

async def _codes(db: Db) -> Table:
    return await _made(db, [
        "CREATE TABLE codes (code TEXT PRIMARY KEY, label TEXT)",
        "CREATE INDEX codes_label ON codes (label)",
        "INSERT INTO codes VALUES (NULL, 'n3'), (NULL, 'n1'), ('b', 'x2'), (NULL, 'n2'), "
        "('a', 'x1'), ('c', 'x3')"], "codes")


async def test_rows_whose_sqlite_key_holds_null_are_read_apart_in_rowid_order(
    sqlite_db: Db,
) -> None:
    codes = await _codes(sqlite_db)

    async def labels(query: ExportQuery) -> list[str]:
        return [dict(pairs)["label"] for pairs in await sqlite_db.objects(query)]

    whole = query_for(codes, "label__gte=a")
    assert await labels(replace(whole, null_key=True)) == ["n3", "n1", "n2"], "rowid order"
    assert await labels(replace(whole, null_key=False)) == ["x1", "x2", "x3"]
    # after= names a whole key: the NULL-keyed rows were before it, and stay out.
    assert await labels(replace(query_for(codes, "after=a"), null_key=False)) == ["x2", "x3"]
    assert await sqlite_db.one(build_count(replace(whole, null_key=True), "sqlite")) == (3,)
    assert await sqlite_db.one(build_count(replace(whole, null_key=False), "sqlite")) == (3,)
    # A composite key: (a IS NULL OR b IS NULL) is no seek on the key's index; with the
    # label's index SQLite reads in label order, and sorts: the rowid decides among equals.
    duos = await _made(sqlite_db, [
        "CREATE TABLE duos (a TEXT, b TEXT, label TEXT, PRIMARY KEY (a, b))",
        "CREATE INDEX duos_label ON duos (label)",
        "INSERT INTO duos VALUES (NULL, NULL, 'n3'), (NULL, NULL, 'n1'), ('a', 'x', 'x1'), "
        "(NULL, NULL, 'n2')"], "duos")
    nulls = replace(query_for(duos, "label__gte=a"), null_key=True)
    assert await labels(nulls) == ["n3", "n1", "n2"], "rowid order"


async def test_misfits_with_a_limit_check_the_rows_a_nullable_key_sends_first(
    sqlite_db: Db,
) -> None:
    """Sent: ('z', NULL) (its key holds a NULL), then ('a', 'x'), then ('b', 'y'), whose n
    is no integer: two rows hold no misfit, three do. ORDER BY the key alone would put
    ('a', 'x') first, and no order at all ('b', 'y'), the first row stored."""
    pairs = await _made(sqlite_db, [
        "CREATE TABLE keyed_pairs (a TEXT, b TEXT, n INTEGER, PRIMARY KEY (a, b))",
        "INSERT INTO keyed_pairs VALUES ('b', 'y', 'not a number'), ('z', NULL, 1), ('a', 'x', 2)",
    ], "keyed_pairs")
    for raw, flagged in (("limit=1", 0), ("limit=2", 0), ("limit=3", 1)):
        found = build_misfits(query_for(pairs, raw))
        assert found is not None and found[1] == ["n"]
        assert await sqlite_db.one(found[0]) == (flagged,), raw


async def test_after_on_a_nullable_composite_key_leaves_the_null_keyed_rows_out_of_rows_and_count(
    sqlite_db: Db,
) -> None:
    """(2, NULL) > (1, 5) holds in SQL (the first column decides), but a row whose key holds
    a NULL was sent before every whole key: after= one, it is neither sent nor counted."""
    table = await _made(sqlite_db, [
        "CREATE TABLE half_keyed (a INTEGER, b INTEGER, label TEXT, PRIMARY KEY (a, b))",
        "INSERT INTO half_keyed VALUES (1, 5, 'whole 1'), (2, NULL, 'half'), (3, 1, 'whole 3')",
    ], "half_keyed")
    query = query_for(table, "after=1,5")
    assert [dict(pairs)["label"] for pairs in await sqlite_db.objects(query)] == ["whole 3"]
    assert await sqlite_db.one(build_count(query, "sqlite")) == (1,)


async def test_the_misfit_scan_of_a_limit_on_a_lone_nullable_key_reads_only_that_many(
    sqlite_db: Db,
) -> None:
    """A lone key column sorts its NULLs first by itself: the scan walks the key's index and
    stops at the limit, instead of sorting the whole table first."""
    table = await _made(sqlite_db, [
        "CREATE TABLE lone_keyed (code TEXT PRIMARY KEY, n INTEGER)",
        "INSERT INTO lone_keyed VALUES ('b', 2), (NULL, 1), ('a', 3)"], "lone_keyed")
    found = build_misfits(query_for(table, "limit=2"))
    assert found is not None
    sql = str(found[0].compile(sqlite_db.engine, compile_kwargs={"literal_binds": True}))
    plan = " ".join(str(step) for step in await sqlite_db.run("EXPLAIN QUERY PLAN " + sql, []))
    assert "TEMP B-TREE" not in plan, plan
    assert await sqlite_db.one(found[0]) == (0,)
