"""params.py on its own: raw parameters to an ``ExportQuery``, or a 422 that names what was
wrong and what would be valid, for tables built here (no database, no server).

The exports' tests (test_exports, test_foreign) check the same grammar through whole
exports; these reach every branch in milliseconds, so that they are also the first line of
the mutation run of params.py (tests/mutation.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from exporter.catalog import Column, Kind, Table
from exporter.errors import InvalidParameter
from exporter.params import (
    MAX_INTEGER,
    boolean,
    natural,
    parameter_names,
    parse_query,
    timestamp,
    value,
)
from exporter.queries import ExportQuery, Filter, Op


def column(name: str, kind: Kind, declared: str = "") -> Column:
    return Column(name, declared or kind.value, kind, True)


THINGS = Table("things", (
    Column("id", "INTEGER", Kind.INTEGER, False), column("ratio", Kind.FLOAT),
    column("price", Kind.NUMERIC), column("name", Kind.TEXT), column("on", Kind.BOOLEAN),
    column("day", Kind.DATE), column("at", Kind.TIMESTAMP), column("opens", Kind.TIME),
    column("ref", Kind.UUID), column("doc", Kind.JSON), column("data", Kind.BYTES),
    column("tags", Kind.ARRAY), column("limit_", Kind.TEXT), column("a__b", Kind.TEXT),
    column("after_id", Kind.INTEGER),
), ("id",))
PAIRS = Table("pairs", (Column("region", "TEXT", Kind.TEXT, False),
                        Column("month", "INTEGER", Kind.INTEGER, False),
                        column("amount", Kind.NUMERIC)), ("region", "month"))
KEYLESS = Table("log", (column("line", Kind.TEXT),), ())
USERS = Table("users", (
    Column("id", "INTEGER", Kind.INTEGER, False), column("country", Kind.TEXT),
    column("plan", Kind.TEXT), column("is_active", Kind.BOOLEAN),
    column("created_at", Kind.TIMESTAMP),
), ("id",))
# A table named users that is not the demo's (no plan): the aliases are its columns or none.
OTHER_USERS = Table("users", (Column("id", "INTEGER", Kind.INTEGER, False),
                              column("country", Kind.TEXT), column("after_id", Kind.INTEGER)),
                    ("id",))


def parse(table: Table, *params: tuple[str, str]) -> ExportQuery:
    return parse_query(table, params)


def refused(table: Table, *params: tuple[str, str]) -> InvalidParameter:
    with pytest.raises(InvalidParameter) as caught:
        parse_query(table, params)
    assert caught.value.status == 422
    return caught.value


def only(query: ExportQuery) -> Filter:
    assert len(query.filters) == 1, query.filters
    return query.filters[0]


# The query as a whole.

def test_no_parameters_export_every_column_of_every_row() -> None:
    assert parse(THINGS) == ExportQuery(THINGS, THINGS.names, (), None, None)


def test_fields_keep_the_order_asked_and_refuse_unknown_repeated_and_empty_names() -> None:
    assert parse(THINGS, ("fields", "name, id,day")).fields == ("name", "id", "day")
    unknown = refused(THINGS, ("fields", "id,nope"))
    assert unknown.parameter == "fields" and "unknown field 'nope'" in unknown.reason
    assert "'things' has no such column" in unknown.reason
    assert unknown.valid == THINGS.names
    twice = refused(THINGS, ("fields", "id,name,id"))
    assert twice.reason == "field 'id' is listed twice"
    for raw in ("", " ", "id,", ",id", "id,,name"):
        assert "comma-separated list with no empty items" in refused(
            THINGS, ("fields", raw)).reason, raw


def test_a_parameter_given_twice_is_refused_rather_than_one_of_them_ignored() -> None:
    error = refused(THINGS, ("name", "a"), ("name", "b"))
    assert error.parameter == "name" and error.value == "b"
    assert error.reason == "given more than once; use a comma list"
    refused(THINGS, ("limit", "1"), ("limit", "1"))


def test_limit_is_a_whole_number_and_nothing_else() -> None:
    assert parse(THINGS, ("limit", "0")).limit == 0
    assert parse(THINGS, ("limit", str(MAX_INTEGER))).limit == MAX_INTEGER
    for raw in ("-1", "+1", " 1", "1.0", "1e3", "", "١", str(MAX_INTEGER + 1), "9" * 20):
        error = refused(THINGS, ("limit", raw))
        assert error.reason == f"expected a whole number from 0 to {MAX_INTEGER}", raw


def test_every_bad_parameter_is_named_in_one_error() -> None:
    error = refused(THINGS, ("limit", "x"), ("nope", "1"), ("day", "monday"), ("name", "ok"))
    assert [e.parameter for e in error.each()] == ["limit", "nope", "day"]


def test_a_lower_bound_above_the_upper_one_is_called_a_swap() -> None:
    error = refused(THINGS, ("id__gte", "10"), ("id__lt", "5"))
    assert error.parameter == "id__lt" and "is below id__gte=10; were they swapped?" in error.reason
    refused(THINGS, ("id__gt", "10"), ("id__lte", "9"))
    # Equal bounds, other columns' bounds and one-sided ranges are fine.
    assert len(parse(THINGS, ("id__gte", "5"), ("id__lte", "5")).filters) == 2
    assert len(parse(THINGS, ("id__gt", "10"), ("after_id__lt", "5")).filters) == 2
    assert len(parse(THINGS, ("id__lt", "5"), ("id__lte", "3")).filters) == 2
    assert len(parse(THINGS, ("id__gt", "10"), ("id__gte", "30")).filters) == 2


# Filters.

def test_a_bare_name_is_equality_to_any_of_a_comma_list() -> None:
    assert only(parse(THINGS, ("id", "3, 1,2"))) == Filter("id", Op.EXACT, (3, 1, 2), "id")
    assert only(parse(THINGS, ("name", "a,b"))).values == ("a", "b")
    assert "no empty items" in refused(THINGS, ("id", "1,")).reason


def test_exact_takes_one_value_commas_and_all() -> None:
    assert only(parse(THINGS, ("name__exact", "Doe, Jane"))) == Filter(
        "name", Op.EXACT, ("Doe, Jane",), "name__exact")
    assert only(parse(THINGS, ("name__exact", ""))).values == ("",)
    refused(THINGS, ("id__exact", "1,2"))


@pytest.mark.parametrize("op", [Op.GT, Op.GTE, Op.LT, Op.LTE])
def test_comparisons_take_one_value_of_the_columns_kind(op: Op) -> None:
    name = f"day__{op.value}"
    assert only(parse(THINGS, (name, "2024-03-01"))) == Filter(
        "day", op, (date(2024, 3, 1),), name)
    refused(THINGS, (name, "2024-03-01,2024-03-02"))


def test_isnull_takes_a_boolean_on_every_kind() -> None:
    for name in THINGS.names:
        assert only(parse(THINGS, (f"{name}__isnull", "true"))).values == (True,)
        assert only(parse(THINGS, (f"{name}__isnull", "0"))) == Filter(
            name, Op.ISNULL, (False,), f"{name}__isnull")
    error = refused(THINGS, ("name__isnull", "maybe"))
    assert error.reason == "expected a boolean" and error.valid == ("true", "false")
    assert error.parameter == "name__isnull" and error.value == "maybe"


def test_json_bytes_and_arrays_are_filtered_only_by_being_null() -> None:
    for name in ("doc", "data", "tags"):
        for suffix in ("", "__exact", "__gt", "__lte"):
            error = refused(THINGS, (f"{name}{suffix}", "1"))
            op = (suffix or "__exact")[2:]
            assert error.reason == f"a {THINGS.column(name).kind.value} column cannot be " \
                                   f"filtered by {op}"
            assert error.valid == [f"{name}__isnull"]
    error = refused(THINGS, ("on__gt", "true"))
    assert error.reason == "a boolean column cannot be filtered by gt"
    assert error.valid == ["on", "on__isnull"]  # equality by its bare name
    assert refused(THINGS, ("ref__lt", str(uuid.uuid4()))).valid == ["ref", "ref__isnull"]


def test_an_unknown_name_lists_what_would_be_valid() -> None:
    error = refused(THINGS, ("nope__gt", "1"))
    assert error.parameter == "nope__gt"
    assert "'things' has no column 'nope'" in error.reason
    assert "none of fields, limit, after" in error.reason
    assert "__exact, __gt, __gte, __lt, __lte, __isnull" in error.reason
    assert error.valid == ["fields", "limit", "after", *THINGS.names]
    demo = refused(USERS, ("nope", "1"))
    assert demo.valid == ["fields", "limit", "after", "after_id", "country", "plan", "is_active",
                          "created_from", "created_to", "id", "created_at"]


def test_a_suffix_that_is_no_operator_is_part_of_the_column_name() -> None:
    assert only(parse(THINGS, ("a__b", "x"))) == Filter("a__b", Op.EXACT, ("x",), "a__b")
    assert only(parse(THINGS, ("a__b__gt", "x"))) == Filter("a__b", Op.GT, ("x",), "a__b__gt")
    assert only(parse(THINGS, ("limit___exact", "x"))).column == "limit_"
    assert "has no column 'name__like'" in refused(THINGS, ("name__like", "x")).reason


def test_parameter_names_are_every_name_a_table_takes() -> None:
    names = parameter_names(PAIRS)
    ordered = ["", "__exact", "__gt", "__gte", "__lt", "__lte", "__isnull"]
    assert names == ["fields", "limit", "after", *(f"{c}{s}" for c in PAIRS.names
                                                   for s in ordered)]
    for name in names:  # each one is taken
        parse(PAIRS, (name, "region" if name == "fields" else "north,1" if name == "after"
                      else "false" if name.endswith("__isnull") else "1"))
    assert parameter_names(USERS)[:9] == ["fields", "limit", "after", "after_id", "country",
                                          "plan", "is_active", "created_from", "created_to"]
    assert parameter_names(THINGS).count("on") == 1 and "doc" not in parameter_names(THINGS)


# Resuming after a key.

def test_after_is_the_key_as_the_columns_kind() -> None:
    assert parse(THINGS, ("after", "41")).after == (41,)
    error = refused(THINGS, ("after", "x"))
    assert error.reason == "column 'id' is integer: expected a whole number such as 42 or -7"


def test_a_composite_key_takes_its_values_in_order_the_last_taking_the_rest() -> None:
    assert parse(PAIRS, ("after", "north,3")).after == ("north", 3)
    comma = Table("names", (Column("id", "INTEGER", Kind.INTEGER, False),
                            Column("name", "TEXT", Kind.TEXT, False)), ("id", "name"))
    assert parse(comma, ("after", "1,Doe, Jane")).after == (1, "Doe, Jane")
    error = refused(PAIRS, ("after", "north"))
    assert error.reason == ("the key of 'pairs' has 2 columns (region, month): give 2 values, "
                            "comma-separated (only the last may hold a comma)")
    refused(PAIRS, ("after", "north,x"))


def test_a_table_without_a_key_cannot_be_resumed() -> None:
    error = refused(KEYLESS, ("after", "1"))
    assert "'log' has no primary key, so there is no key to resume after" in error.reason


# The demo's earlier names.

def test_the_demos_aliases_parse_as_they_always_did() -> None:
    assert only(parse(USERS, ("country", "de, fr,DE"))) == Filter(
        "country", Op.EXACT, ("DE", "FR"), "country")
    assert only(parse(USERS, ("plan", "pro,free,pro"))) == Filter(
        "plan", Op.EXACT, ("pro", "free"), "plan")
    assert only(parse(USERS, ("is_active", "FALSE"))) == Filter(
        "is_active", Op.EXACT, (False,), "is_active")
    assert only(parse(USERS, ("created_from", "2024-03-01"))) == Filter(
        "created_at", Op.GTE, (datetime(2024, 3, 1, tzinfo=UTC),), "created_from")
    assert only(parse(USERS, ("created_to", "2024-03-01T12:00:00Z"))) == Filter(
        "created_at", Op.LT, (datetime(2024, 3, 1, 12, tzinfo=UTC),), "created_to")
    assert parse(USERS, ("after_id", "7")).after == (7,)


def test_the_demos_aliases_refuse_what_they_always_refused() -> None:
    for raw in ("DEU", "D1", "", "de,"):
        refused(USERS, ("country", raw))
    assert "'DEU' is not an ISO 3166-1 alpha-2 code" in refused(USERS, ("country", "DEU")).reason
    error = refused(USERS, ("plan", "gold"))
    assert error.reason == "unknown value 'gold'" and error.valid == ("free", "pro", "enterprise")
    refused(USERS, ("plan", "Pro"))
    refused(USERS, ("is_active", "yes"))
    for raw in ("-1", "x", "1.5"):
        refused(USERS, ("after_id", raw))
    swapped = refused(USERS, ("created_from", "2024-03-02"), ("created_to", "2024-03-01"))
    assert swapped.parameter == "created_to" and "below created_from=" in swapped.reason
    both = refused(USERS, ("after", "1"), ("after_id", "2"))
    assert both.parameter == "after_id" and "give one" in both.reason


def test_on_another_users_table_the_aliases_are_plain_columns_or_unknown() -> None:
    assert only(parse(OTHER_USERS, ("after_id", "7"))) == Filter(
        "after_id", Op.EXACT, (7,), "after_id")
    assert parse(OTHER_USERS, ("after", "1"), ("after_id", "2")).after == (1,)
    assert only(parse(OTHER_USERS, ("country", "de"))).values == ("de",), "no upper-casing"
    assert "has no column 'plan'" in refused(OTHER_USERS, ("plan", "pro")).reason
    assert refused(OTHER_USERS, ("nope", "1")).valid == ["fields", "limit", "after",
                                                         *OTHER_USERS.names]


# Values by kind.

VALID: list[tuple[Kind, str, Any]] = [
    (Kind.INTEGER, "-7", -7), (Kind.INTEGER, str(MAX_INTEGER), MAX_INTEGER),
    (Kind.INTEGER, str(-MAX_INTEGER), -MAX_INTEGER), (Kind.INTEGER, "007", 7),
    (Kind.FLOAT, "39.81", 39.81), (Kind.FLOAT, "1e-05", 1e-5), (Kind.FLOAT, "-2E+3", -2000.0),
    (Kind.FLOAT, "5", 5.0), (Kind.NUMERIC, "12.30", Decimal("12.30")),
    (Kind.NUMERIC, "-0.5", Decimal("-0.5")), (Kind.DATE, "2024-02-29", date(2024, 2, 29)),
    (Kind.TIME, "12:00", time(12)), (Kind.TIME, "23:59:59.5", time(23, 59, 59, 500000)),
    (Kind.UUID, "123E4567-E89B-12D3-A456-426614174000", "123e4567-e89b-12d3-a456-426614174000"),
    (Kind.TEXT, " any, text ", " any, text "), (Kind.ANY, "42", "42"),
    (Kind.BOOLEAN, " True ", True), (Kind.BOOLEAN, "0", False),
    (Kind.TIMESTAMP, "2024-03-01", datetime(2024, 3, 1, tzinfo=UTC)),
    (Kind.TIMESTAMP, "2024-03-01 12:30", datetime(2024, 3, 1, 12, 30, tzinfo=UTC)),
    (Kind.TIMESTAMP, "2024-03-01T12:30:15.25Z", datetime(2024, 3, 1, 12, 30, 15, 250000, UTC)),
    (Kind.TIMESTAMP, "2024-03-01T12:30:00+02:00", datetime(2024, 3, 1, 10, 30, tzinfo=UTC)),
]
INVALID: list[tuple[Kind, str]] = [
    (Kind.INTEGER, "1.0"), (Kind.INTEGER, " 1"), (Kind.INTEGER, "+1"), (Kind.INTEGER, "0x10"),
    (Kind.INTEGER, str(MAX_INTEGER + 1)), (Kind.INTEGER, "9" * 20), (Kind.INTEGER, "١"),
    (Kind.FLOAT, "nan"), (Kind.FLOAT, "inf"), (Kind.FLOAT, "1e5000"), (Kind.FLOAT, ".5"),
    (Kind.FLOAT, "1,5"), (Kind.NUMERIC, "1e3"), (Kind.NUMERIC, "NaN"), (Kind.NUMERIC, "1."),
    (Kind.DATE, "2024-02-30"), (Kind.DATE, "2024-3-1"), (Kind.DATE, "20240301"),
    (Kind.DATE, "2024-03-01T00:00"), (Kind.TIME, "24:00"), (Kind.TIME, "12"),
    (Kind.TIME, "12:00:00+01:00"), (Kind.UUID, "123e4567"), (Kind.UUID, "not-a-uuid"),
    (Kind.BOOLEAN, "yes"), (Kind.TIMESTAMP, "2024-03-01T23:59:60Z"),
    (Kind.TIMESTAMP, "2024-03-01 12:00 UTC"), (Kind.TIMESTAMP, "yesterday"),
    (Kind.TIMESTAMP, "10000-01-01"), (Kind.TIMESTAMP, "2024-03-01T12:00:00+25:00"),
]


@pytest.mark.parametrize(("kind", "raw", "expected"), VALID)
def test_a_value_parses_as_its_columns_kind(kind: Kind, raw: str, expected: Any) -> None:
    parsed = value(column("c", kind), "c", raw)
    assert parsed == expected and type(parsed) is type(expected)


@pytest.mark.parametrize(("kind", "raw"), INVALID)
def test_a_value_not_of_its_columns_form_is_refused_by_name(kind: Kind, raw: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        value(column("c", kind), "c__gt", raw)
    assert caught.value.parameter == "c__gt" and caught.value.value == raw
    if kind is not Kind.BOOLEAN:
        assert caught.value.reason.startswith(f"column 'c' is {kind.value}: expected ")


def test_a_nul_character_is_refused_in_every_kind_but_boolean() -> None:
    for kind in (Kind.TEXT, Kind.ANY, Kind.INTEGER, Kind.DATE):
        with pytest.raises(InvalidParameter, match="a NUL character cannot be compared"):
            value(column("c", kind), "c", "a\x00b")


def test_natural_and_boolean_say_what_they_take() -> None:
    assert natural("n", "0") == 0 and natural("n", "19") == 19
    for raw in ("", "-0", "1 ", "²", str(MAX_INTEGER + 1)):
        with pytest.raises(InvalidParameter, match="whole number from 0 to"):
            natural("n", raw)
    assert [boolean("b", raw) for raw in ("true", " 1", "FALSE", "0 ")] == [
        True, True, False, False]


def test_a_timestamp_without_an_offset_is_utc_and_one_with_an_offset_is_moved_to_utc() -> None:
    assert timestamp("2024-03-01T00:30:00") == datetime(2024, 3, 1, 0, 30, tzinfo=UTC)
    moved = timestamp("2024-03-01T00:30:00-05:00")
    assert moved == datetime(2024, 3, 1, 5, 30, tzinfo=UTC) and moved.tzinfo is UTC
    assert timestamp("2024-03-01T00:30:00Z").utcoffset() == timedelta(0)
    assert timestamp("2024-03-01T00:30:00+01:00").tzinfo is not timezone(timedelta(hours=1))


# What each refusal says: the parameter, the value as given, the reason (a client shows
# them: tests that only check "a 422" would let any of them be lost).

def test_each_refusal_names_its_parameter_and_the_value_given() -> None:
    cases: list[tuple[Table, tuple[tuple[str, str], ...], str, object, str]] = [
        (THINGS, (("id", "1,"),), "id", "1,",
         "expected a comma-separated list with no empty items"),
        (THINGS, (("fields", "id,nope"),), "fields", "id,nope",
         "unknown field 'nope': 'things' has no such column"),
        (THINGS, (("fields", "id,id"),), "fields", "id,id", "field 'id' is listed twice"),
        (THINGS, (("after", "x"),), "after", "x",
         "column 'id' is integer: expected a whole number such as 42 or -7"),
        (THINGS, (("name", "a\x00b"),), "name", "a\x00b", "a NUL character cannot be compared"),
        (THINGS, (("id__gte", "10"), ("id__lt", "5")), "id__lt", "5",
         "is below id__gte=10; were they swapped?"),
        (USERS, (("country", "de,"),), "country", "de,",
         "expected a comma-separated list with no empty items"),
        (USERS, (("country", "DEU"),), "country", "DEU",
         "'DEU' is not an ISO 3166-1 alpha-2 code such as DE or FR"),
        (USERS, (("plan", "pro,"),), "plan", "pro,",
         "expected a comma-separated list with no empty items"),
        (USERS, (("plan", "gold"),), "plan", "gold", "unknown value 'gold'"),
        (USERS, (("after", "1"), ("after_id", "2")), "after_id", "",
         "after_id is the demo's name for after; give one"),
        (THINGS, (("limit", "x"),), "limit", "x",
         f"expected a whole number from 0 to {MAX_INTEGER}"),
        (THINGS, (("limit", "-1"),), "limit", "-1",
         f"expected a whole number from 0 to {MAX_INTEGER}"),
        (THINGS, (("fields", "id,"),), "fields", "id,",
         "expected a comma-separated list with no empty items"),
        (THINGS, (("nope", "1"),), "nope", "1",
         "unknown parameter: 'things' has no column 'nope', and it is none of fields, limit, "
         "after; a filter is a column name, alone or with one of the suffixes __exact, __gt, "
         "__gte, __lt, __lte, __isnull"),
        (THINGS, (("doc__gt", "1"),), "doc__gt", "1", "a json column cannot be filtered by gt"),
        (THINGS, (("id__gt", "x"),), "id__gt", "x",
         "column 'id' is integer: expected a whole number such as 42 or -7"),
        (KEYLESS, (("after", "1"),), "after", "1",
         "'log' has no primary key, so there is no key to resume after; export it whole, or "
         "filter on a column that orders it"),
        (PAIRS, (("after", "north"),), "after", "north",
         "the key of 'pairs' has 2 columns (region, month): give 2 values, comma-separated "
         "(only the last may hold a comma)"),
        (USERS, (("after_id", "-1"),), "after_id", "-1",  # the demo's: from 0, as documented
         f"expected a whole number from 0 to {MAX_INTEGER}"),
        (USERS, (("is_active", "maybe"),), "is_active", "maybe", "expected a boolean"),
        (USERS, (("created_from", "soon"),), "created_from", "soon",
         "column 'created_at' is timestamp: expected an ISO 8601 date or time in UTC between "
         "years 0001 and 9999, such as 2024-03-01 or 2024-03-01T12:00:00Z (no leap seconds: "
         "use :59)"),
    ]
    for table, params, parameter, given, reason in cases:
        error = refused(table, *params).each()[-1]
        assert (error.parameter, error.value, error.reason) == (parameter, given, reason), params


def test_each_filter_remembers_the_name_the_client_gave_it() -> None:
    """For the messages about it later (``created_to`` below ``created_from``)."""
    named = {
        "on__isnull": only(parse(THINGS, ("on__isnull", "true"))),
        "country": only(parse(USERS, ("country", "de"))),
        "plan": only(parse(USERS, ("plan", "pro"))),
        "is_active": only(parse(USERS, ("is_active", "true"))),
        "created_to": only(parse(USERS, ("created_to", "2024-03-01"))),
    }
    for parameter, made in named.items():
        assert made.parameter == parameter


def test_an_offset_of_sixty_minutes_is_refused_though_python_would_read_it() -> None:
    """datetime.fromisoformat takes +01:60 as +02:00; a client meant something else."""
    for raw in ("2024-03-01T12:00:00+01:60", "2024-03-01T23:59:60Z"):
        with pytest.raises(InvalidParameter, match="is timestamp"):
            value(column("c", Kind.TIMESTAMP), "c", raw)
    assert value(column("c", Kind.TIME), "c", "10:59:59") == time(10, 59, 59)
