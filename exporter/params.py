"""Raw parameters (a URL's query string, a job's JSON, the command line) -> an ``ExportQuery``
for one ``Table``, or an ``InvalidParameter`` naming what was wrong and what would be valid.

The grammar is Datasette's: ``fields=a,b`` (order kept); ``col=v`` and ``col=v1,v2`` (equal to
any of); ``col__exact=v`` (one value, commas and all); ``col__gt``, ``__gte``, ``__lt``,
``__lte``; ``col__isnull=true|false``; ``limit=N``; ``after=<key>`` (keyset resume; a
composite key's values comma-separated, in key order, the last one taking the rest). Values
are parsed by the column's kind. Unknown and repeated parameters are errors: a typo must not
export the whole table.

On the demo ``users`` table the earlier names stay, as aliases: ``after_id`` (``after``),
``country`` (ISO codes, any case), ``plan``, ``is_active``, ``created_from`` (``created_at__gte``)
and ``created_to`` (``created_at__lt``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from exporter.catalog import Column, Kind, Table
from exporter.errors import InvalidParameter, echo
from exporter.queries import ExportQuery, Filter, Op

MAX_INTEGER = 2**63 - 1
BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
INTEGER = re.compile(r"-?[0-9]{1,19}")
DECIMAL = re.compile(r"-?[0-9]{1,40}(\.[0-9]{1,40})?")
FLOAT = re.compile(r"-?[0-9]{1,40}(\.[0-9]{1,40})?([eE][-+]?[0-9]{1,3})?")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
TIME = r"[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
TIME_OF_DAY = re.compile(TIME)
OFFSET = r"(Z|[+-][0-9]{2}:[0-9]{2})"
TIMESTAMP = re.compile(rf"{DATE.pattern}([T ]{TIME}{OFFSET}?)?")
COUNTRY_CODE = re.compile(r"[A-Za-z]{2}")
DEMO_PLANS = ("free", "pro", "enterprise")
# What each kind can be filtered by; JSON, bytes and arrays only by being NULL or not.
ORDERED = (Op.EXACT, Op.GT, Op.GTE, Op.LT, Op.LTE, Op.ISNULL)
OPS: dict[Kind, tuple[Op, ...]] = {
    Kind.BOOLEAN: (Op.EXACT, Op.ISNULL), Kind.UUID: (Op.EXACT, Op.ISNULL),
    Kind.JSON: (Op.ISNULL,), Kind.BYTES: (Op.ISNULL,), Kind.ARRAY: (Op.ISNULL,),
}
RESERVED = ("fields", "limit", "after")
SUFFIXES = tuple(f"__{op.value}" for op in ORDERED)
DEMO_ALIASES = ("after_id", "country", "plan", "is_active", "created_from", "created_to")


def parse_query(table: Table, params: Iterable[tuple[str, str]]) -> ExportQuery:
    """Validate raw ``(name, value)`` pairs against ``table``."""
    seen: set[str] = set()
    fields = table.names
    filters: list[Filter] = []
    after: tuple[Any, ...] | None = None
    limit: int | None = None
    errors: list[InvalidParameter] = []  # every bad parameter is reported, not the first
    for name, raw in params:
        try:
            if name in seen:
                raise InvalidParameter(name, raw, "given more than once; use a comma list")
            seen.add(name)
            if name == "fields":
                fields = _fields(table, raw)
            elif name == "limit":
                limit = natural("limit", raw)
            elif name == "after" or (name == "after_id" and _demo(table)):
                if name == "after_id":  # documented as a whole number from 0
                    natural(name, raw)
                after = after_key(table, name, raw)
            elif _demo(table) and name in DEMO_ALIASES:
                filters.append(_alias(table, name, raw))
            else:
                filters.append(_filter(table, name, raw))
        except InvalidParameter as error:
            errors.append(error)
    if "after" in seen and "after_id" in seen and _demo(table):  # else after_id is a column
        errors.append(InvalidParameter("after_id", "", "after_id is the demo's name for after; "
                                       "give one"))
    if errors:
        raise InvalidParameter.combined(errors)
    _check_range(filters)
    return ExportQuery(table, fields, tuple(filters), after, limit)


def parameter_names(table: Table) -> list[str]:
    """Every parameter name ``table`` takes, for error messages and documentation."""
    names = [*RESERVED, *(DEMO_ALIASES if _demo(table) else ())]
    for column in table.columns:
        allowed = OPS.get(column.kind, ORDERED)
        if Op.EXACT in allowed:  # the bare name is equality: not on JSON, bytes or arrays
            names.append(column.name)
        names.extend(f"{column.name}__{op.value}" for op in allowed)
    return names


def _demo(table: Table) -> bool:
    return table.name == "users" and all(table.has(name) for name in (
        "id", "country", "plan", "is_active", "created_at"))


def _items(name: str, raw: str) -> list[str]:
    items = [item.strip() for item in raw.split(",")]
    if not raw.strip() or any(not item for item in items):
        raise InvalidParameter(name, raw, "expected a comma-separated list with no empty items")
    return items


def _fields(table: Table, raw: str) -> tuple[str, ...]:
    names = _items("fields", raw)
    unknown = [name for name in names if not table.has(name)]
    if unknown:
        raise InvalidParameter(
            "fields", raw, f"unknown field {echo(unknown[0])!r}: {table.name!r} has no such "
            "column", table.names,
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidParameter("fields", raw, f"field {echo(repeated[0])!r} is listed twice")
    return tuple(names)


def _split(name: str) -> tuple[str, Op]:
    column, separator, suffix = name.rpartition("__")
    if separator:
        for op in Op:
            if op.value == suffix:
                return column, op
    return name, Op.EXACT


def _filter(table: Table, name: str, raw: str) -> Filter:
    column_name, op = _split(name)
    if not table.has(column_name):
        raise InvalidParameter(
            name, raw, f"unknown parameter: {table.name!r} has no column "
            f"{echo(column_name)!r}, and it is none of {', '.join(RESERVED)}; a filter is a "
            f"column name, alone or with one of the suffixes {', '.join(SUFFIXES)}",
            list(dict.fromkeys([*RESERVED, *(DEMO_ALIASES if _demo(table) else ()), *table.names])),
        )
    column = table.column(column_name)
    allowed = OPS.get(column.kind, ORDERED)
    if op not in allowed:
        raise InvalidParameter(
            name, raw, f"a {column.kind.value} column cannot be filtered by {op.value}",
            [f"{column.name}__{o.value}" if o is not Op.EXACT else column.name for o in allowed],
        )
    if op is Op.ISNULL:
        return Filter(column.name, op, (boolean(name, raw),), name)
    if op is Op.EXACT and not name.endswith("__exact"):
        values = tuple(value(column, name, item) for item in _items(name, raw))
    else:
        values = (value(column, name, raw),)
    return Filter(column.name, op, values, name)


def after_key(table: Table, name: str, raw: str) -> tuple[Any, ...]:
    """``after=``'s text as the key's values, typed by its columns' kinds."""
    if not table.key:
        raise InvalidParameter(
            name, raw, f"{table.name!r} has no primary key, so there is no key to resume "
            "after; export it whole, or filter on a column that orders it",
        )
    columns = [table.column(key) for key in table.key]
    # The last column takes the rest, commas and all: a client resuming after a key whose
    # last value holds a comma ("1,Doe, Jane") would else be refused with no way out.
    items = raw.split(",", len(columns) - 1)
    if len(items) != len(columns):
        raise InvalidParameter(
            name, raw, f"the key of {table.name!r} has {len(columns)} columns "
            f"({', '.join(table.key)}): give {len(columns)} values, comma-separated (only "
            "the last may hold a comma)",
        )
    return tuple(value(column, name, item) for column, item in zip(columns, items, strict=True))


