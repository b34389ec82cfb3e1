"""The users query: which fields, which rows, in id order, rendered the same on every backend.

``parse_export_query`` turns raw parameters (from a URL or the command line) into an
``ExportQuery`` or an ``InvalidParameter`` naming what was wrong. ``build_statement`` turns
that into one ``SELECT`` that gives each row in its final form: a CSV line (SQLite), the
columns COPY writes as CSV (PostgreSQL), or a JSON object, with money and timestamps as
``12.30`` and ``2024-03-01T12:00:00Z``. The database does that rendering in C, outside
Python's GIL, and both backends give identical bytes, so the encoders only frame blocks.
``build_plan`` and ``build_batch`` split a SQLite export into batches.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    FromClause,
    LargeBinary,
    Select,
    String,
    Text,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    true,
    type_coerce,
)

from exporter.errors import InvalidParameter, echo
from exporter.models import PLANS, users


class Kind(Enum):
    """How a column is rendered; the encoders only need to tell these apart."""

    INTEGER = "integer"
    TEXT = "text"
    BOOLEAN = "boolean"
    MONEY = "money"  # text like "12.30" from the database; a JSON number
    TIMESTAMP = "timestamp"  # text like "2024-03-01T12:00:00Z" from the database


FIELDS: dict[str, Kind] = {
    "id": Kind.INTEGER,
    "email": Kind.TEXT,
    "full_name": Kind.TEXT,
    "country": Kind.TEXT,
    "city": Kind.TEXT,
    "plan": Kind.TEXT,
    "is_active": Kind.BOOLEAN,
    "lifetime_value": Kind.MONEY,
    "created_at": Kind.TIMESTAMP,
    "last_login_at": Kind.TIMESTAMP,
    "bio": Kind.TEXT,
    "avatar_image_id": Kind.INTEGER,
}
PARAMETERS = (
    "fields", "country", "plan", "is_active", "created_from", "created_to", "after_id", "limit",
)
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
COUNTRY_CODE = re.compile(r"[A-Za-z]{2}")
MAX_INTEGER = 2**63 - 1


@dataclass(frozen=True)
class ExportQuery:
    fields: tuple[str, ...] = tuple(FIELDS)
    countries: tuple[str, ...] = ()
    plans: tuple[str, ...] = ()
    is_active: bool | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    after_id: int | None = None
    limit: int | None = None


def parse_export_query(params: Iterable[tuple[str, str]]) -> ExportQuery:
    """Validate raw ``(name, value)`` pairs; unknown or repeated names are errors too."""
    values: dict[str, str] = {}
    for name, value in params:
        if name not in PARAMETERS:
            raise InvalidParameter(name, value, "unknown query parameter", PARAMETERS)
        if name in values:
            raise InvalidParameter(name, value, "given more than once; use a comma list")
        values[name] = value
    return _build(values)


def _build(values: Mapping[str, str]) -> ExportQuery:
    query: dict[str, Any] = {}
    if "fields" in values:
        query["fields"] = _fields(values["fields"])
    if "country" in values:
        query["countries"] = _countries(values["country"])
    if "plan" in values:
        query["plans"] = _choices("plan", values["plan"], PLANS)
    if "is_active" in values:
        query["is_active"] = _boolean("is_active", values["is_active"])
    for name in ("created_from", "created_to"):
        if name in values:
            query[name] = _timestamp(name, values[name])
    for name in ("after_id", "limit"):
        if name in values:
            query[name] = _natural(name, values[name])
    start, end = query.get("created_from"), query.get("created_to")
    if start is not None and end is not None and start > end:
        raise InvalidParameter(
            "created_to", values["created_to"],
            f"is before created_from={echo(values['created_from'])!r}; were they swapped?",
        )
    return ExportQuery(**query)


def _items(name: str, raw: str) -> list[str]:
    items = [item.strip() for item in raw.split(",")]
    if not raw.strip() or any(not item for item in items):
        raise InvalidParameter(name, raw, "expected a comma-separated list with no empty items")
    return items


def _fields(raw: str) -> tuple[str, ...]:
    names = _items("fields", raw)
    unknown = [name for name in names if name not in FIELDS]
    if unknown:
        raise InvalidParameter(
            "fields", raw, f"unknown field {echo(unknown[0])!r}", tuple(FIELDS)
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidParameter("fields", raw, f"field {echo(repeated[0])!r} is listed twice")
    return tuple(names)


def _countries(raw: str) -> tuple[str, ...]:
    codes = _items("country", raw)
    for code in codes:
        if not COUNTRY_CODE.fullmatch(code):
            raise InvalidParameter(
                "country", raw,
                f"{echo(code)!r} is not an ISO 3166-1 alpha-2 code such as DE or FR",
            )
    return tuple(dict.fromkeys(code.upper() for code in codes))


def _choices(name: str, raw: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = _items(name, raw)
    for item in items:
        if item not in allowed:
            raise InvalidParameter(name, raw, f"unknown value {echo(item)!r}", allowed)
    return tuple(dict.fromkeys(items))


def _boolean(name: str, raw: str) -> bool:
    try:
        return BOOLEANS[raw.strip().lower()]
    except KeyError:
        raise InvalidParameter(name, raw, "expected a boolean", ("true", "false")) from None


def _timestamp(name: str, raw: str) -> datetime:
    text = raw.strip()
    if ":60" in text:
        raise InvalidParameter(name, raw, "leap seconds are not supported; use :59")
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)  # documented: a time without an offset is UTC
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidParameter(
            name, raw,
            "expected an ISO 8601 date or time between years 0001 and 9999 in UTC, "
            "e.g. 2024-03-01 or 2024-03-01T12:00:00Z",
        ) from None


def _natural(name: str, raw: str) -> int:
    text = raw.strip()
    # Length first: int() of a huge digit string is slow, then refused by Python itself.
    if len(text) > len(str(MAX_INTEGER)) or not text.isdigit() or not text.isascii() \
            or int(text) > MAX_INTEGER:
        raise InvalidParameter(name, raw, f"expected a whole number from 0 to {MAX_INTEGER}")
    return int(text)


class Shape(Enum):
    """What each row of the statement is; each encoder asks for the one it needs."""

    VALUES = "values"  # one column per field, text where CSV needs text (PostgreSQL's COPY)
    JSON = "json"  # one column: the row as a JSON object, built by the database
    CSV = "csv"  # one column: the row as a CSV line without its CRLF (SQLite)


CSV_SPECIALS = ('"', ",", "\r", "\n")  # a field holding any of these is quoted (RFC 4180)


def _money_sql(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    if dialect == "sqlite":  # stored as REAL: exact for numeric(12,2), rounded back here
        return type_coerce(func.printf("%.2f", column), String)
    return cast(column, Text)  # numeric(12,2) prints with exactly two decimals


def _timestamp_sql(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    if dialect == "sqlite":
        return type_coerce(func.strftime("%Y-%m-%dT%H:%M:%SZ", column), String)
    return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')


def _value(name: str, dialect: str) -> ColumnElement[Any]:
    """A field as CSV wants it: text for money, timestamps and booleans."""
    column, kind = users.c[name], FIELDS[name]
    if kind is Kind.MONEY:
        return _money_sql(column, dialect)
    if kind is Kind.TIMESTAMP:
        return _timestamp_sql(column, dialect)
    if kind is Kind.BOOLEAN:
        return case((column, "true"), else_="false")
    return column


def _json_value(name: str, dialect: str) -> ColumnElement[Any]:
    """A field as a JSON object member wants it: money a number, booleans true/false."""
    column, kind = users.c[name], FIELDS[name]
    if kind is Kind.TIMESTAMP:
        return _timestamp_sql(column, dialect)
    if dialect != "sqlite":  # PostgreSQL's row_to_json renders numeric and boolean itself
        return column
    if kind is Kind.MONEY:
        return func.json(_money_sql(column, dialect))
    if kind is Kind.BOOLEAN:
        return case((column, func.json("true")), else_=func.json("false"))
    return column


def _json_object(
    fields: tuple[str, ...], dialect: str
) -> tuple[ColumnElement[Any], FromClause]:
    """The row as compact JSON text, and what to select it from. SQLite's json_object and
    PostgreSQL's row_to_json escape exactly alike (checked for every ASCII
    character and astral ones), so both backends give the same bytes."""
    if dialect == "sqlite":
        pairs = [part for name in fields for part in (literal(name), _json_value(name, dialect))]
        return type_coerce(func.json_object(*pairs), String), users
    row = select(*(_json_value(name, dialect).label(name) for name in fields))
    lateral = row.correlate(users).lateral("t")  # only the asked fields, in their order
    column = cast(func.row_to_json(lateral.table_valued()), Text)
    return column, users.join(lateral, true())


def _holds_any(value: ColumnElement[Any], needles: tuple[str, ...]) -> Any:
    # instr's position is true when found: no comparison to run
    return or_(*(type_coerce(func.instr(value, needle), Boolean) for needle in needles))


def _csv_line(fields: tuple[str, ...], dialect: str) -> ColumnElement[Any]:
    """The row as one CSV line, SQLite only (PostgreSQL's COPY writes CSV itself, see
    pg_copy.py). One printf builds the whole line: a chain of ``||`` would copy the growing
    line once per field (callgrind: the biggest cost); printf's ``%s`` writes NULL as
    nothing. A lone empty field is written as ``""``, as csv.writer does, so that the line
    is not blank."""
    if dialect != "sqlite":
        raise ValueError("CSV lines are built in SQL on SQLite only")
    formats: list[str] = []
    values: list[ColumnElement[Any]] = []
    for name in fields:
        column, kind = users.c[name], FIELDS[name]
        if kind is Kind.MONEY:
            formats.append("%.2f")  # _money_sql's printf, folded into the line's
            values.append(column)
        elif kind is Kind.TEXT:
            quoted = literal('"') + func.replace(column, '"', '""') + literal('"')
            formats.append("%s")
            values.append(case((_holds_any(column, CSV_SPECIALS), quoted), else_=column))
        else:
            formats.append("%s")
            values.append(_value(name, dialect))
    line = type_coerce(func.printf(",".join(formats), *values), String)
    if len(fields) == 1:
        return case((line == "", '""'), else_=line)
    return line


def build_count(query: ExportQuery, dialect: str) -> Select[Any]:
    """How many rows ``build_statement`` gives for this query (limit included)."""
    ids = build_statement(replace(query, fields=("id",)), dialect)
    return select(func.count()).select_from(ids.subquery())


def build_statement(
    query: ExportQuery, dialect: str, shape: Shape = Shape.VALUES
) -> Select[Any]:
    if shape is Shape.JSON:
        column, source = _json_object(query.fields, dialect)
        statement = select(column).select_from(source)
    elif shape is Shape.CSV:
        statement = select(_csv_line(query.fields, dialect))
    else:
        statement = select(*(_value(name, dialect).label(name) for name in query.fields))
    statement = _matching(statement, query).order_by(users.c.id)
    if query.limit is not None:
        statement = statement.limit(literal(query.limit, BigInteger()))
    return statement


# Given per execution (cursors.DriverStatement):
AFTER = bindparam("batch_after", None, BigInteger())  # a batch's rows come after this id
UNTIL = bindparam("batch_until", None, BigInteger())  # ... up to and with this one
ROWS = bindparam("batch_rows", None, BigInteger())


def build_plan(query: ExportQuery) -> Select[Any, int]:
    """The next batch: the last id and the number of the next ``:batch_rows`` rows after
    ``:batch_after``. Reads ids only, so planning costs little beside rendering."""
    ids = _matching(select(users.c.id), query).where(users.c.id > AFTER)
    batch = ids.order_by(users.c.id).limit(ROWS).subquery()
    return select(func.max(batch.c.id), func.count())


MIN_ID = -(2**63)  # below every id: "from the start"


@dataclass(frozen=True)
class Planned:
    """One range of an export's rows, planned by ``build_plan``."""

    after: int  # its rows have ids above this one
    until: int  # ... and up to this one
    rows: int


