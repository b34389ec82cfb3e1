"""The service on a database it did not create, on both backends.

The user's own schema is made here with plain SQL (not the project's models): its own
``users`` keyed by text, a table without a key, one with a composite key, a view, a table
called ``Order Items`` with columns called ``limit``, ``from`` and ``select``, every kind of
column, an application's own ``alembic_version``; then ``exporter migrate`` runs on it.

Every export is checked against an oracle that reads the rows with the driver (``sqlite3``,
``asyncpg``) and renders them with Python's ``csv`` and ``json``, never with the exporter's
code; the tables both backends can hold alike give the same bytes on both.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import random
import re
import sqlite3
import struct
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url

from exporter.app import create_app
from tests.conftest import Database, postgres_url, scratch_postgres_url, serving

BACKENDS = ["sqlite", "postgresql"]
FORMATS = ["csv", "ndjson", "json"]
# Small batches, so that a few hundred rows cross many batch (SQLite) and COPY range
# (PostgreSQL) boundaries.
BATCH_ROWS = 16

# --- The user's schema ----------------------------------------------------------------------
# How the oracle renders a column: the test's own idea of each column, not the catalog's.
INT, FLOAT, MONEY, TEXT, BOOL, DATE, STAMP, CLOCK, UUID, JSON, BYTES, ARRAY = (
    "int", "float", "money", "text", "bool", "date", "stamp", "clock", "uuid", "json",
    "bytes", "array",
)


@dataclass(frozen=True)
class Col:
    name: str
    oracle: str  # how the oracle renders it
    sqlite: str  # declared type on SQLite
    postgres: str  # declared type on PostgreSQL


@dataclass(frozen=True)
class Spec:
    name: str
    columns: tuple[Col, ...]
    key: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()  # logical values, in column order

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


PLUS_ONE = timezone(timedelta(hours=1))
KOLKATA = timezone(timedelta(hours=5, minutes=30))
JSON_DOCS = [
    {"name": "王伟 🚀", "tags": ["a", "b"], "nested": {"k": [1, 2.5, None, True]}},
    {"quote": 'say "hi", then: go', "crlf": "a\r\nb", "tab": "\t", "empty": {}},
    [1, "two", {"three": 3}],
    "just a string",
    42,
    None,  # the JSON null, not SQL NULL
]


def stored_json(index: int) -> str:
    """How the user wrote the document: with spaces, and some over several lines."""
    doc = JSON_DOCS[index % len(JSON_DOCS)]
    return json.dumps(doc, ensure_ascii=False, indent=2 if index % 2 else None)


HOSTILE_TEXT = [
    "王伟 🚀", 'Ångström, "Jr."', "line one\r\nline two\nthree\rfour", "tab\there",
    "back\\slash", "ctrl \x01\x1f\x7f", " padded ", "", "a,b", '"', "€", "\u2028\u2029",
]


def kinds_rows() -> tuple[tuple[Any, ...], ...]:
    """Hand-made rows first, then generated ones; one row holds NULL in every column."""
    rows: list[tuple[Any, ...]] = [
        (1, 0, 2**63 - 1, 39.81, Decimal("12.30"), "\ufeff王伟 🚀", True, date(2024, 3, 1),
         datetime(2024, 3, 1, 13, 0, 0, tzinfo=PLUS_ONE), datetime(2024, 3, 1, 12, 0, 0),
         time(12, 0, 0), uuid.UUID("123e4567-e89b-12d3-a456-426614174000"), stored_json(0),
         b"\xff\x00\xfe not utf-8"),
        (2, -7, -(2**63), 0.1, Decimal("0.05"), 'Ångström, "Jr."\r\nline\ttab', False,
         date(1999, 12, 31), datetime(2024, 3, 1, 2, 0, 0, tzinfo=KOLKATA),
         datetime(2025, 12, 31, 23, 59, 59, 999000), time(23, 59, 59, 500000),
         uuid.UUID("00000000-0000-0000-0000-000000000000"), stored_json(1), b""),
        (3, 2**31 - 1, 2**40, 1e300, Decimal("9999999999.99"), "", True, date(2000, 2, 29),
         datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC), datetime(1970, 1, 1, 0, 0, 0),
         time(0, 0, 0), uuid.UUID("ffffffff-ffff-ffff-ffff-ffffffffffff"), stored_json(2),
         bytes(range(256))),
        (4, None, None, None, None, None, None, None, None, None, None, None, None, None),
        (5, 1, 1, 5e-324, Decimal("0.00"), "a,b", False, date(2024, 2, 29),
         datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC), datetime(2024, 2, 29, 23, 59, 59),
         time(7, 5, 3), uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), stored_json(3),
         b"\x00"),
        (6, 2, 3, 123456789.123, Decimal("-12.30"), "back\\slash ctrl \x01\x1f\x7f", True,
         date(1, 1, 2), datetime(2024, 3, 1, 12, 0, 0, 999999, tzinfo=UTC),
         datetime(2024, 3, 1, 12, 0, 0), time(12, 0, 0, 1), uuid.UUID(int=1),
         stored_json(4), b"+/="),
        (7, 3, 4, 100.0, Decimal("1"), "€ \u2028\u2029", False, date(9999, 12, 30),
         datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, 59),
         time(23, 59, 59), uuid.UUID(int=2), stored_json(5), b"\xe2\x82"),
        (8, 4, 5, 1e16, Decimal("0.10"), '"', True, date(2024, 3, 1),
         datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC), datetime(2024, 3, 1, 12, 0, 0),
         time(12, 0, 0), uuid.UUID(int=3), stored_json(6), b"x"),
        (9, 5, 6, 1e-05, Decimal("100.00"), " padded ", False, date(2024, 3, 2),
         datetime(2024, 3, 2, 0, 0, 0, tzinfo=UTC), datetime(2024, 3, 2, 0, 0, 0),
         time(0, 0, 1), uuid.UUID(int=4), stored_json(7), b"y"),
        (10, 6, 7, 1e15, Decimal("3.14"), "tab\there", True, date(2023, 1, 1),
         datetime(2023, 1, 1, 0, 0, 0, tzinfo=UTC), datetime(2023, 1, 1, 0, 0, 0),
         time(1, 2, 3), uuid.UUID(int=5), stored_json(8), b"z"),
        (11, 7, 8, 0.30000000000000004, Decimal("7.77"), "x", False, date(2022, 1, 1),
         datetime(2022, 1, 1, 0, 0, 0, tzinfo=UTC), datetime(2022, 1, 1, 0, 0, 0),
         time(1, 2, 4), uuid.UUID(int=6), stored_json(9), b"w"),
        (12, 8, 9, 1234567890123456.0, Decimal("8.88"), "y", True, date(2021, 1, 1),
         datetime(2021, 1, 1, 0, 0, 0, tzinfo=UTC), datetime(2021, 1, 1, 0, 0, 0),
         time(1, 2, 5), uuid.UUID(int=7), stored_json(10), b"v"),
    ]
    generator = random.Random(10)
    start = datetime(2023, 6, 1, tzinfo=UTC)
    for row_id in range(13, 301):
        moment = start + timedelta(seconds=generator.randrange(0, 400 * 86400))
        rows.append((
            row_id, generator.randrange(-1000, 1000), generator.randrange(-2**62, 2**62),
            round(generator.uniform(-1000, 1000), generator.randrange(0, 6)),
            Decimal(generator.randrange(-10**6, 10**6)) / 100,
            generator.choice(HOSTILE_TEXT) + str(row_id), generator.random() < 0.5,
            moment.date(), moment, moment.replace(tzinfo=None), moment.time(),
            uuid.UUID(int=generator.getrandbits(128)), stored_json(row_id),
            generator.randbytes(generator.randrange(0, 40)),
        ))
    return tuple(rows)


def users_rows() -> tuple[tuple[Any, ...], ...]:
    names = ["Zoë", "王伟", "a,b", "Bob", "alice", "x y", "~tilde", "Ω", "0"]
    ids = names + [f"u{i:04d}" for i in range(1, 200)]
    generator = random.Random(11)
    return tuple(
        (user_id, f"{user_id}@example.com", f"$2b$12${generator.randbytes(8).hex()}",
         datetime(2024, 1, 1) + timedelta(minutes=generator.randrange(0, 10**6)),
         generator.randrange(-3, 10) if i % 7 else None)
        for i, user_id in enumerate(ids)
    )


SHARED = [
    Spec("users", (
        Col("id", TEXT, "TEXT NOT NULL", "text NOT NULL"),
        Col("email", TEXT, "TEXT NOT NULL", "text NOT NULL"),
        Col("password_hash", TEXT, "VARCHAR(60)", "varchar(60)"),
        Col("signed_up", STAMP, "TIMESTAMP", "timestamp without time zone"),
        Col("karma", INT, "INTEGER", "integer"),
    ), ("id",), users_rows()),
    Spec("kinds", (
        Col("id", INT, "INTEGER NOT NULL", "integer NOT NULL"),
        Col("small", INT, "INTEGER", "integer"),
        Col("big", INT, "BIGINT", "bigint"),
        Col("ratio", FLOAT, "DOUBLE PRECISION", "double precision"),
        Col("price", MONEY, "NUMERIC(12,2)", "numeric(12,2)"),
        Col("label", TEXT, "TEXT", "text"),
        Col("flag", BOOL, "BOOLEAN", "boolean"),
        Col("day", DATE, "DATE", "date"),
        Col("at_utc", STAMP, "DATETIME", "timestamp with time zone"),
        Col("at_local", STAMP, "TIMESTAMP", "timestamp without time zone"),
        Col("clock", CLOCK, "TIME", "time"),
        Col("token", UUID, "UUID", "uuid"),
        Col("doc", JSON, "JSON", "json"),
        Col("raw", BYTES, "BLOB", "bytea"),
    ), ("id",), kinds_rows()),
    Spec("memberships", (
        Col("org", INT, "INTEGER NOT NULL", "integer NOT NULL"),
        Col("member", TEXT, "TEXT NOT NULL", "text NOT NULL"),
        Col("role", TEXT, "TEXT", "text"),
    ), ("org", "member"), tuple(
        (org, member, role)
        for org in (-1, 0, 1, 2, 10)
        for member, role in [("Doe, Jane", "owner"), ("bob", None), ("Bob", "admin"),
                             ("王伟", "member"), ("a", ""), ("a,b,c", "x")]
        + [(f"m{i:02d}", "member") for i in range(25)]
    )),
    Spec("log_lines", (
        Col("at", STAMP, "TIMESTAMP", "timestamp without time zone"),
        Col("level", TEXT, "TEXT", "text"),
        Col("message", TEXT, "TEXT", "text"),
    ), (), tuple(
        (datetime(2024, 3, 1) + timedelta(seconds=i * 37), ["INFO", "WARN", None][i % 3],
         HOSTILE_TEXT[i % len(HOSTILE_TEXT)])
        for i in range(80)
    )),
    Spec("Order Items", (
        Col("id", INT, "INTEGER NOT NULL", "integer NOT NULL"),
        Col("limit", INT, "INTEGER", "integer"),
        Col("from", TEXT, "TEXT", "text"),
        Col("select", TEXT, "TEXT", "text"),
    ), ("id",), tuple(
        (i, i % 9 if i % 10 else None, f"warehouse {i % 4}", "yes" if i % 2 else "no")
        for i in range(1, 61)
    )),
    Spec("alembic_version", (  # the application's own Alembic history
        Col("version_num", TEXT, "VARCHAR(32) NOT NULL", "varchar(32) NOT NULL"),
    ), ("version_num",), (("a1b2c3d4e5f6",),)),
]
# Wider than SQLite lets one function call take arguments (127 unless built otherwise):
# a row's json_object, printf or line is made of several calls there.
WIDE_OF = SHARED[1].columns[1:]  # kinds' columns but its key, over and over
WIDE_COLUMNS = 140
WIDE = Spec("wide", (
    SHARED[1].columns[0],
    *(replace(WIDE_OF[i % len(WIDE_OF)], name=f"{WIDE_OF[i % len(WIDE_OF)].name}_{i}")
      for i in range(WIDE_COLUMNS)),
), ("id",), tuple(
    (row[0], *(row[1 + i % len(WIDE_OF)] for i in range(WIDE_COLUMNS)))
    for row in kinds_rows()[:40]
))
VIEW = Spec("active_users", (
    Col("id", TEXT, "", ""), Col("email", TEXT, "", ""), Col("karma", INT, "", ""),
))
VIEW_SQL = "CREATE VIEW active_users AS SELECT id, email, karma FROM users WHERE karma > 0"
SHARED_NAMES = [spec.name for spec in SHARED] + [VIEW.name]

# PostgreSQL alone: arrays, jsonb.
PG_EXTRAS = Spec("pg_extras", (
    Col("id", INT, "", "integer NOT NULL"),
    Col("ints", ARRAY, "", "integer[]"),
    Col("words", ARRAY, "", "text[]"),
    Col("grid", ARRAY, "", "double precision[]"),
    Col("doc", JSON, "", "jsonb"),
), ("id",), (
    (1, [1, 2, 3], ["a", "comma, here", '"quoted"', "王伟 🚀", None, "", "back\\slash\n"],
     [[1.5, 0.1], [1e300, -2.0]], '{"b": 1, "a": [1, 2], "aa": "x, y: z", "b": 2}'),
    (2, [], [], [], "[]"),
    (3, [None, -(2**31)], ["NULL"], [5e-324], '{"nested": {"z": null, "y": "\\n"}}'),
    (4, None, None, None, None),
))

# PostgreSQL's infinite moments (asyncpg reads them as date.max and datetime.max: no oracle).
PG_MOMENTS = """
CREATE TABLE pg_moments (id integer PRIMARY KEY, day date, at timestamptz, naive timestamp);
INSERT INTO pg_moments VALUES (1, 'infinity', '-infinity', 'infinity'),
                              (2, '-infinity', 'infinity', '-infinity'),
                              (3, '2024-03-01', '2024-03-01 13:00:00+01', '2024-03-01 12:00:00'),
                              (4, NULL, NULL, NULL);
