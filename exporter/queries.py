"""``ExportQuery`` -> SQL: which fields, which rows, in key order, rendered by the database.

``build_statement`` gives each row in its final form (render.py): a CSV line (SQLite), the
columns COPY writes as CSV (PostgreSQL), or a JSON object. ``build_plan`` and
``build_batch`` split an export into batches by its key, so that SQLite renders a whole
batch in one statement step and PostgreSQL COPYs ranges on several connections.

Rows come in primary-key order. A table without a primary key has no order of its own:
SQLite's tables are read in rowid order (their physical order, and a key to batch on); views
and PostgreSQL's tables without a key come in the order the database reads them, in one
statement.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from enum import Enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    LargeBinary,
    Select,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import NullType

from exporter import render
from exporter.catalog import Column, Kind, Table
from exporter.db import DriverStatement

SQL = ColumnElement[Any]


class Op(Enum):
    """A filter's comparison (Datasette's names)."""

    EXACT = "exact"  # equal to any of the values
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    ISNULL = "isnull"


@dataclass(frozen=True)
class Filter:
    column: str
    op: Op
    values: tuple[Any, ...]  # parsed by the column's kind (params.py); one bool for ISNULL
    parameter: str = field(default="", compare=False)  # as the client named it, for errors


@dataclass(frozen=True)
class ExportQuery:
    """One export of one table: validated against that table (params.py)."""

    table: Table
    fields: tuple[str, ...]
    filters: tuple[Filter, ...] = ()
    after: tuple[Any, ...] | None = None  # keyset resume: rows after this primary key
    limit: int | None = None
    # SQLite: only the rows whose key holds a NULL (True), or only those whose key holds
    # none (False); see ``nullable_key``.
    null_key: bool | None = None


class Shape(Enum):
    """What each row of the statement is; each format asks for the one it needs."""

    VALUES = "values"  # one column per field, as COPY should write them (PostgreSQL)
    JSON = "json"  # one column: the row as a JSON object, built by the database
    CSV = "csv"  # one column: the row as a CSV line without its CRLF (SQLite)
    # Each value's text as CSV has it, NULL kept apart from '', after a first field of no
    # value (formats/parquet.py): SQLite, one column, the row as a CSV line quoting ''
    # (render.sqlite_csv_texts); PostgreSQL, a NULL column and one per field, for COPY's
    # CSV, which writes them so
    TEXTS = "texts"
    # SQLite: one column, the row as a TSV line; PostgreSQL: one column per field, each
    # value's TSV text, which the text COPY escapes
    TSV = "tsv"


def order_key(query: ExportQuery) -> list[SQL]:
    """The columns rows come in order of, and batches are cut by: the primary key; SQLite's
    rowid for a table without one; none for a view without one, or on PostgreSQL."""
    table = query.table
    if table.key:
        key: list[SQL] = [table.sql.c[name] for name in table.key]
        if query.null_key and table.rowid and (alias := table.rowid_alias):
            key.append(literal_column(alias))  # NULLs are equal in ORDER BY: the rowid decides
        return key
    if table.rowid and (alias := table.rowid_alias):  # SQLite's, where the catalog found one
        return [literal_column(alias)]
    return []


def nullable_key(query: ExportQuery) -> bool:
    """Whether a row's key can hold NULL: SQLite allows it in a primary key not declared NOT
    NULL (other than the rowid). NULL compares to no key, so keyset batches and ``after=``
    cannot reach such rows: they come first, as ORDER BY puts NULLs first, read apart by
    one statement (``null_key=True``), and the batches take the rest (``null_key=False``).
    A client cannot resume after such a row: its key names no place."""
    return bool(_nullable_columns(query))


def _nullable_columns(query: ExportQuery) -> list[str]:
    return [name for name in query.table.key if query.table.column(name).nullable]


def _null_key(query: ExportQuery) -> SQL:
    return or_(*(query.table.sql.c[name].is_(None) for name in _nullable_columns(query)))


def _key_values(key: Sequence[SQL], values: Sequence[Any]) -> tuple[SQL, SQL]:
    if len(key) == 1:
        return key[0], values[0]
    return tuple_(*key), tuple_(*values)


def _matching(statement: Select[Any], query: ExportQuery, dialect: str) -> Select[Any]:
    """``statement`` restricted to the rows ``query`` asks for."""
    for item in query.filters:
        statement = statement.where(_condition(query.table, item, dialect))
    null_key = query.null_key
    if null_key is None and query.after is not None and nullable_key(query):
        # after= names a whole key: the NULL-keyed rows came before it, even those a row
        # comparison would let through ((2, NULL) > (1, 5) holds: the first column decides).
        null_key = False
    if null_key is not None:
        held = _null_key(query)
        statement = statement.where(held if null_key else ~held)
    if query.after is not None:
        # The key as ORDER BY sorts it (raw, so the key's index serves the seek), and the
        # values as the key stores them (``_key_bound``).
        key = [query.table.sql.c[name] for name in query.table.key]
        columns = [query.table.column(name) for name in query.table.key]
        values = [_key_bound(column, value, dialect)
                  for column, value in zip(columns, query.after, strict=True)]
        left, right = _key_values(key, values)
        statement = statement.where(left > right)
    return statement


def _key_bound(column: Column, value: Any, dialect: str) -> Any:
    """A key's value as ``after=`` compares it. PostgreSQL: a key of a text-like type that
    is not text (uuid, an enum) is compared as that type, in the order the key sorts in
    (an enum's declared order, not its text's), so its value is sent untyped for the
    server to read as the column's type: uuid > varchar has no operator."""
    if dialect == "postgresql" and column.kind in (Kind.TEXT, Kind.UUID, Kind.ANY):
        return literal(value, NullType())
    if dialect == "sqlite" and column.kind in SQLITE_MOMENTS:
        return literal(_stored_moment(column.kind, value), String())
    return _bound(column.kind, value, dialect, column.declared)


