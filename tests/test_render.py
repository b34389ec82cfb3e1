"""render.py on its own: the SQL each kind renders as, run in real SQLite and PostgreSQL,
against oracles outside it (PostgreSQL's own float8 text, Python's reading of each value).

The exports' tests (test_exports, test_foreign) check the same code through whole exports;
these reach what those cannot: the Python functions SQLite calls with every double, and the
forms only Parquet uses (``sqlite_fits``, ``sqlite_text_value``), without pyarrow, so that
the mutation run (tests/mutation.py) can check them too.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import sqlite3
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Column as SAColumn
from sqlalchemy import MetaData, literal, select
from sqlalchemy import Table as SATable
from sqlalchemy.dialects import postgresql, sqlite

from exporter import render, sqlite_functions
from exporter.catalog import Column, Kind
from exporter.db import prepare_sqlite
from tests.conftest import postgres_url
from tests.test_foreign import random_doubles

INF = float("inf")
# PostgreSQL 15's float8 text of each (extra_float_digits 1, its default), as psql prints it.
POSTGRESQL_WRITES = [  # pairs, not a dict: 0.0 and -0.0 are equal keys
    (0.0, "0"), (-0.0, "-0"), (0.1, "0.1"), (100.0, "100"), (1e-5, "1e-05"),
    (5e-324, "5e-324"), (1e15, "1e+15"), (-1e15, "-1e+15"), (1e16, "1e+16"),
    (1e23, "9.999999999999999e+22"), (999999999999999.9, "999999999999999.9"),
    (1234567890123456.0, "1.234567890123456e+15"),
    (1.7976931348623157e308, "1.7976931348623157e+308"), (INF, "Infinity"),
    (-INF, "-Infinity"), (math.nan, "NaN"),
]


def test_sqlite_float_writes_each_double_as_postgresql_writes_float8() -> None:
    for value, text in POSTGRESQL_WRITES:
        assert render.sqlite_float(value) == text, value
    assert render.sqlite_float(None) is None


async def test_sqlite_float_agrees_with_postgresql_on_every_double_of_the_property_set(
) -> None:
    url = postgres_url().replace("postgresql+asyncpg", "postgresql")
    doubles = [*random_doubles(), *(value for value, _ in POSTGRESQL_WRITES)]
    connection = await asyncpg.connect(url)
    try:
        written = await connection.fetch("SELECT x::text FROM unnest($1::float8[]) AS x",
                                         doubles)
    finally:
        await connection.close()
    mismatches = [(value, render.sqlite_float(value), row[0])
                  for value, row in zip(doubles, written, strict=True)
                  if render.sqlite_float(value) != row[0]]
    assert mismatches == []
    # The same doubles stored in SQLite and rendered by its SQL, which sends each to
    # float.__repr__, printf('%d') or sqlite_float; SQLite keeps no NaN and no -0.
    stored = [(value, row[0]) for value, row in zip(doubles, written, strict=True)
              if not math.isnan(value) and not (value == 0 and math.copysign(1, value) < 0)]
    rendered = sqlite_values({"f": [value for value, _ in stored]}, render.sqlite_text_value)
    mismatches = [(value, text, expected) for (value, expected), text
                  in zip(stored, rendered["f"], strict=True) if text != expected]
    assert mismatches == []


def test_sqlite_base64_is_base64_and_leaves_other_values_alone() -> None:
    assert render.sqlite_base64(b"\x00\xff\x10") == base64.b64encode(b"\x00\xff\x10").decode()
    assert render.sqlite_base64("text") == "text" and render.sqlite_base64(None) is None


# SQLite: one column of each kind, and values that fit it or not.

KINDS: dict[str, Column] = {
    "n": Column("n", "INTEGER", Kind.INTEGER, True),
    "f": Column("f", "REAL", Kind.FLOAT, True),
    "m": Column("m", "NUMERIC(5,2)", Kind.NUMERIC, True, 2, 5),
    "m0": Column("m0", "NUMERIC(5,0)", Kind.NUMERIC, True, 0, 5),
    "m1": Column("m1", "NUMERIC(4,1)", Kind.NUMERIC, True, 1, 4),
    "m2": Column("m2", "NUMERIC(2,2)", Kind.NUMERIC, True, 2, 2),
    "m16": Column("m16", "NUMERIC(16,0)", Kind.NUMERIC, True, 0, 16),
    "m400": Column("m400", "NUMERIC(400,2)", Kind.NUMERIC, True, 2, 400),
    "x": Column("x", "NUMERIC", Kind.NUMERIC, True),
    "b": Column("b", "BOOLEAN", Kind.BOOLEAN, True),
    "d": Column("d", "DATE", Kind.DATE, True),
    "ts": Column("ts", "TIMESTAMP", Kind.TIMESTAMP, True),
    "tm": Column("tm", "TIME", Kind.TIME, True),
    "by": Column("by", "BLOB", Kind.BYTES, True),
    "j": Column("j", "JSON", Kind.JSON, True),
    "t": Column("t", "TEXT", Kind.TEXT, True),
    "u": Column("u", "UUID", Kind.UUID, True),
    "a": Column("a", "", Kind.ANY, True),
}


@pytest.fixture(params=[False, True], ids=["without-cpp", "cpp"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """render's SQL written as without the C++ functions (Python's, and SQL of SQLite's
    own functions), or as with them where this process has them (test_sqlite_functions.py
    holds the C++ to its Python twins and to SQLite's functions value by value)."""
    if request.param:
        prepare_sqlite()
        if not sqlite_functions.native_installed():
            pytest.skip("exporter._sqlite_functions did not build (test_sqlite_functions.py "
                        "says why)")
    monkeypatch.setattr(sqlite_functions, "_native", request.param)
    return bool(request.param)


def sqlite_values(values: dict[str, list[Any]], expression: Any, native: bool = False
                  ) -> dict[str, list[Any]]:
    """Each column's values stored in a real SQLite table of those declared types, then
    read back through ``expression(column, sql_column)``, with the Python functions unless
    ``native`` (the ``native`` fixture's value, which decides render's SQL too)."""
    connection = sqlite3.connect(":memory:")
    render.register_functions(connection)
    if not native:
        render.register_python_twins(connection)
    table = SATable("kinds", MetaData(), *(SAColumn(name) for name in values))
    answers: dict[str, list[Any]] = {}
    for name, stored in values.items():
        declared = KINDS[name].declared
        connection.execute(f'CREATE TABLE "k_{name}" (v {declared})')
        connection.executemany(f'INSERT INTO "k_{name}" VALUES (?)', [(v,) for v in stored])
        rendered = expression(KINDS[name], table.c[name])
        if rendered is None:
            answers[name] = [None] * len(stored)
            continue
        compiled = select(rendered).compile(dialect=sqlite.dialect(),
                                            compile_kwargs={"literal_binds": True})
        sql = str(compiled).replace('kinds."' + name + '"', "v").replace(f"kinds.{name}", "v")
        sql = sql.replace("FROM kinds", f'FROM "k_{name}"')
        answers[name] = [row[0] for row in connection.execute(sql + " ORDER BY rowid")]
    connection.close()
    return answers


# Stored values per column, and whether each has its kind's own form (NULL does).
FITS: dict[str, list[tuple[Any, bool]]] = {
    "n": [(1, True), (None, True), (1.5, False), ("abc", False), (b"\x01", False)],
    "f": [(1.5, True), (7, True), ("abc", False), (b"\x01", False)],
    "m": [(3.5, True), (999.99, True), (-999.99, True), (1000.0, False), (12, True),
          (INF, False), ("n/a", False), (b"\x02", False),
          # Around the largest decimal it holds: cleared by a comparison below 999.99, by
          # printf's rounding above it (999.995 is 1000.00, too many digits).
          (999.9899, True), (999.994, True), (-999.994, True), (999.995, False),
          (-999.995, False), (999.999, False)],
    # The decimal point counts in the text's length only where there is one.
    "m0": [(12345, True), (-12345, True), (123456, False), (99999.4, True), (99999.5, False),
           (-99999.5, False)],
    "m1": [(123.4, True), (-123.4, True), (1234.5, False), (999.94, True), (999.96, False)],
    # All digits after the point: the 0 before it is no digit of the precision.
    "m2": [(0.5, True), (-0.99, True), (0.994, True), (0.995, False), (1, False), (0, True)],
    # printf reads an integer as a double: 9999999999999999 becomes 10000000000000000.
    "m16": [(999999999999999, True), (9999999999999998, True), (9999999999999999, False),
            (10**16, False)],
    "m400": [(1.5, True), (-(10**18), True), (INF, False)],  # beyond any double's digits
    "b": [(1, True), (0, True), (2, False), ("yes", False), (0.5, False)],
    "d": [("2024-03-01", True), (20240301, False), ("now", False), (b"\x03", False),
          (b"2024-03-01", False)],  # a BLOB whose bytes look like a date is no date
    "ts": [("2024-03-01 12:00:00", True), (1700000000, False), ("yesterday", False)],
    "tm": [("12:00:00", True), ("12:00", True), (1200, False), ("noon", False)],
    "by": [(b"\x00\xff", True), ("text", False), (5, False)],
    "j": [('{"a": 1}', True), ("[1, 2]", True), ("7", True), ("{oops", False),
          (b"\x04", False)],
}


def test_sqlite_fits_says_which_values_have_their_kinds_form() -> None:
    found = sqlite_values({name: [v for v, _ in cases] for name, cases in FITS.items()},
                          render.sqlite_fits)
    for name, cases in FITS.items():
        assert [bool(answer) for answer in found[name]] == [fits for _, fits in cases], name


def test_sqlite_fits_has_nothing_to_check_for_kinds_whose_every_value_is_text() -> None:
    found = sqlite_values({"t": ["x", 1], "u": ["x", 2.5], "a": [b"\x01"], "x": [1.25]},
                          render.sqlite_fits)
    assert found == {"t": [None, None], "u": [None, None], "a": [None], "x": [None]}


# The text of each value, as CSV has it but never quoted (Parquet's strings): a value that
# fits its kind in the kind's form, one that does not as SQLite stores it.
TEXTS: dict[str, list[tuple[Any, str | None]]] = {
    "n": [(42, "42"), (None, None), (1.5, "1.5"), (0.30000000000000004, "0.30000000000000004"),
          ("a,b", "a,b"), (b"\x00\xff", "AP8="), (-INF, "-Infinity")],
    "f": [(1.5, "1.5"), (100.0, "100"), (1e16, "1e+16"), (0.0, "0"), (INF, "Infinity"),
          (7, "7"), ("x,y", "x,y"), (b"\x01", "AQ==")],
    "m": [(3.5, "3.50"), (12, "12.00"), ("1,5", "1,5"), (0.1 + 0.2, "0.30")],
    "x": [(1.25, "1.25"), (3, "3"), ("n/a", "n/a")],
    "b": [(1, "true"), (0, "false"), (2, "2"), ("yes", "yes"), (0.5, "0.5")],
    "d": [("2024-03-01", "2024-03-01"), ("2024-03-01 10:00:00", "2024-03-01"),
          (20240301, "20240301"), ("now", "now"), ("2024-13-45", "2024-13-45")],
    "ts": [("2024-03-01 12:00:00", "2024-03-01T12:00:00Z"),
           ("2024-03-01T12:00:00+01:00", "2024-03-01T11:00:00Z"),
           ("2024-03-01 12:00:00.999", "2024-03-01T12:00:00Z"), ("12:00", "12:00"),
           (1.25, "1.25")],
    "tm": [("12:00:00.5", "12:00:00"), ("07:30", "07:30:00"), ("noon", "noon")],
    "by": [(b"\x00\xff\x10", "AP8Q"), ("as text", "as text"), (5, "5")],
    "j": [('{"a": 1}', '{"a": 1}'), ("{oops", "{oops"), (7, "7"), (2.5, "2.5"),
          (b"\x04", "BA==")],
    "t": [("a,\"b\"\r\n", "a,\"b\"\r\n"), (b"\x05", "BQ=="), (1.5, "1.5")],
    "u": [("6f1c-x", "6f1c-x"), (5, "5"), (12.5, "12.5"), (b"\x06", "Bg==")],
    "a": [(b"\x07", "Bw=="), (0.1 + 0.2, "0.30000000000000004"), ("q,r", "q,r"), (3, "3"),
          (-0.0, "-0"), (0.0, "0"), (0, "0"), (-2.5, "-2.5")],  # no affinity: -0.0 stays
}


def test_sqlite_text_value_is_each_kinds_form_or_the_stored_value_unquoted(
    native: bool
) -> None:
    found = sqlite_values({name: [v for v, _ in cases] for name, cases in TEXTS.items()},
                          render.sqlite_text_value, native)
    for name, cases in TEXTS.items():
        assert found[name] == [text for _, text in cases], name


# The JSON member of each value (json_object's argument): numbers, booleans and JSON as
# themselves, infinity as PostgreSQL's row_to_json writes it, the rest as strings.
MEMBERS: dict[str, list[tuple[Any, Any]]] = {
    "n": [(42, 42), (0.30000000000000004, 0.30000000000000004), ("a,b", "a,b"),
          (b"\x00\xff", "AP8="), (-INF, "-Infinity")],
    "f": [(1.5, 1.5), (100.0, 100), (INF, "Infinity"), (-INF, "-Infinity"), (7, 7),
          ("abc", "abc")],
    "m": [(3.5, 3.5), (12, 12), ("n/a", "n/a")],
    "b": [(1, True), (0, False), (2, 2), ("yes", "yes")],
    "ts": [("2024-03-01 12:00:00", "2024-03-01T12:00:00Z"), (1.25, 1.25), ("12:00", "12:00")],
    "j": [('{"a": [1, 2]}', {"a": [1, 2]}), ("{oops", "{oops"), (b"\x04", "BA=="), (7, 7),
          (0.30000000000000004, 0.30000000000000004)],  # json() would write 0.3
    "u": [("6f1c-x", "6f1c-x"), (5, 5), (12.5, 12.5), (b"\x06", "Bg==")],
    "t": [("x", "x"), (b"\x05", "BQ==")],
    "a": [(b"\x07", "Bw=="), (0.30000000000000004, 0.30000000000000004), ("q", "q")],
}


def test_sqlite_json_value_is_each_kinds_json_or_the_stored_value(native: bool) -> None:
    def member(column: Column, value: Any) -> Any:
        from sqlalchemy import func
        return func.json_object("v", render.sqlite_json_value(column, value))

    found = sqlite_values({name: [v for v, _ in cases] for name, cases in MEMBERS.items()},
                          member, native)
    for name, cases in MEMBERS.items():
        assert [json.loads(text)["v"] for text in found[name]] == [m for _, m in cases], name


# PostgreSQL: the texts Parquet reads, for the kinds whose text is not PostgreSQL's own.

async def test_postgresql_text_values_of_arrays_json_bytes_and_moments() -> None:
    url = postgres_url().replace("postgresql+asyncpg", "postgresql")
    table = SATable("t", MetaData(), *(SAColumn(name) for name in
                                       ("arr", "j", "jb", "by", "ts", "tz", "f", "d", "tm")))
    columns = {
        "arr": Column("arr", "integer[]", Kind.ARRAY, True),
        "j": Column("j", "json", Kind.JSON, True),
        "jb": Column("jb", "jsonb", Kind.JSON, True),
        "by": Column("by", "bytea", Kind.BYTES, True),
        "ts": Column("ts", "timestamp without time zone", Kind.TIMESTAMP, True),
        "tz": Column("tz", "timestamp with time zone", Kind.TIMESTAMP, True),
        "f": Column("f", "double precision", Kind.FLOAT, True),
        "d": Column("d", "date", Kind.DATE, True),
        "tm": Column("tm", "time without time zone", Kind.TIME, True),
    }
    rendered = select(*(render.pg_text_value(columns[name], table.c[name])
                        for name in columns))
    sql = str(rendered.compile(dialect=postgresql.dialect(),
                               compile_kwargs={"literal_binds": True}))
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "CREATE TEMPORARY TABLE t (arr integer[], j json, jb jsonb, by bytea, "
            "ts timestamp, tz timestamptz, f float8, d date, tm time)")
        await connection.execute(
            "INSERT INTO t VALUES ('{1,NULL,3}', '{\"b\": 1,  \"a\": [1, 2]}', "
            "'{\"b\": 1, \"a\": 2}', '\\x00ff', '2024-03-01 12:00:00.5', "
            "'2024-03-01 13:00:00+01', 'Infinity', '2024-03-01', '07:30:00.5'), "
            "(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
        # A server whose settings are not the defaults: its own text would differ.
        await connection.execute("SET TIME ZONE 'Asia/Tokyo'")
        await connection.execute("SET datestyle = 'SQL, DMY'")
        rows = [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()
    assert rows[0] == ("[1,null,3]", '{"b": 1,  "a": [1, 2]}', '{"a": 2, "b": 1}', "AP8=",
                       "2024-03-01T12:00:00Z", "2024-03-01T12:00:00Z", "Infinity",
                       "2024-03-01", "07:30:00")
    assert rows[1] == (None,) * 9


CSV_TEXTS = ["plain", "a,b", 'say "hi"', "cr\r", "lf\n", "\r\n", " lead", "", "é,\"ü\"",
             '"', ",", "tab\there", "x" * 5000 + ",", "Zoë \"Z\" Town"]


def test_a_csv_text_field_is_what_pythons_csv_writer_writes(native: bool) -> None:
    """Quoted by SQL (instr, replace) where the C++ functions are not installed, by
    exporter_csv_field where they are: the same fields either way."""
    stored = [*CSV_TEXTS, None, 12, 2.5, b"\x01\x02"]
    found = sqlite_values({"t": stored}, lambda c, v: render.sqlite_csv_field(c, v)[1],
                          native)["t"]
    expected = []
    for value in CSV_TEXTS:
        line = io.StringIO()
        # A second field: alone, an empty field is written "" (not an empty line).
        csv.writer(line).writerow([value, "."])  # its line ends in \r\n: CR and LF quote
        expected.append(line.getvalue().removesuffix(",.\r\n"))
    assert found[:len(CSV_TEXTS)] == expected
    assert found[len(CSV_TEXTS):] == [None, "12", "2.5", "AQI="]


TSV_TEXTS = ["plain", "back\\slash", "tab\there", "lf\nline", "cr\r", "bs\b", "ff\f",
             "vt\v", "all\\\t\n\r\b\f\v", "", "é\\\\", '"quoted", comma']


def test_a_tsv_text_field_is_what_postgresqls_copy_writes(native: bool) -> None:
    """Escaped by seven replace() where the C++ functions are not installed, by
    exporter_tsv_field where they are: the same fields either way."""
    stored = [*TSV_TEXTS, None, 12, 2.5]
    found = sqlite_values({"t": stored}, lambda c, v: render.sqlite_tsv_field(c, v), native)
    assert found["t"] == [*(render.tsv_escape(text) for text in TSV_TEXTS), "\\N", "12", "2.5"]


@pytest.mark.parametrize("field", [render.sqlite_csv_field, render.sqlite_tsv_field],
                         ids=["csv", "tsv"])
def test_a_text_holding_a_nul_fails_a_csv_or_tsv_field_rather_than_end_there(
    native: bool, field: Any
) -> None:
    """printf's %s, which puts the line together, would end the text at the NUL (and leave a
    quoted field open): the statement fails instead."""
    def rendered(column: Column, value: Any) -> Any:
        made = field(column, value)
        return made[1] if isinstance(made, tuple) else made

    for text in ("a\x00b", "a\x00,b", '"\x00', "\x00"):
        with pytest.raises(sqlite3.OperationalError) as refused:
            sqlite_values({"t": [text]}, rendered, native)
        if native:
            assert str(refused.value) == render.NUL_REFUSED
    assert sqlite_values({"t": ["a,b"]}, rendered, native)["t"] in (['"a,b"'], ["a,b"])


def test_refuse_nul_fails_naming_the_formats_that_carry_a_nul() -> None:
    with pytest.raises(ValueError, match="a NUL character.*NDJSON, JSON or Parquet"):
        render.refuse_nul("a\x00b")


def test_the_python_twins_replace_the_cpp_functions_of_a_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a process without the C++ gives every connection: SQLite then calls Python for
    each function, with one argument (a value; any number for a row's texts), even where
    the C++ would answer."""
    calls: list[Any] = []
    twin = render.sqlite_base64

    def counted(value: Any) -> Any:
        calls.append(value)
        return twin(value)

    monkeypatch.setattr(render, "sqlite_base64", counted)
    connection = sqlite3.connect(":memory:")
    render.register_python_twins(connection)
    assert connection.execute(f"SELECT {sqlite_functions.BASE64}(x'00ff')").fetchone() == (
        "AP8=",)
    assert calls == [b"\x00\xff"]
    # float.__repr__ refuses an integer, and exporter_refuse_nul always raises: Python's
    # sqlite3 says so in its own words (the C++ float says it takes a REAL).
    for sql in (f"SELECT {sqlite_functions.FLOAT_REPR}(1)",
                f"SELECT {sqlite_functions.REFUSE_NUL}('a')"):
        with pytest.raises(sqlite3.OperationalError, match="user-defined function raised"):
            connection.execute(sql).fetchone()
    assert connection.execute(
        f"SELECT {sqlite_functions.CSV_TEXTS}(NULL, '', 'a', 'say \"hi\", then', 7)"
    ).fetchone() == (',,"",a,"say ""hi"", then",7',)


def test_sqlite_csv_texts_writes_each_value_after_a_comma(native: bool) -> None:
    """Parquet's line of texts, as render's SQL asks for it (the C++ or its twin)."""
    found = sqlite_values({"t": ['a "quoted", text', None, ""]}, lambda c, v: (
        render.sqlite_csv_texts([literal("plain"), literal(None), v, literal("line\nbreak")])
    ), native)["t"]
    assert found == [',plain,,"a ""quoted"", text","line\nbreak"',
                     ',plain,,,"line\nbreak"', ',plain,,"","line\nbreak"']


def test_where_the_cpp_is_installed_a_connection_keeps_it() -> None:
    prepare_sqlite()
    if not sqlite_functions.native_installed():
        pytest.skip("exporter._sqlite_functions did not build (test_sqlite_functions.py "
                    "says why)")
    connection = sqlite3.connect(":memory:")
    render.register_functions(connection)
    with pytest.raises(sqlite3.OperationalError, match="takes a REAL"):
        connection.execute(f"SELECT {sqlite_functions.FLOAT_REPR}(1)").fetchone()