"""

# SQLite alone: values that do not fit their column's declared kind.
MISFITS = Spec("misfits", (
    Col("id", INT, "INTEGER NOT NULL", ""),
    Col("n", INT, "INTEGER", ""),
    Col("f", FLOAT, "REAL", ""),
    Col("t", TEXT, "TEXT", ""),
    Col("b", BOOL, "BOOLEAN", ""),
    Col("d", DATE, "DATE", ""),
    Col("ts", STAMP, "TIMESTAMP", ""),
    Col("m", MONEY, "NUMERIC(12,2)", ""),
    Col("j", JSON, "JSON", ""),
    Col("u", UUID, "UUID", ""),
), ("id",), (
    (1, "abc", "abc", 1.5, 2, "not a date", 1700000000, "n/a", "{oops", "not-a-uuid"),
    (2, b"\x00\xff", b"\x01", b"\xff\xfe", "yes", 20240301, "yesterday", b"\x02", 7, 12.5),
    (3, 1.5, 7, 42, 0.5, 3.25, 1.25, 12, "[1, 2]", b"\x03"),
    (4, 9.0, None, "x,y", 1, "2024-03-01", "2024-03-01T12:00:00+01:00", 0.05, '"s"', None),
    (5, None, None, None, None, "now", "12:00", None, None, None),
    # A REAL whose SQLite text is not the shortest (0.3), a comma in numeric columns,
    # infinities, and a BLOB where JSON is declared.
    (6, "a,b", math.inf, None, 0.1 + 0.2, None, None, "1,5", b"\x04", "x,y"),
    (7, -math.inf, -math.inf, None, None, None, None, None, 0.1 + 0.2, 5),
))


# Doubles for the property test: random bit patterns, subnormals, whole numbers, decimals,
# huge and tiny, and the edges. Negative zero is apart: SQLite cannot store it (below).
def random_doubles(count: int = 2000, seed: int = 20240301) -> list[float]:
    generator = random.Random(seed)
    values = [0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 2.225073858507201e-308,
              1.7976931348623157e308, -1.7976931348623157e308, 1e300, 1e-300, 0.1, 1 / 3,
              39.81, 123456789.123, 2.0**53, 1e15, 1e16, 1e22, 1e23, 1e-4, 1e-5, 100.0,
              999999999999999.9, 0.30000000000000004, 1234567890123456.0]
    while len(values) < count:
        pick = generator.randrange(5)
        if pick == 0:
            value = struct.unpack("<d", generator.getrandbits(64).to_bytes(8, "little"))[0]
            if not math.isfinite(value):
                continue
        elif pick == 1:  # subnormal: exponent bits all zero
            value = struct.unpack("<d", generator.getrandbits(52).to_bytes(8, "little"))[0]
            value = -value if generator.random() < 0.5 else value
        elif pick == 2:
            value = float(generator.randrange(-2**62, 2**62) >> generator.randrange(0, 62))
        elif pick == 3:
            value = round(generator.uniform(-1e6, 1e6), generator.randrange(0, 9))
        else:
            value = generator.uniform(1, 10) * 10.0 ** generator.randrange(-320, 308)
        if value == 0 and math.copysign(1, value) < 0:
            continue
        values.append(value)
    return values


ZEROS = Spec("zeros", (
    Col("id", INT, "INTEGER NOT NULL", "integer NOT NULL"),
    Col("x", FLOAT, "REAL", "double precision"),
), ("id",), ((1, -0.0), (2, 0.0)))
FLOATS = Spec("doubles", (
    Col("id", INT, "INTEGER NOT NULL", "integer NOT NULL"),
    Col("x", FLOAT, "REAL", "double precision"),
), ("id",), tuple(enumerate(random_doubles(), start=1)))


# --- Building the user's databases, with plain SQL ------------------------------------------


def sqlite_value(value: Any) -> Any:
    """A logical value as a user of ``sqlite3`` would store it: moments as ISO text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return value.isoformat(" " if value.tzinfo is None else "T")
    if isinstance(value, date | time | uuid.UUID | Decimal):
        return str(value)
    return value


