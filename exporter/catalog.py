"""``Table``: what the database holds and how each column renders, read from the database.

The catalog reflects the user's tables and views once, and again when it is older than
``Catalog.max_age`` seconds, so that a table or column added while the service runs shows up
within that time. The service's own state (schema ``exporter``, see state.py) is never listed.

Kinds decide how every format renders a column, the same on both backends:

- SQLite: the declared type, by SQLite's affinity rules (``INT`` anywhere: integer; ``CHAR``,
  ``CLOB``, ``TEXT``: text; ``BLOB`` or none: bytes or whatever is stored; ``REAL``, ``FLOA``,
  ``DOUB``: float), and, for the numeric affinity, by its name: ``BOOLEAN``, ``DATE``,
  ``DATETIME``/``TIMESTAMP``, ``TIME``, ``DECIMAL(p,s)``/``NUMERIC(p,s)``, ``JSON``, ``UUID``.
- PostgreSQL: the column's type (``pg_type``); arrays are JSON arrays; types without a kind
  of their own (enums, intervals, network addresses...) render as their text.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter.config import Settings
from exporter.errors import NotFound, echo


class Kind(Enum):
    """How a column renders, in every format and on both backends."""

    INTEGER = "integer"
    FLOAT = "float"  # the shortest text that reads back to the same double
    NUMERIC = "numeric"  # exact, with its declared scale; a JSON number
    TEXT = "text"
    BOOLEAN = "boolean"  # true / false
    DATE = "date"  # 2024-03-01
    TIMESTAMP = "timestamp"  # 2024-03-01T12:00:00Z (UTC; without a zone, taken as UTC)
    TIME = "time"  # 12:00:00
    UUID = "uuid"  # as text
    JSON = "json"  # embedded in the JSON formats, its text in CSV
    BYTES = "bytes"  # base64
    ARRAY = "array"  # PostgreSQL arrays: JSON arrays
    ANY = "any"  # SQLite, no declared type: rendered as stored (text, number or base64)


@dataclass(frozen=True)
class Column:
    name: str
    declared: str  # the type as the database declares it
    kind: Kind
    nullable: bool
    scale: int | None = None  # numeric: digits after the point, when declared
    precision: int | None = None  # numeric: all its digits, when declared

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.declared, "kind": self.kind.value,
                "nullable": self.nullable}


@dataclass(frozen=True)
class Table:
    """One exportable table or view. ``sql`` is its SQLAlchemy ``Table``, so that every
    statement built on it quotes the names the database has, whatever they are."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # primary key columns, in key order; () for none
    view: bool = False
    # Approximate: PostgreSQL's reltuples (None until ANALYZE or autovacuum ran); SQLite's
    # sqlite_stat1 (ANALYZE), else its largest rowid; None for views and WITHOUT ROWID.
    rows: int | None = None
    # SQLite: a rowid orders and batches the rows of a table without a key. Views and WITHOUT
    # ROWID tables have none (such a table always has a key, unless its key is hidden).
    rowid: bool = False
    sql: sa.Table = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        table = sa.Table(self.name, sa.MetaData(),
                         *(sa.Column(c.name, _sql_type(c.kind)) for c in self.columns))
        object.__setattr__(self, "sql", table)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(column.name == name for column in self.columns)

    @property
    def rowid_alias(self) -> str | None:
        """The name SQLite's rowid goes by here: the first of its names no column took."""
        return next((name for name in ROWID_NAMES if not self.has(name)), None)

    def hiding(self, hidden: Iterable[str]) -> Table:
        """This table without the named columns (a hidden column is never exported, nor
        filtered or resumed on; a key that loses a column is no key any more)."""
        gone = set(hidden)
        if not gone:
            return self
        columns = tuple(column for column in self.columns if column.name not in gone)
        key = () if gone & set(self.key) else self.key
        return replace(self, columns=columns, key=key)


SQL_TYPES: dict[Kind, Any] = {
    Kind.INTEGER: sa.BigInteger, Kind.FLOAT: sa.Float, Kind.BOOLEAN: sa.Boolean,
    Kind.NUMERIC: sa.Numeric,
}


def _sql_type(kind: Kind) -> Any:
    # Only what statements need: bound parameters of the right type. The rendering is the
    # kind's, never SQLAlchemy's result processing (rows leave as the database renders them).
    return SQL_TYPES.get(kind, sa.types.NullType)()


# --- SQLite ---------------------------------------------------------------------------------

ROWID_NAMES = ("rowid", "_rowid_", "oid")  # SQLite's names for it, unless a column has one
DECIMAL_DIGITS = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")  # NUMERIC(12, 2): 12, 2
Kinded = tuple[Kind, int | None, int | None]  # the kind, and a numeric's scale and precision