def _stored_moment(kind: Kind, value: Any) -> str:
    """SQLite: a moment as SQLite's own functions and Python's sqlite3 store one
    ('2024-01-01 10:00:02', '2024-01-01 10:00:02.123456'), for a key compared as it is
    stored: equal to a stored key of that form, so that rows sharing a moment are told
    apart by the key's next column. (A column mixing forms sorts in text order, and
    cannot be resumed in time order.)"""
    if kind is Kind.DATE:
        return str(value.isoformat())
    fraction = f".{value.microsecond:06d}" if value.microsecond else ""
    if kind is Kind.TIME:
        return f"{value:%H:%M:%S}{fraction}"
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}{fraction}"


def _bound(kind: Kind, value: Any, dialect: str, declared: str = "") -> Any:
    """A parsed value as a parameter the database compares as the column's kind."""
    if kind is Kind.INTEGER:
        return literal(value, BigInteger())  # else PostgreSQL takes it as INTEGER
    if dialect == "sqlite" and kind in SQLITE_MOMENTS:
        return literal(value.strftime(SQLITE_MOMENTS[kind])[:MOMENT_LENGTH[kind]], String())
    if dialect == "postgresql":
        if kind is Kind.TIMESTAMP and "with time zone" not in declared:
            return literal(value.astimezone(UTC).replace(tzinfo=None))  # taken as UTC
        if kind in (Kind.TEXT, Kind.UUID, Kind.ANY):
            return literal(value, Text())
    return literal(value)


# SQLite's moments are compared in the text its own functions give (``_compared``), whatever
# form they were stored in: strftime's %f has milliseconds.
SQLITE_MOMENTS = {Kind.TIMESTAMP: "%Y-%m-%d %H:%M:%S.%f", Kind.DATE: "%Y-%m-%d",
                  Kind.TIME: "%H:%M:%S"}
MOMENT_LENGTH = {Kind.TIMESTAMP: 23, Kind.DATE: 10, Kind.TIME: 8}


def _compared(table: Table, name: str, dialect: str) -> SQL:
    """A column as its filters compare it: SQLite's moments in one text form, whatever form
    they were stored in; PostgreSQL's text-like types as text."""
    column = table.column(name)
    value: SQL = table.sql.c[name]
    if dialect == "sqlite":
        if column.kind is Kind.TIMESTAMP:
            return func.strftime("%Y-%m-%d %H:%M:%f", value)
        if column.kind is Kind.DATE:
            return func.date(value)
        if column.kind is Kind.TIME:
            return func.time(value)
        return value
    if column.kind in (Kind.TEXT, Kind.UUID, Kind.ANY) and "char" not in column.declared \
            and column.declared != "text":
        return cast(value, Text)  # enums, uuids, network addresses: compared as their text
    return value


def _condition(table: Table, item: Filter, dialect: str) -> SQL:
    column = table.column(item.column)
    if item.op is Op.ISNULL:  # as stored: SQLite's date('n/a') is NULL, but 'n/a' is not
        stored = table.sql.c[item.column]
        return stored.is_(None) if item.values[0] else stored.is_not(None)
    value = _compared(table, item.column, dialect)
    bound = [_bound(column.kind, v, dialect, column.declared) for v in item.values]
    if column.kind is Kind.BOOLEAN:
        return or_(*(value.is_(v) if dialect == "postgresql" else value == int(v)
                     for v in item.values))
    if item.op is Op.EXACT:
        return value == bound[0] if len(bound) == 1 else or_(*(value == b for b in bound))
    compare = {Op.GT: value.__gt__, Op.GTE: value.__ge__, Op.LT: value.__lt__,
               Op.LTE: value.__le__}[item.op]
    return and_(*(compare(b) for b in bound))