def create_sql(spec: Spec, backend: str) -> str:
    columns = [f"{q(c.name)} {c.sqlite if backend == 'sqlite' else c.postgres}"
               for c in spec.columns]
    if spec.key:
        columns.append(f"PRIMARY KEY ({', '.join(q(name) for name in spec.key)})")
    return f"CREATE TABLE {q(spec.name)} ({', '.join(columns)})"


def insert_sql(spec: Spec, marks: Sequence[str]) -> str:
    return (f"INSERT INTO {q(spec.name)} ({', '.join(q(n) for n in spec.names)}) "
            f"VALUES ({', '.join(marks)})")


def build_sqlite(path: Path, specs: Sequence[Spec]) -> None:
    with sqlite3.connect(path) as conn:
        for spec in specs:
            conn.execute(create_sql(spec, "sqlite"))
            conn.executemany(insert_sql(spec, ["?"] * len(spec.columns)),
                             [[sqlite_value(v) for v in row] for row in spec.rows])
        conn.execute(VIEW_SQL)
    conn.close()


def driver_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def build_postgres(url: str, specs: Sequence[Spec]) -> None:
    conn = await asyncpg.connect(driver_url(url))
    try:
        for spec in specs:
            await conn.execute(create_sql(spec, "postgresql"))
            marks = [f"${i}" for i in range(1, len(spec.columns) + 1)]
            await conn.executemany(insert_sql(spec, marks), spec.rows)
        await conn.execute(VIEW_SQL)
        await conn.execute(PG_MOMENTS)
    finally:
        await conn.close()