def sqlite_kind(declared: str) -> Kinded:
    """The kind of a SQLite column from its declared type (SQLite's affinity rules first)."""
    upper = declared.upper()
    if "INT" in upper:
        return Kind.INTEGER, None, None
    if "CHAR" in upper or "CLOB" in upper or "TEXT" in upper:
        return Kind.TEXT, None, None
    if "BLOB" in upper:
        return Kind.BYTES, None, None
    if not upper.strip():
        return Kind.ANY, None, None
    if "REAL" in upper or "FLOA" in upper or "DOUB" in upper:
        return Kind.FLOAT, None, None
    name = upper.split("(")[0].strip()
    if name in ("BOOL", "BOOLEAN"):
        return Kind.BOOLEAN, None, None
    if name == "DATE":
        return Kind.DATE, None, None
    if name in ("DATETIME", "TIMESTAMP", "TIMESTAMPTZ"):
        return Kind.TIMESTAMP, None, None
    if name == "TIME":
        return Kind.TIME, None, None
    if name in ("JSON", "JSONB"):
        return Kind.JSON, None, None
    if name == "UUID":
        return Kind.UUID, None, None
    if name in ("DECIMAL", "NUMERIC"):
        digits = DECIMAL_DIGITS.search(upper)
        if digits:
            return Kind.NUMERIC, int(digits.group(2)), int(digits.group(1))
        return Kind.NUMERIC, None, None
    return Kind.ANY, None, None  # numeric affinity, no kind of its own: rendered as stored


async def _sqlite_tables(conn: AsyncConnection) -> list[Table]:
    listed: Sequence[Any] = (await conn.exec_driver_sql(
        "SELECT name, type FROM main.sqlite_master WHERE type IN ('table', 'view') "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    )).all()
    tables = []
    for name, kind in listed:
        info: Sequence[Any] = (await conn.exec_driver_sql(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?, 'main')", (name,)
        )).all()
        keyed = sorted((pk, column) for column, _, _, pk in info if pk)
        # SQLite lets a primary key column hold NULL, unless it is declared NOT NULL or is the
        # rowid (a lone INTEGER PRIMARY KEY of a table: NULL there makes SQLite number the row;
        # but not INTEGER PRIMARY KEY DESC, a quirk SQLite keeps: that key has an index of
        # its own, as every other key does, and holds NULLs).
        rowid = keyed[0][1] if len(keyed) == 1 and kind == "table" else None
        if rowid is not None and await _key_index(conn, name):
            rowid = None
        columns = []
        for column, declared, notnull, _ in info:
            column_kind, scale, precision = sqlite_kind(declared or "")
            nullable = not notnull and not (
                column == rowid and (declared or "").upper() == "INTEGER"
            )
            columns.append(Column(column, declared or "", column_kind, nullable, scale,
                                  precision))
        table = Table(name, tuple(columns), tuple(column for _, column in keyed),
                      kind == "view")
        if not table.view:
            has_rowid, largest = await _largest_rowid(conn, table)
            stat = await _sqlite_stat(conn, name)
            table = replace(table, rowid=has_rowid,
                            rows=stat if stat is not None else largest)
        tables.append(table)
    return tables


async def _key_index(conn: AsyncConnection, name: str) -> bool:
    """Whether SQLite made an index for the table's primary key (it makes none for a rowid)."""
    found = (await conn.exec_driver_sql(
        "SELECT 1 FROM pragma_index_list(?, 'main') WHERE origin = 'pk'", (name,)
    )).first()
    return found is not None


async def _sqlite_stat(conn: AsyncConnection, name: str) -> int | None:
    """``sqlite_stat1``'s count where ANALYZE made one."""
    try:
        stat = (await conn.exec_driver_sql(
            "SELECT stat FROM main.sqlite_stat1 WHERE tbl = ? ORDER BY idx IS NULL DESC LIMIT 1",
            (name,),
        )).scalar_one_or_none()
    except sa.exc.OperationalError:  # no ANALYZE was ever run
        return None
    return int(str(stat).split()[0]) if stat else None


async def _largest_rowid(conn: AsyncConnection, table: Table) -> tuple[bool, int | None]:
    """Whether the table has a rowid, and its largest (0 for an empty table): one B-tree
    seek where counting would be a scan, so the approximate row count where ANALYZE made
    none (the count of a table whose rows were appended and never deleted, more otherwise).
    A table that cannot be read here (a damaged page) still lists, with no count: its
    export is where the damage shows, after the rows that can be read."""
    rowid = table.rowid_alias
    if rowid is None:
        return False, None
    try:
        largest: int | None = (await conn.execute(
            sa.select(sa.func.max(sa.literal_column(rowid))).select_from(table.sql)
        )).scalar_one()
    except sa.exc.DatabaseError as exc:
        if "no such column" in str(exc.orig):  # WITHOUT ROWID
            return False, None
        return True, None
    return True, largest or 0


# --- PostgreSQL -----------------------------------------------------------------------------