def _alias(table: Table, name: str, raw: str) -> Filter:
    """The demo's earlier parameters, as they always parsed."""
    if name == "country":
        codes = _items(name, raw)
        for code in codes:
            if not COUNTRY_CODE.fullmatch(code):
                raise InvalidParameter(
                    name, raw, f"{echo(code)!r} is not an ISO 3166-1 alpha-2 code such as DE "
                    "or FR",
                )
        return Filter("country", Op.EXACT, tuple(dict.fromkeys(c.upper() for c in codes)), name)
    if name == "plan":
        plans = _items(name, raw)
        for plan in plans:
            if plan not in DEMO_PLANS:
                raise InvalidParameter(name, raw, f"unknown value {echo(plan)!r}", DEMO_PLANS)
        return Filter("plan", Op.EXACT, tuple(dict.fromkeys(plans)), name)
    if name == "is_active":
        return Filter("is_active", Op.EXACT, (boolean(name, raw),), name)
    op = Op.GTE if name == "created_from" else Op.LT
    return Filter("created_at", op, (value(table.column("created_at"), name, raw),), name)


def _check_range(filters: list[Filter]) -> None:
    """``created_to`` before ``created_from`` (any lower bound above an upper one on the
    same column) is a mistake the client will want to hear about."""
    for low in filters:
        for high in filters:
            if low.column == high.column and low.op in (Op.GT, Op.GTE) \
                    and high.op in (Op.LT, Op.LTE) and low.values[0] > high.values[0]:
                raise InvalidParameter(
                    high.parameter, str(high.values[0]),
                    f"is below {low.parameter}={low.values[0]}; were they swapped?",
                )