def exporter_migrate(database: Database) -> None:
    """``exporter migrate``, as the user runs it on their database."""
    done = subprocess.run([sys.executable, "-m", "exporter", "migrate"], env=database.env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# --- Reading it back with the driver: the oracle's rows -------------------------------------


def sqlite_rows(path: Path, spec: Spec) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        order = " ORDER BY rowid" if not spec.key and spec.rows else ""
        return list(conn.execute(
            f"SELECT {', '.join(q(n) for n in spec.names)} FROM {q(spec.name)}{order}"
        ))
    finally:
        conn.close()


async def postgres_rows(url: str, spec: Spec) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(driver_url(url))
    try:
        found = await conn.fetch(
            f"SELECT {', '.join(q(n) for n in spec.names)} FROM {q(spec.name)}"
        )
    finally:
        await conn.close()
    return [tuple(record) for record in found]


def in_key_order(spec: Spec, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows in primary-key order, as Python orders the key (text by code point, as SQLite
    and PostgreSQL's C collation do); rows of a table without a key as they were read."""
    if not spec.key:
        return rows
    places = [spec.names.index(name) for name in spec.key]
    return sorted(rows, key=lambda row: tuple(row[i] for i in places))


# --- The oracle: Python's csv and json, nothing of the exporter's ---------------------------


def shortest_float(value: float) -> str:
    """The fewest correctly rounded significant digits that read back to ``value`` and do
    not lie exactly halfway to a neighbouring double (as PostgreSQL's float8 output:
    1e23 is 9.999999999999999e+22), in its notation: positional for decimal exponents -4
    to 14, else ``1.5e+16``, ``5e-324`` (two exponent digits at least); no ``.0``."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    with localcontext() as exact:
        exact.prec = 1100  # every double and every halfway point, exactly
        halfway = {(Decimal(value) + Decimal(math.nextafter(value, side))) / 2
                   for side in (-math.inf, math.inf)}
        for places in range(17):
            text = f"{value:.{places}e}"
            if float(text) == value and Decimal(text) not in halfway:
                break
    mantissa, exponent = text.split("e")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    scientific = int(exponent)
    if -4 <= scientific < 15:
        return format(Decimal(f"{mantissa}e{scientific}"), "f")
    return f"{mantissa}e{'-' if scientific < 0 else '+'}{abs(scientific):02d}"


def as_moment(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite: as the user stored it
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def oracle_text(kind: str, value: Any) -> str | None:
    """A value as its text (CSV's field; a JSON string's or number's content)."""
    if value is None:
        return None
    if kind == INT:
        return str(value)
    if kind == FLOAT:
        return shortest_float(float(value))
    if kind == MONEY:  # SQLite holds it as a REAL (12.3), PostgreSQL as Decimal("12.30")
        return format(Decimal(str(value)), ".2f")
    if kind == BOOL:
        return "true" if value else "false"
    if kind == DATE:
        return date.fromisoformat(value).isoformat() if isinstance(value, str) \
            else value.isoformat()
    if kind == STAMP:
        return as_moment(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == CLOCK:
        moment = time.fromisoformat(value) if isinstance(value, str) else value
        return moment.strftime("%H:%M:%S")
    if kind == BYTES:
        return base64.b64encode(value).decode()
    if kind == ARRAY:
        return array_json(value)
    return str(value)  # text, uuid, json (as stored)


def array_json(value: Any) -> str:
    """A PostgreSQL array as a JSON array: its floats as float8 text, like any float."""
    if isinstance(value, list):
        return "[" + ",".join(array_json(item) for item in value) + "]"
    if isinstance(value, float):
        return shortest_float(value)
    return compact_json(value)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def oracle_json(kind: str, value: Any) -> str:
    """A value as a JSON fragment."""
    rendered = oracle_text(kind, value)
    if rendered is None:
        return "null"
    if kind in (INT, FLOAT, MONEY, BOOL, ARRAY):
        return rendered
    if kind == JSON:  # embedded, without the user's whitespace
        return compact_json(json.loads(rendered))
    return json.dumps(rendered, ensure_ascii=False)


def oracle_objects(spec: Spec, rows: list[tuple[Any, ...]], fields: Sequence[str]) -> list[str]:
    places = [spec.names.index(name) for name in fields]
    kinds = [spec.columns[i].oracle for i in places]
    return [
        "{" + ",".join(f"{json.dumps(name, ensure_ascii=False)}:{oracle_json(kind, row[i])}"
                       for name, kind, i in zip(fields, kinds, places, strict=True)) + "}"
        for row in rows
    ]


def oracle_bytes(spec: Spec, rows: list[tuple[Any, ...]], extension: str,
                 fields: Sequence[str] | None = None) -> bytes:
    """The export as the contract spells it, from the driver's rows."""
    fields = list(fields or spec.names)
    if extension == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(fields)
        places = [spec.names.index(name) for name in fields]
        for row in rows:
            writer.writerow([oracle_text(spec.columns[i].oracle, row[i]) or "" for i in places])
        return out.getvalue().encode()
    objects = oracle_objects(spec, rows, fields)
    if extension == "ndjson":
        return "".join(line + "\n" for line in objects).encode()
    return ("[\n" + ",\n".join(objects) + "\n]\n" if objects else "[]\n").encode()


# --- The two databases, served --------------------------------------------------------------


@dataclass
class Foreign:
    backend: str
    database: Database
    client: httpx.AsyncClient
    read: Callable[[Spec], Any]  # awaitable: the table's rows, read with the driver

    async def rows(self, spec: Spec) -> list[tuple[Any, ...]]:
        return in_key_order(spec, await self.read(spec))

    async def get(self, path: str, **params: str) -> httpx.Response:
        return await self.client.get(path, params=params)

    async def body(self, path: str, **params: str) -> bytes:
        response = await self.get(path, **params)
        assert response.status_code == 200, response.text
        return response.content


async def serve(database: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(database.settings(run_worker=False, batch_rows=BATCH_ROWS))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://exporter") as c:
            yield c


@pytest.fixture(scope="module")
async def sqlite_foreign(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Foreign]:
    data_dir = tmp_path_factory.mktemp("foreign-sqlite")
    path = data_dir / "app.db"
    build_sqlite(path, [*SHARED, WIDE, MISFITS, FLOATS, ZEROS])
    database = Database("sqlite", f"sqlite+aiosqlite:///{path}", data_dir)
    exporter_migrate(database)

    async def read(spec: Spec) -> list[tuple[Any, ...]]:
        return sqlite_rows(path, spec)

    async for client in serve(database):
        yield Foreign("sqlite", database, client, read)


@pytest.fixture(scope="module")
async def postgres_foreign(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Foreign]:
    postgres_url()  # skips without a PostgreSQL
    url = await scratch_postgres_url("app")
    await build_postgres(url, [*SHARED, WIDE, PG_EXTRAS, FLOATS, ZEROS])
    database = Database("postgresql", url, tmp_path_factory.mktemp("foreign-postgresql"))
    exporter_migrate(database)

    async def read(spec: Spec) -> list[tuple[Any, ...]]:
        return await postgres_rows(url, spec)

    async for client in serve(database):
        yield Foreign("postgresql", database, client, read)


@pytest.fixture(params=BACKENDS)
def foreign(request: pytest.FixtureRequest) -> Foreign:
    name = "sqlite_foreign" if request.param == "sqlite" else "postgres_foreign"
    found: Foreign = request.getfixturevalue(name)
    return found


# --- The tables, listed ---------------------------------------------------------------------


async def test_every_table_and_view_of_the_users_schema_is_listed_with_its_key(
    foreign: Foreign,
) -> None:
    listed = (await foreign.get("/tables")).json()["tables"]
    tables = {table["name"]: table for table in listed}
    assert set(SHARED_NAMES) <= set(tables)
    assert {name for name in tables if name.startswith("export")} == set(), "no state listed"
    assert tables["users"]["primary_key"] == ["id"]
    assert tables["memberships"]["primary_key"] == ["org", "member"]
    assert tables["log_lines"]["primary_key"] == []
    assert tables["active_users"]["type"] == "view"
    assert tables["active_users"]["primary_key"] == []
    assert tables["Order Items"]["exports"]["csv"] == "http://exporter/exports/Order%20Items.csv"
    kinds = {column["name"]: column["kind"] for column in tables["kinds"]["columns"]}
    assert kinds == {
        "id": "integer", "small": "integer", "big": "integer", "ratio": "float",
        "price": "numeric", "label": "text", "flag": "boolean", "day": "date",
        "at_utc": "timestamp", "at_local": "timestamp", "clock": "time", "token": "uuid",
        "doc": "json", "raw": "bytes",
    }
    assert [c["kind"] for c in tables["Order Items"]["columns"]] == [
        "integer", "integer", "text", "text"]


# --- Every export against the oracle, and both backends alike -------------------------------


def exported_specs(backend: str) -> list[Spec]:
    return [*SHARED, VIEW, WIDE, FLOATS, *([PG_EXTRAS] if backend == "postgresql" else [])]


async def view_rows(foreign: Foreign) -> list[tuple[Any, ...]]:
    """The view's rows, from the table under it (a view has no order of its own: both
    databases read it as they read the table, in the order the rows were written)."""
    users = SHARED[0]
    rows = await foreign.read(users)
    return [(row[0], row[1], row[4]) for row in rows if row[4] is not None and row[4] > 0]


@pytest.mark.parametrize("extension", FORMATS)
@pytest.mark.parametrize("table", [*SHARED_NAMES, "wide", "doubles", "pg_extras"])
async def test_every_export_is_what_an_oracle_makes_of_the_rows_the_driver_reads(
    foreign: Foreign, table: str, extension: str
) -> None:
    specs = {spec.name: spec for spec in exported_specs(foreign.backend)}
    if table not in specs:
        pytest.skip(f"{table} is not a table on {foreign.backend}")
    spec = specs[table]
    rows = await view_rows(foreign) if spec is VIEW else await foreign.rows(spec)
    assert rows, "the table holds rows"
    expected = oracle_bytes(spec, rows, extension)
    got = await foreign.body(f"/exports/{quote(table)}.{extension}")
    if got != expected:  # the first differing line, for a readable failure
        for mine, theirs in zip(got.split(b"\n"), expected.split(b"\n"), strict=False):
            assert mine == theirs
    assert got == expected


@pytest.mark.parametrize("extension", FORMATS)
async def test_every_column_alone_and_fields_reordered_are_what_the_oracle_makes(
    foreign: Foreign, extension: str
) -> None:
    """A lone field is where CSV is most fragile: a row whose only field is NULL or empty
    must be `""`, not a blank line (PostgreSQL's COPY writes one without our COALESCE:
    issue 18's planted break). Every column of every table alone, and the first two
    columns the other way round."""
    for spec in exported_specs(foreign.backend):
        if spec is VIEW or spec is WIDE:  # the wide one's columns are kinds', each alone there
            continue
        rows = await foreign.rows(spec)
        subsets = [[name] for name in spec.names] + [list(reversed(spec.names[:2]))]
        for fields in subsets:
            got = await foreign.body(f"/exports/{quote(spec.name)}.{extension}",
                                     fields=",".join(fields))
            assert got == oracle_bytes(spec, rows, extension, fields), (spec.name, fields)


@pytest.mark.parametrize("extension", FORMATS)
@pytest.mark.parametrize("table", [*SHARED_NAMES, WIDE.name])
async def test_both_backends_give_identical_bytes_for_the_same_rows(
    sqlite_foreign: Foreign, postgres_foreign: Foreign, table: str, extension: str
) -> None:
    path = f"/exports/{quote(table)}.{extension}"
    assert await sqlite_foreign.body(path) == await postgres_foreign.body(path)


async def test_infinite_postgresql_dates_and_timestamps_export_as_postgresql_writes_them(
    postgres_foreign: Foreign,
) -> None:
    assert await postgres_foreign.body("/exports/pg_moments.csv") == (
        b"id,day,at,naive\r\n"
        b"1,infinity,-infinity,infinity\r\n"
        b"2,-infinity,infinity,-infinity\r\n"
        b"3,2024-03-01,2024-03-01T12:00:00Z,2024-03-01T12:00:00Z\r\n"
        b"4,,,\r\n"
    )
    assert await postgres_foreign.body("/exports/pg_moments.ndjson") == (
        b'{"id":1,"day":"infinity","at":"-infinity","naive":"infinity"}\n'
        b'{"id":2,"day":"-infinity","at":"infinity","naive":"-infinity"}\n'
        b'{"id":3,"day":"2024-03-01","at":"2024-03-01T12:00:00Z","naive":"2024-03-01T12:00:00Z"}\n'
        b'{"id":4,"day":null,"at":null,"naive":null}\n'
    )


# --- Floats: the shortest text that reads back, the same on both backends -------------------

FLOAT_NOTATION = re.compile(  # 39.81, 100, -0.0001, 1e+300, -1.5e-05: no trailing zeros
    r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?|-?[1-9](\.[0-9]*[1-9])?e[-+][0-9]{2,3}")


async def test_random_doubles_export_as_text_that_reads_back_to_the_same_double_on_both(
    sqlite_foreign: Foreign, postgres_foreign: Foreign,
) -> None:
    texts = {}
    for foreign in (sqlite_foreign, postgres_foreign):
        data = await foreign.body("/exports/doubles.csv")
        rows = list(csv.reader(io.StringIO(data.decode(), newline="")))[1:]
        texts[foreign.backend] = [text for _, text in rows]
    assert texts["sqlite"] == texts["postgresql"]
    for (_, value), text in zip(FLOATS.rows, texts["sqlite"], strict=True):
        assert struct.pack("<d", float(text)) == struct.pack("<d", value), text
        assert FLOAT_NOTATION.fullmatch(text), text
        assert text == shortest_float(value)
        # The exponent from 15 up and below -4 (PostgreSQL's float8 output): 1e+15, 1e-05.
        assert ("e" in text) == (value != 0 and not 1e-4 <= abs(value) < 1e15), text
    notation = dict(zip([v for _, v in FLOATS.rows], texts["sqlite"], strict=True))
    assert [notation[v] for v in (1e300, 5e-324, 1e15, 1e16, 1e-4, 1e-5, 100.0, 39.81)] == [
        "1e+300", "5e-324", "1e+15", "1e+16", "0.0001", "1e-05", "100", "39.81"]
    # Halfway to the next double: repr gives 1e+23, PostgreSQL (and so SQLite) the
    # shortest text strictly closer to this double than to its neighbours.
    assert notation[1e23] == "9.999999999999999e+22"


async def test_negative_zero_is_minus_zero_on_postgresql_and_zero_on_sqlite_which_drops_the_sign(
    sqlite_foreign: Foreign, postgres_foreign: Foreign,
) -> None:
    """A documented difference: SQLite stores -0.0 in a REAL column as 0 (its driver reads
    back 0.0), PostgreSQL keeps the sign."""
    assert [row[1] for row in await sqlite_foreign.rows(ZEROS)] == [0.0, 0.0]
    assert math.copysign(1, (await sqlite_foreign.rows(ZEROS))[0][1]) == 1
    assert await sqlite_foreign.body("/exports/zeros.csv") == b"id,x\r\n1,0\r\n2,0\r\n"
    assert await postgres_foreign.body("/exports/zeros.csv") == b"id,x\r\n1,-0\r\n2,0\r\n"
    assert await postgres_foreign.body("/exports/zeros.ndjson") == (
        b'{"id":1,"x":-0}\n{"id":2,"x":0}\n')


# --- Filters and resume on the user's tables ------------------------------------------------


async def ids(foreign: Foreign, table: str, **params: str) -> list[Any]:
    data = await foreign.body(f"/exports/{quote(table)}.ndjson", **params)
    return [json.loads(line)["id"] for line in data.splitlines()]


async def test_after_a_text_key_resumes_exactly_where_a_page_ended(foreign: Foreign) -> None:
    everything = await foreign.body("/exports/users.ndjson")
    pages, after = [], None
    while True:
        params = {"limit": "13", **({"after": after} if after is not None else {})}
        page = await foreign.body("/exports/users.ndjson", **params)
        if not page:
            break
        pages.append(page)
        after = json.loads(page.splitlines()[-1])["id"]
    assert b"".join(pages) == everything
    assert len(pages) == math.ceil(len(SHARED[0].rows) / 13)
    assert json.loads(everything.splitlines()[0])["id"] == "0"  # code point order: "0" < "Bob"


async def test_after_a_composite_key_resumes_exactly_even_past_a_comma_in_its_last_column(
    foreign: Foreign,
) -> None:
    everything = await foreign.body("/exports/memberships.csv")
    header = everything.split(b"\r\n", 1)[0] + b"\r\n"
    pages, after = [], None
    while True:
        params = {"limit": "7", **({"after": after} if after is not None else {})}
        page = await foreign.body("/exports/memberships.ndjson", **params)
        csv_page = await foreign.body("/exports/memberships.csv", **params)
        if not page:
            assert csv_page == header
            break
        pages.append(csv_page.removeprefix(header))
        last = json.loads(page.splitlines()[-1])
        after = f"{last['org']},{last['member']}"  # "1,Doe, Jane": the rest is the member
    assert header + b"".join(pages) == everything


async def test_after_a_composite_key_with_too_few_values_is_a_422_naming_the_key(
    foreign: Foreign,
) -> None:
    response = await foreign.get("/exports/memberships.csv", after="1")
    assert response.status_code == 422
    error = response.json()
    assert error["parameter"] == "after" and error["value"] == "1"
    assert "org, member" in error["message"]


KINDS = SHARED[1]


def kinds_where(name: str, keep: Callable[[Any], bool]) -> list[int]:
    place = KINDS.names.index(name)
    return [row[0] for row in KINDS.rows if row[place] is not None and keep(row[place])]


FILTERS: list[tuple[dict[str, str], list[int]]] = [
    ({"day__gt": "2024-01-01"}, kinds_where("day", lambda v: v > date(2024, 1, 1))),
    ({"day": "2024-03-01"}, kinds_where("day", lambda v: v == date(2024, 3, 1))),
    ({"at_utc__gt": "2024-03-01T12:00:00Z"},
     kinds_where("at_utc", lambda v: v > datetime(2024, 3, 1, 12, tzinfo=UTC))),
    ({"at_utc__lte": "2024-03-01T13:00:00+01:00"},
     kinds_where("at_utc", lambda v: v <= datetime(2024, 3, 1, 12, tzinfo=UTC))),
    ({"at_local__lt": "2024-03-01"},
     kinds_where("at_local", lambda v: v < datetime(2024, 3, 1))),
    ({"price__gt": "100"}, kinds_where("price", lambda v: v > 100)),
    ({"price__lte": "0.05"}, kinds_where("price", lambda v: v <= Decimal("0.05"))),
    ({"ratio__gte": "0.1", "ratio__lt": "1e15"},
     kinds_where("ratio", lambda v: 0.1 <= v < 1e15)),
    ({"big__lt": "0"}, kinds_where("big", lambda v: v < 0)),
    ({"small": "1,2,3"}, kinds_where("small", lambda v: v in (1, 2, 3))),
    ({"flag": "false"}, kinds_where("flag", lambda v: v is False)),
    ({"label__exact": "a,b"}, kinds_where("label", lambda v: v == "a,b")),
    ({"label__isnull": "true"}, [4]),
    ({"doc__isnull": "false"}, kinds_where("doc", lambda v: True)),
    ({"raw__isnull": "true"}, [4]),
    ({"token": "123E4567-E89B-12D3-A456-426614174000"}, [1]),
    ({"clock__gte": "23:00:00"}, kinds_where("clock", lambda v: v >= time(23))),
]


@pytest.mark.parametrize(("params", "expected"), FILTERS, ids=[str(p) for p, _ in FILTERS])
async def test_filters_by_kind_select_exactly_the_rows_a_python_oracle_selects(
    foreign: Foreign, params: dict[str, str], expected: list[int]
) -> None:
    assert expected, "the filter selects some rows"
    assert len(expected) < len(KINDS.rows), "and not all"
    assert await ids(foreign, "kinds", fields="id", **params) == expected


BAD = [
    ("kinds", {"day": "2024-13-01"}, "day", "2024-13-01", "a date such as 2024-03-01"),
    ("kinds", {"at_utc__gt": "noon"}, "at_utc__gt", "noon", "ISO 8601"),
    ("kinds", {"price__gt": "12,30"}, "price__gt", "12,30", "a decimal number such as 12.30"),
    ("kinds", {"colour": "red"}, "colour", "red", "has no column 'colour'"),
    ("kinds", {"flag__gt": "true"}, "flag__gt", "true", "cannot be filtered by gt"),
    ("kinds", {"doc__gt": "1"}, "doc__gt", "1", "cannot be filtered by gt"),
    ("kinds", {"doc": "{}"}, "doc", "{}", "cannot be filtered by exact"),
    ("kinds", {"token": "nope"}, "token", "nope", "a UUID such as"),
    ("log_lines", {"after": "1"}, "after", "1", "has no primary key"),
    ("active_users", {"after": "u0001"}, "after", "u0001", "has no primary key"),
]


@pytest.mark.parametrize(("table", "params", "parameter", "value", "says"), BAD,
                         ids=[str(p) for _, p, *_ in BAD])
async def test_bad_values_are_a_422_naming_the_parameter_the_value_and_what_is_valid(
    foreign: Foreign, table: str, params: dict[str, str], parameter: str, value: str, says: str
) -> None:
    response = await foreign.get(f"/exports/{quote(table)}.csv", **params)
    assert response.status_code == 422, response.text
    error = response.json()
    assert (error["parameter"], error["value"]) == (parameter, value)
    assert says in error["message"]


async def test_the_flag_filter_error_lists_what_a_boolean_is_filtered_by(foreign: Foreign) -> None:
    error = (await foreign.get("/exports/kinds.csv", flag__gt="true")).json()
    assert error["valid"] == ["flag", "flag__isnull"]


async def test_a_column_named_limit_is_filtered_with_its_suffixes_and_limit_stays_the_limit(
    foreign: Foreign,
) -> None:
    spec = SHARED[4]
    assert await ids(foreign, "Order Items", limit__exact="5") == [
        row[0] for row in spec.rows if row[1] == 5]
    assert await ids(foreign, "Order Items", limit__gte="7", limit="3") == [
        row[0] for row in spec.rows if row[1] is not None and row[1] >= 7][:3]
    assert await ids(foreign, "Order Items", limit__isnull="true") == [
        row[0] for row in spec.rows if row[1] is None]
    assert await ids(foreign, "Order Items", **{"from": "warehouse 2", "select": "no"}) == [
        row[0] for row in spec.rows if row[2] == "warehouse 2" and row[3] == "no"]
    header = (await foreign.body("/exports/Order%20Items.csv", fields="select,from,limit",
                                 limit="1")).split(b"\r\n")[0]
    assert header == b"select,from,limit"


async def test_a_table_named_with_a_space_and_capitals_exports_under_a_sane_filename(
    foreign: Foreign,
) -> None:
    response = await foreign.client.get("/exports/Order%20Items.csv")
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    match = re.fullmatch(r'attachment; filename="(Order Items-\d{8}T\d{6}Z\.csv)"; '
                         r"filename\*=UTF-8''(Order%20Items-\d{8}T\d{6}Z\.csv)", disposition)
    assert match, disposition
    assert (await foreign.client.get("/exports/order%20items.csv")).status_code == 404


# --- SQLite: values that do not fit their column's kind -------------------------------------


MISFITS_CSV = (
    b"id,n,f,t,b,d,ts,m,j,u\r\n"
    b"1,abc,abc,1.5,2,not a date,1700000000,n/a,{oops,not-a-uuid\r\n"
    b"2,AP8=,AQ==,//4=,yes,20240301,yesterday,Ag==,7,12.5\r\n"
    b'3,1.5,7,42,0.5,3.25,1.25,12.00,"[1, 2]",Aw==\r\n'
    b'4,9,,"x,y",true,2024-03-01,2024-03-01T11:00:00Z,0.05,"""s""",\r\n'
    b"5,,,,,now,12:00,,,\r\n"
    b'6,"a,b",Infinity,,0.30000000000000004,,,"1,5",BA==,"x,y"\r\n'
    b"7,-Infinity,-Infinity,,,,,,0.30000000000000004,5\r\n"
)
MISFITS_OBJECTS = [
    b'{"id":1,"n":"abc","f":"abc","t":"1.5","b":2,"d":"not a date","ts":1700000000,'
    b'"m":"n/a","j":"{oops","u":"not-a-uuid"}',
    b'{"id":2,"n":"AP8=","f":"AQ==","t":"//4=","b":"yes","d":20240301,"ts":"yesterday",'
    b'"m":"Ag==","j":7,"u":12.5}',
    b'{"id":3,"n":1.5,"f":7,"t":"42","b":0.5,"d":3.25,"ts":1.25,"m":12.00,"j":[1,2],'
    b'"u":"Aw=="}',
    b'{"id":4,"n":9,"f":null,"t":"x,y","b":true,"d":"2024-03-01","ts":"2024-03-01T11:00:00Z",'
    b'"m":0.05,"j":"s","u":null}',
    b'{"id":5,"n":null,"f":null,"t":null,"b":null,"d":"now","ts":"12:00","m":null,"j":null,'
    b'"u":null}',
    b'{"id":6,"n":"a,b","f":"Infinity","t":null,"b":0.30000000000000004,"d":null,"ts":null,'
    b'"m":"1,5","j":"BA==","u":"x,y"}',
    b'{"id":7,"n":"-Infinity","f":"-Infinity","t":null,"b":null,"d":null,"ts":null,'
    b'"m":null,"j":0.30000000000000004,"u":5}',
]


@pytest.mark.parametrize("extension", FORMATS)
async def test_sqlite_values_that_do_not_fit_their_kind_export_as_stored(
    sqlite_foreign: Foreign, extension: str
) -> None:
    """Text in INTEGER and REAL columns, a REAL and BLOBs in a TEXT column (its affinity
    stores 1.5 as the text '1.5'), BLOBs in numeric columns, 2 and 'yes' in a BOOLEAN,
    dates and times that are none ('now', '12:00': SQLite's date functions would read them
    as the current time and 2000-01-01), invalid JSON: each as stored, a JSON string where
    it is text, base64 where it is a BLOB; never a wrong number, never a failed export."""
    expected = {
        "csv": MISFITS_CSV,
        "ndjson": b"".join(line + b"\n" for line in MISFITS_OBJECTS),
        "json": b"[\n" + b",\n".join(MISFITS_OBJECTS) + b"\n]\n",
    }[extension]
    assert await sqlite_foreign.body(f"/exports/misfits.{extension}") == expected
    stored = sqlite_rows(Path(make_url(sqlite_foreign.database.url).database or ""), MISFITS)
    assert stored[2][:4] == (3, 1.5, 7.0, "42")  # as the driver reads them back


# --- A real server ---------------------------------------------------------------------------


async def test_a_real_server_streams_a_foreign_table_as_ndjson_line_by_line(
    foreign: Foreign,
) -> None:
    expected = [json.loads(line) for line in
                (await foreign.body("/exports/kinds.ndjson")).splitlines()]
    with serving(foreign.database.env(EXPORTER_BATCH_ROWS=str(BATCH_ROWS))) as server:
        lines, pending = [], b""
        with httpx.stream("GET", f"{server.url}/exports/kinds.ndjson", timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/x-ndjson"
            # Split on LF alone: iter_lines (str.splitlines) also splits on U+2028, U+2029
            # and \x1c-\x1e, which JSON strings hold unescaped (the labels here do).
            for chunk in response.iter_bytes():
                *complete, pending = (pending + chunk).split(b"\n")
                lines.extend(json.loads(line) for line in complete)
        assert pending == b"", "the body ends with a whole line"
    assert lines == expected
    assert len(lines) == len(KINDS.rows)


async def test_jsonb_goes_out_in_its_normal_form_where_json_keeps_the_users_text(
    postgres_foreign: Foreign,
) -> None:
    """A documented difference: jsonb keeps no text of its own. Its keys come sorted
    (shorter first), a repeated key once (the last), and its CSV text has a space after
    each , and :; json (and SQLite's JSON) keep the text as written, less the whitespace
    between tokens in the JSON formats."""
    csv_row = await postgres_foreign.body("/exports/pg_extras.csv", fields="doc", limit="1")
    assert csv_row == b'doc\r\n"{""a"": [1, 2], ""b"": 2, ""aa"": ""x, y: z""}"\r\n'
    line = await postgres_foreign.body("/exports/pg_extras.ndjson", fields="doc", limit="1")
    assert line == b'{"doc":{"a":[1,2],"b":2,"aa":"x, y: z"}}\n'