PlanStep = Callable[[int, int], Awaitable[tuple[int | None, int]]]  # (after, rows) -> plan row


async def plan_ranges(
    step: PlanStep, query: ExportQuery, rows_each: int
) -> AsyncGenerator[Planned, None]:
    """Split an export into ranges of ``rows_each`` rows, in id order; ``step`` runs
    ``build_plan`` on the caller's connection."""
    after = query.after_id if query.after_id is not None else MIN_ID
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


def build_batch(query: ExportQuery, shape: Shape, separator: str) -> Select[bytes, int]:
    """SQLite: the rows of a planned batch (``:batch_after`` < id <= ``:batch_until``)
    joined by ``separator`` into one value, as UTF-8 bytes (so that no row is decoded into a
    Python str and encoded back), and how many they were. One step of the statement renders
    the whole batch, outside Python's GIL."""
    rows = build_statement(replace(query, limit=None), "sqlite", shape)
    batch = rows.where(users.c.id > AFTER, users.c.id <= UNTIL).subquery()
    # The subquery is ordered and, being under an aggregate, is not flattened into it:
    # SQLite hands group_concat its rows in id order.
    joined = func.group_concat(batch.c[0], separator)
    # group_concat skips NULLs: counting lines, not rows, makes a NULL line fail the batch.
    # A UTF-8 database (SQLite's default) stores exactly these bytes.
    return select(cast(joined, LargeBinary), func.count(batch.c[0]))


def _matching(statement: Select[Any], query: ExportQuery) -> Select[Any]:
    """``statement`` restricted to the rows ``query`` asks for."""
    if query.countries:
        statement = statement.where(users.c.country.in_(query.countries))
    if query.plans:
        statement = statement.where(users.c.plan.in_(query.plans))
    if query.is_active is not None:
        statement = statement.where(users.c.is_active.is_(query.is_active))
    if query.created_from is not None:
        statement = statement.where(users.c.created_at >= query.created_from)
    if query.created_to is not None:
        statement = statement.where(users.c.created_at < query.created_to)
    # Bound as BIGINT: PostgreSQL would otherwise cast the parameter to INTEGER and fail
    # on values past 2**31 that the parser accepts.
    if query.after_id is not None:
        statement = statement.where(users.c.id > literal(query.after_id, BigInteger()))
    return statement