# --- Values by kind -------------------------------------------------------------------------


def natural(name: str, raw: str) -> int:
    """A whole number from 0 to 2**63-1, digits only (no sign, no spaces)."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_INTEGER:
        raise InvalidParameter(name, raw, f"expected a whole number from 0 to {MAX_INTEGER}")
    return int(raw)


def boolean(name: str, raw: str) -> bool:
    try:
        return BOOLEANS[raw.strip().lower()]
    except KeyError:
        raise InvalidParameter(name, raw, "expected a boolean", ("true", "false")) from None


EXPECTED = {
    Kind.INTEGER: "a whole number such as 42 or -7",
    Kind.FLOAT: "a number such as 39.81 or 1e-05",
    Kind.NUMERIC: "a decimal number such as 12.30",
    Kind.DATE: "a date such as 2024-03-01",
    Kind.TIME: "a time such as 12:00:00",
    Kind.TIMESTAMP: "an ISO 8601 date or time in UTC between years 0001 and 9999, such as "
                    "2024-03-01 or 2024-03-01T12:00:00Z (no leap seconds: use :59)",
    Kind.UUID: "a UUID such as 123e4567-e89b-12d3-a456-426614174000",
}
PATTERNS = {Kind.INTEGER: INTEGER, Kind.FLOAT: FLOAT, Kind.NUMERIC: DECIMAL, Kind.DATE: DATE,
            Kind.TIME: TIME_OF_DAY, Kind.TIMESTAMP: TIMESTAMP,
            Kind.UUID: re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")}
PARSERS: dict[Kind, Any] = {
    Kind.INTEGER: int, Kind.FLOAT: float, Kind.NUMERIC: Decimal, Kind.DATE: date.fromisoformat,
    Kind.TIME: time.fromisoformat, Kind.UUID: lambda raw: str(uuid.UUID(raw)),
    Kind.TIMESTAMP: lambda raw: timestamp(raw),
}


def value(column: Column, name: str, raw: str) -> Any:
    """``raw`` as a value of ``column``'s kind, or a 422 naming the column and the form
    expected. Strict: the whole value must have the form (no trailing text, no sign on
    what has none), so that nothing is silently read as something else."""
    kind = column.kind
    if kind is Kind.BOOLEAN:
        return boolean(name, raw)
    if "\x00" in raw:
        raise InvalidParameter(name, raw, "a NUL character cannot be compared")
    if kind not in PARSERS:
        return raw  # text: any value compares
    try:
        if not PATTERNS[kind].fullmatch(raw) or (kind is Kind.TIMESTAMP and ":60" in raw):
            raise ValueError(raw)
        parsed = PARSERS[kind](raw)
        if kind is Kind.INTEGER and abs(parsed) > MAX_INTEGER:
            raise ValueError(raw)
        return parsed
    except (ValueError, InvalidOperation, OverflowError):
        raise InvalidParameter(
            name, raw, f"column {column.name!r} is {kind.value}: expected {EXPECTED[kind]}"
        ) from None


def timestamp(raw: str) -> datetime:
    """An ISO 8601 date or time (checked against ``TIMESTAMP`` first); a time without an
    offset is UTC."""
    moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)  # documented: a time without an offset is UTC
    return moment.astimezone(UTC)