POSTGRES_KINDS = {
    "int2": Kind.INTEGER, "int4": Kind.INTEGER, "int8": Kind.INTEGER, "oid": Kind.INTEGER,
    "float4": Kind.FLOAT, "float8": Kind.FLOAT, "numeric": Kind.NUMERIC,
    "text": Kind.TEXT, "varchar": Kind.TEXT, "bpchar": Kind.TEXT, "name": Kind.TEXT,
    "citext": Kind.TEXT, "bool": Kind.BOOLEAN, "date": Kind.DATE,
    "timestamp": Kind.TIMESTAMP, "timestamptz": Kind.TIMESTAMP,
    "time": Kind.TIME, "timetz": Kind.TIME, "uuid": Kind.UUID,
    "json": Kind.JSON, "jsonb": Kind.JSON, "bytea": Kind.BYTES,
}

# relkind and typcategory are of type "char", which asyncpg hands over as bytes (b'v', never
# equal to 'v'): cast to text, or views are listed as tables and arrays render as text.
POSTGRES_COLUMNS = """
SELECT c.relname, c.relkind::text, c.reltuples::bigint, a.attname,
       format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, t.typname, t.typcategory::text,
       a.atttypmod,
       (SELECT k.ord FROM pg_constraint p,
               unnest(p.conkey) WITH ORDINALITY AS k(attnum, ord)
         WHERE p.conrelid = c.oid AND p.contype = 'p' AND k.attnum = a.attnum)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
 ORDER BY c.relname, a.attnum
"""


def postgres_kind(typname: str, category: str, typmod: int) -> Kinded:
    if category == "A":
        return Kind.ARRAY, None, None
    kind = POSTGRES_KINDS.get(typname, Kind.TEXT)
    if kind is Kind.NUMERIC and typmod >= 4:
        # numeric(p, s): typmod is 4 more than p in its high 16 bits and s in its low ones
        return kind, (typmod - 4) & 0xFFFF, ((typmod - 4) >> 16) & 0xFFFF
    return kind, None, None


async def _postgres_tables(conn: AsyncConnection) -> list[Table]:
    found: dict[str, tuple[str, int, list[Column], list[tuple[int, str]]]] = {}
    described: Sequence[Any] = (await conn.exec_driver_sql(POSTGRES_COLUMNS)).all()
    for (table, relkind, reltuples, name, declared, nullable, typname, category, typmod,
         key_position) in described:
        kind, scale, precision = postgres_kind(typname, category, typmod)
        entry = found.setdefault(table, (relkind, reltuples, [], []))
        entry[2].append(Column(name, declared, kind, nullable, scale, precision))
        if key_position is not None:
            entry[3].append((key_position, name))
    return [
        Table(name, tuple(columns), tuple(column for _, column in sorted(keyed)),
              relkind in ("v", "m"), reltuples if reltuples >= 0 else None)
        for name, (relkind, reltuples, columns, keyed) in found.items()
    ]


# --- The catalog ----------------------------------------------------------------------------


async def reflect(conn: AsyncConnection) -> list[Table]:
    """Every table and view of the user's schema, as the database declares them."""
    if conn.dialect.name == "sqlite":
        return await _sqlite_tables(conn)
    return await _postgres_tables(conn)


class Catalog:
    """The exportable tables: reflected, filtered by the exposure settings, kept fresh."""

    def __init__(self, engine: AsyncEngine, tables: Sequence[str] = ("*",),
                 hidden: Sequence[str] = (), max_age: float = 2.0) -> None:
        self.engine = engine
        self.patterns = tuple(tables) or ("*",)
        self.hidden = tuple(hidden)
        self.max_age = max_age
        self._tables: dict[str, Table] = {}
        self._read_at = -float("inf")
        self._reading = asyncio.Lock()

    @classmethod
    def from_settings(cls, engine: AsyncEngine, settings: Settings) -> Catalog:
        return cls(engine, settings.tables, settings.hidden_columns,
                   settings.catalog_refresh_seconds)

    def exposed(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)

    def hidden_in(self, table: str) -> list[str]:
        """The columns of ``table`` that the hidden-column setting names (globs allowed)."""
        return [pattern.split(".", 1)[1] for pattern in self.hidden
                if "." in pattern and fnmatch.fnmatchcase(table, pattern.split(".", 1)[0])]

    async def tables(self) -> dict[str, Table]:
        """Name -> table, read again when older than ``max_age``."""
        if time.monotonic() - self._read_at > self.max_age:
            async with self._reading:
                if time.monotonic() - self._read_at > self.max_age:
                    async with self.engine.connect() as conn:
                        found = await reflect(conn)
                    self._tables = {table.name: self._apply(table) for table in found
                                    if self.exposed(table.name)}
                    self._read_at = time.monotonic()
        return self._tables

    def _apply(self, table: Table) -> Table:
        hidden = self.hidden_in(table.name)
        gone = {column.name for column in table.columns
                if any(fnmatch.fnmatchcase(column.name, pattern) for pattern in hidden)}
        return table.hiding(gone)

    async def get(self, name: str) -> Table:
        """The table, or a 404 listing the ones that exist."""
        tables = await self.tables()
        if name not in tables:
            raise NotFound(
                f"no exportable table or view named {echo(name)!r}; valid: "
                f"{', '.join(sorted(tables)) or '(none)'}",
                table=echo(name), valid=sorted(tables),
            )
        return tables[name]