def _json_object(query: ExportQuery, dialect: str) -> tuple[SQL, FromClause]:
    """The row as compact JSON text, and what to select it from. SQLite's json_object and
    PostgreSQL's row_to_json escape exactly alike (checked for every ASCII character and
    astral ones), so both backends give the same bytes."""
    table = query.table
    if dialect == "sqlite":
        objects = [
            type_coerce(func.json_object(*(part for name in names for part in (
                literal(name), render.sqlite_json_value(table.column(name),
                                                        table.sql.c[name])))), String)
            for names in _calls(query.fields, SQLITE_ARGUMENTS // 2)]
        return _merged(objects), table.sql
    row = select(*(render.pg_json_value(table.column(name), table.sql.c[name]).label(name)
                   for name in query.fields))
    # Only the asked fields, in their order, under a name no table's can clash with.
    lateral = row.correlate(table.sql).lateral(
        ROW_ALIAS if table.name != ROW_ALIAS else f"{ROW_ALIAS}_")
    column = cast(func.row_to_json(lateral.table_valued()), Text)
    return column, table.sql.join(lateral, true())


ROW_ALIAS = "exporter_row"

# SQLite refuses a call with more arguments than SQLITE_MAX_FUNCTION_ARG (127 unless built
# otherwise): a row of more fields than this is put together by several calls, their texts
# joined with ``||`` (which copies the line once for each: a few times, and only there).
SQLITE_ARGUMENTS = 100


def _calls(items: Sequence[Any], each: int) -> list[Sequence[Any]]:
    """``items`` cut into runs of at most ``each``, one for each call."""
    return [items[start:start + each] for start in range(0, len(items), each)]


def _joined(parts: Sequence[SQL], separator: str) -> SQL:
    line = parts[0]
    for part in parts[1:]:
        line = (line + literal(separator) if separator else line) + part
    return line


def _printf(formats: Sequence[str], values: Sequence[SQL], separator: str) -> SQL:
    """One line of ``values`` by printf, ``separator`` between them."""
    each = SQLITE_ARGUMENTS - 1  # and the format
    return _joined([
        type_coerce(func.printf(separator.join(some_formats), *some_values), String)
        for some_formats, some_values in zip(_calls(formats, each), _calls(values, each),
                                             strict=True)], separator)


def _merged(objects: Sequence[SQL]) -> SQL:
    """JSON objects as one: each one's members, between one pair of braces. (SQLite
    computes an object again for each time it is named here: twice, on the widest rows.)"""
    if len(objects) == 1:
        return objects[0]
    members = [type_coerce(func.substr(each, 2, func.length(each) - 2), String)
               for each in objects]
    return type_coerce(literal("{") + _joined(members, ",") + literal("}"), String)


def _csv_line(query: ExportQuery) -> SQL:
    """The row as one CSV line, SQLite only (PostgreSQL's COPY writes CSV itself, see
    pg_copy.py). One printf builds the whole line: a chain of ``||`` would copy the growing
    line once per field (callgrind: the biggest cost); printf's ``%s`` writes NULL as
    nothing. A lone empty field is written as ``""``, as csv.writer does, so that the line
    is not blank."""
    table = query.table
    formats, values = zip(*(render.sqlite_csv_field(table.column(name), table.sql.c[name])
                            for name in query.fields), strict=True)
    line = _printf(formats, values, ",")
    if len(query.fields) == 1:
        return case((line == "", '""'), else_=line)
    return line


def _texts(query: ExportQuery, dialect: str) -> list[SQL]:
    """SQLite: the row's texts as one CSV line that tells '' from NULL, each after a comma;
    PostgreSQL: NULL, then the texts, which COPY's CSV writes so (NULL as nothing, '' as
    ``""``). Each line starts with an empty field."""
    table = query.table
    if dialect == "postgresql":
        return [null(), *(
            render.pg_text_value(table.column(name), table.sql.c[name]).label(name)
            for name in query.fields)]
    texts = [render.sqlite_text_value(table.column(name), table.sql.c[name])
             for name in query.fields]
    return [_joined([render.sqlite_csv_texts(each)
                     for each in _calls(texts, SQLITE_ARGUMENTS)], "")]


def _tsv(query: ExportQuery, dialect: str) -> list[SQL]:
    """SQLite: the row as one TSV line (one printf, as CSV's); PostgreSQL: its values."""
    table = query.table
    if dialect == "postgresql":
        return [render.pg_tsv_value(table.column(name), table.sql.c[name]).label(name)
                for name in query.fields]
    values = [render.sqlite_tsv_field(table.column(name), table.sql.c[name])
              for name in query.fields]
    return [_printf(["%s"] * len(values), values, "\t")]


def _csv_values(query: ExportQuery) -> list[SQL]:
    table = query.table
    alone = len(query.fields) == 1
    return [render.pg_csv_value(table.column(name), table.sql.c[name], alone).label(name)
            for name in query.fields]


def build_statement(query: ExportQuery, dialect: str, shape: Shape) -> Select[Any]:
    if shape is Shape.JSON:
        column, source = _json_object(query, dialect)
        statement = select(column).select_from(source)
    elif shape is Shape.TEXTS:
        statement = select(*_texts(query, dialect)).select_from(query.table.sql)
    elif shape is Shape.CSV:
        statement = select(_csv_line(query)).select_from(query.table.sql)
    elif shape is Shape.TSV:
        statement = select(*_tsv(query, dialect)).select_from(query.table.sql)
    else:
        statement = select(*_csv_values(query)).select_from(query.table.sql)
    statement = _matching(statement, query, dialect).order_by(*order_key(query))
    if query.limit is not None:
        statement = statement.limit(literal(query.limit, BigInteger()))
    return statement


def build_count(query: ExportQuery, dialect: str) -> Select[Any]:
    """How many rows ``build_statement`` gives for this query (limit included)."""
    rows = _matching(select(literal(1)).select_from(query.table.sql), query, dialect)
    if query.limit is not None:
        rows = rows.limit(literal(query.limit, BigInteger()))
    return select(func.count()).select_from(rows.subquery())


def build_rowids(query: ExportQuery) -> Select[Any] | None:
    """SQLite: the table's smallest and largest rowid (two index lookups), for cutting a
    scan of its rows in parts; None for a table without one."""
    table = query.table
    if not table.rowid or (alias := table.rowid_alias) is None:
        return None
    rowid: SQL = literal_column(alias)
    return select(func.min(rowid), func.max(rowid)).select_from(table.sql)


def build_misfits(query: ExportQuery, rowids: tuple[int, int] | None = None
                  ) -> tuple[Select[Any], list[str]] | None:
    """SQLite: a row of 0s and 1s, one for each exported column whose kind has a typed
    form (render.sqlite_fits): 1 if a row of this export holds a value not of that form.
    With the names it is for; None if no column has a typed form. ``rowids``: only the rows
    whose rowid is within these (a part of a scan cut by ``build_rowids``; not with a
    limit, whose rows are the first ones in key order)."""
    table = query.table
    checked = {name: fits for name in query.fields
               if (fits := render.sqlite_fits(table.column(name), table.sql.c[name]))
               is not None}
    if not checked:
        return None
    flags = [case((fits, 0), else_=1).label(f"misfit_{i}")
             for i, fits in enumerate(checked.values())]
    rows = _matching(select(*flags).select_from(table.sql), query, "sqlite")
    if rowids is not None and table.rowid_alias is not None:
        rows = rows.where(literal_column(table.rowid_alias).between(*rowids))
    # Without a key to order by, a LIMIT might not pick the export's rows: all are checked.
    if query.limit is not None and order_key(query):
        # As they are sent: the NULL-keyed rows first (a lone key column sorts its NULLs first
        # by itself, through its index; a composite key needs the flag), in rowid order.
        first = [_null_key(query).desc()] if len(query.table.key) > 1 and nullable_key(
            query) else []
        order = order_key(replace(query, null_key=True) if nullable_key(query) else query)
        rows = rows.order_by(*first, *order).limit(literal(query.limit, BigInteger()))
    found = rows.subquery()
    misfits = select(*(func.coalesce(func.max(column), 0) for column in found.c))
    return misfits, list(checked)


# --- Batches --------------------------------------------------------------------------------
# A batch is the rows after one key (``:after_<i>``) up to and with another (``:until_<i>``),
# given per execution (db.DriverStatement); the first batch has no lower bound.

ROWS = bindparam("batch_rows", None, BigInteger())


def _key_params(prefix: str, size: int) -> list[Any]:
    return [bindparam(f"{prefix}_{i}", None) for i in range(size)]


def key_arguments(prefix: str, key: tuple[Any, ...] | None) -> dict[str, Any]:
    """A planned key as the named parameters of ``build_plan``/``build_batch``."""
    return {f"{prefix}_{i}": value for i, value in enumerate(key or ())}


def _after(statement: Select[Any], key: Sequence[SQL], first: bool) -> Select[Any]:
    if first:
        return statement
    left, right = _key_values(key, _key_params("after", len(key)))
    return statement.where(left > right)


def build_plan(query: ExportQuery, dialect: str, first: bool) -> Select[Any, Any]:
    """The next batch: the last key and the number of the next ``:batch_rows`` rows (after
    ``:after_<i>`` unless ``first``). Reads keys only, so planning costs little beside
    rendering."""
    key = order_key(query)
    keys = _matching(select(*(k.label(f"k{i}") for i, k in enumerate(key)))
                     .select_from(query.table.sql), query, dialect)
    batch = _after(keys, key, first).order_by(*key).limit(ROWS).subquery()
    columns = [batch.c[f"k{i}"] for i in range(len(key))]
    if len(key) == 1:
        last: Select[Any, Any] = select(func.max(columns[0]), func.count())
        return last
    counted: Select[Any, Any] = select(*columns, func.count().over())
    return counted.order_by(*(c.desc() for c in columns)).limit(1)


def build_batch(query: ExportQuery, shape: Shape, separator: str, first: bool
                ) -> Select[Any, Any]:
    """SQLite: the rows of a planned batch joined by ``separator`` into one value, as UTF-8
    bytes (so that no row is decoded into a Python str and encoded back), and how many they
    were. One step of the statement renders the whole batch, outside Python's GIL."""
    rows = batch_rows(replace(query, limit=None), "sqlite", shape, first)
    batch = rows.subquery()
    # The subquery is ordered and, being under an aggregate, is not flattened into it:
    # SQLite hands group_concat its rows in key order.
    joined = func.group_concat(batch.c[0], separator)
    # group_concat skips NULLs: counting lines, not rows, makes a NULL line fail the batch.
    # A UTF-8 database (SQLite's default) stores exactly these bytes.
    joined_rows: Select[Any, Any] = select(cast(joined, LargeBinary), func.count(batch.c[0]))
    return joined_rows


def batch_rows(query: ExportQuery, dialect: str, shape: Shape, first: bool) -> Select[Any]:
    """``build_statement``'s rows of one planned batch (or range)."""
    key = order_key(query)
    statement = _after(build_statement(replace(query, limit=None), dialect, shape), key, first)
    until = _key_params("until", len(key))
    left, right = _key_values(key, until)
    return statement.where(left <= right)


@dataclass(frozen=True)
class Planned:
    """One range of an export's rows, planned by ``build_plan``."""

    after: tuple[Any, ...] | None  # its rows come after this key (None: from the start)
    until: tuple[Any, ...]  # ... up to and with this one
    rows: int


PlanStep = Callable[[tuple[Any, ...] | None, int],
                    Awaitable[tuple[tuple[Any, ...] | None, int]]]  # (after, rows) -> plan


async def plan_ranges(
    step: PlanStep, query: ExportQuery, rows_each: int
) -> AsyncGenerator[Planned, None]:
    """Split an export into ranges of ``rows_each`` rows, in key order; ``step`` runs
    ``build_plan`` on the caller's connection. The first range has no lower bound of its
    own: the query's ``after`` holds for every range (``_matching``)."""
    after: tuple[Any, ...] | None = None
    remaining = query.limit
    while remaining is None or remaining > 0:
        rows = rows_each if remaining is None else min(rows_each, remaining)
        until, count = await step(after, rows)
        if not count or until is None:
            return
        yield Planned(after, until, count)
        after = until
        if remaining is not None:
            remaining -= count


class Keyed:
    """A batch statement compiled for the driver in its two variants: the first batch (no
    lower bound) and the ones after a planned key."""

    def __init__(self, build: Callable[[bool], Select[Any, Any]], dialect: Dialect) -> None:
        self.first = DriverStatement(build(True), dialect)
        self.next = DriverStatement(build(False), dialect)

    def call(self, after: tuple[Any, ...] | None, **values: Any) -> tuple[str, tuple[Any, ...]]:
        """SQL text and positional arguments for the batch after ``after``."""
        statement = self.first if after is None else self.next
        return statement.sql, statement.arguments(**key_arguments("after", after), **values)


def plan_row(row: Sequence[Any] | None) -> tuple[tuple[Any, ...] | None, int]:
    """A plan row as (the batch's last key, its rows); (None, 0) when it was empty."""
    if row is None:
        return None, 0
    *key, count = row
    return (None if key[0] is None else tuple(key)), count
