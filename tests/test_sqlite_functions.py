"""The C++ SQLite functions (exporter/_sqlite_functions.cpp) against their Python twins,
Python's own repr() and base64, on connections opened the way the service opens them.

Every export in the suite renders through the C++ functions where they built; these tests
hold them to the Python oracle value by value, on more doubles and bytes than any export
carries, and say loudly when the module did not build where it could have."""

from __future__ import annotations

import base64
import importlib
import math
import random
import shutil
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter import render, sqlite_functions
from exporter.db import prepare_sqlite
from tests.conftest import csv_records
from tests.test_foreign import random_doubles


@pytest.fixture(scope="module")
def native() -> Iterator[sqlite3.Connection]:
    """A connection with the C++ functions, as every connection of the service gets them."""
    prepare_sqlite()
    if not sqlite_functions.native_installed():
        if shutil.which("g++") or shutil.which("c++"):
            pytest.fail("a C++ compiler is here but exporter._sqlite_functions is not "
                        "installed: reinstall the package (pip install -e .) and read its "
                        "build output (it needs SQLite's headers too: sqlite3ext.h, Debian's "
                        "libsqlite3-dev)")
        pytest.skip("no C++ compiler: exporter._sqlite_functions did not build, and SQLite "
                    "renders floats and bytes in Python (slower, same bytes)")
    # pip builds the module optionally: a C++ change that no longer compiles leaves the last
    # build in place, which these tests would then check instead.
    built = Path(importlib.import_module(sqlite_functions.NATIVE_MODULE).__file__ or "")
    source = Path(render.__file__).with_name("_sqlite_functions.cpp")
    if source.exists() and built.parent == source.parent:  # an editable install
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built.name} is older than {source.name}: reinstall (pip install -e .); if it "
            "stays older, the C++ does not compile (pip -v shows why)")
    connection = sqlite3.connect(":memory:")
    yield connection
    connection.close()


def python_twins() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    render.register_python_twins(connection)
    return connection


def rendered(connection: sqlite3.Connection, function: str, values: list[Any]
             ) -> tuple[list[Any], list[str]]:
    """Each value through ``function`` in SQLite: its results and their SQLite types."""
    connection.execute("DROP TABLE IF EXISTS v")
    connection.execute("CREATE TABLE v (x)")  # no affinity: every value stays as given
    connection.executemany("INSERT INTO v VALUES (?)", [(value,) for value in values])
    rows = connection.execute(
        f"SELECT {function}(x), typeof({function}(x)) FROM v ORDER BY rowid").fetchall()
    return [row[0] for row in rows], [row[1] for row in rows]


def doubles() -> list[float]:
    """Random bit patterns, every decimal exponent, round decimals, the edges of repr's
    notation (1e-4 and 1e16) and their neighbours."""
    generator = random.Random(7)
    values = random_doubles(20000, seed=7)
    values += [struct.unpack("<d", generator.getrandbits(64).to_bytes(8, "little"))[0]
               for _ in range(100000)]
    values += [generator.uniform(1, 10) * 10.0 ** exponent for exponent in range(-325, 309)
               for _ in range(20)]
    for edge in (1e-4, 1e16, 1e-5, 1e15, 0.1, 1.0, 5e-324, 1.7976931348623157e308):
        values += [edge, math.nextafter(edge, 0), math.nextafter(edge, math.inf)]
    values += [-value for value in values[:1000]] + [-0.0, 0.0, 2.0**53, 2.0**53 + 2]
    values += [math.inf, -math.inf]  # repr's 'inf' (SQLite keeps no NaN: it stores NULL)
    return [value for value in values if not math.isnan(value)]


def test_the_cpp_float_is_pythons_repr_on_every_double(native: sqlite3.Connection) -> None:
    values = doubles()
    texts, types = rendered(native, sqlite_functions.FLOAT_REPR, values)
    assert set(types) == {"text"}
    mismatches = [(value, text) for value, text in zip(values, texts, strict=True)
                  if text != repr(value)]
    assert mismatches == [], f"{len(mismatches)} of {len(values)}: {mismatches[:5]}"
    assert rendered(python_twins(), sqlite_functions.FLOAT_REPR, values[:5000])[0] == texts[:5000]


def test_the_cpp_float_refuses_what_float_repr_refuses(native: sqlite3.Connection) -> None:
    for value in (1, "1.5", b"\x00"):
        for connection in (native, python_twins()):
            with pytest.raises(sqlite3.OperationalError):
                connection.execute(f"SELECT {sqlite_functions.FLOAT_REPR}(?)", (value,)).fetchall()
    assert native.execute(f"SELECT {sqlite_functions.FLOAT_REPR}(NULL)").fetchall() == [(None,)]


def test_the_cpp_base64_is_pythons_and_leaves_other_values_as_they_are(
    native: sqlite3.Connection
) -> None:
    generator = random.Random(11)
    blobs = [generator.randbytes(size) for size in range(0, 70) for _ in range(30)]
    blobs += [generator.randbytes(generator.randrange(100_000, 300_000)) for _ in range(3)]
    others: list[Any] = ["text", "", "é", 0, -7, 1.5, None]
    values: list[Any] = [*blobs, *others]
    texts, types = rendered(native, sqlite_functions.BASE64, values)
    assert texts == [*(base64.b64encode(blob).decode("ascii") for blob in blobs), *others]
    assert types[-len(others):] == ["text", "text", "text", "integer", "integer", "real",
                                    "null"]
    assert rendered(python_twins(), sqlite_functions.BASE64, values) == (texts, types)


def test_csv_records_reads_quoted_empty_apart_from_null() -> None:
    assert csv_records('a,"",\n,"x""y","1,\n2"\n\n') == [
        ["a", "", None], [None, 'x"y', "1,\n2"], [None]]


CSV_TEXTS = ["plain", "", "\ufeffbom", "a,b", 'say "hi"', '"', '""', "cr\r", "lf\n", "\r\n",
             " lead ", "nul\x00inside", "\x00", "é,ü 王伟 🚀", "\u2028", "\\.", ",", 'end"',
             "tab\t"]


def test_the_cpp_csv_texts_line_reads_back_to_each_text_and_null_as_the_python_twins(
    native: sqlite3.Connection
) -> None:
    """Parquet's rows: every text comes back from the line as it was (a NUL too), NULL as
    NULL, a number as its text, after an empty first field (a lone NULL is no empty line);
    rows of one value, of many, and of as many as a call takes (queries.SQLITE_ARGUMENTS)."""
    generator = random.Random(5)
    values: list[Any] = [*CSV_TEXTS, None, 12, -7]
    rows = [[value] for value in values] + [values]
    rows += [[generator.choice(values) for _ in range(generator.randrange(2, 100))]
             for _ in range(300)]
    function = sqlite_functions.CSV_TEXTS
    for connection in (native, python_twins()):
        for row in rows:
            [(line,)] = connection.execute(
                f"SELECT {function}({', '.join('?' * len(row))})", row).fetchall()
            assert csv_records(line + "\n") == [  # after an empty first field
                [None, *(None if value is None else str(value) for value in row)]], (row, line)
    [(native_line,)] = native.execute(f"SELECT {function}({', '.join('?' * len(values))})",
                                      values).fetchall()
    [(twin_line,)] = python_twins().execute(
        f"SELECT {function}({', '.join('?' * len(values))})", values).fetchall()
    assert native_line == twin_line


def moment_texts() -> list[str]:
    """Plain forms (valid, and valid-looking but not: 02-29 of a common year, 24:00, :60),
    forms only SQLite's functions read (zones, Julian days, 'now', spaces), and random
    digits in the plain shapes."""
    generator = random.Random(5)
    texts = ["2024-02-29", "2023-02-29", "2024-02-30", "2023-12-31 23:59:59", "0001-01-01",
             "0000-01-01", "9999-12-31T23:59:59", "2024-03-01 24:00:00", "2024-03-01 12:60",
             "2024-03-01 12:00:60", "2024-03-01 12:00:59.9994", "2024-03-01 12:00:59.9995",
             "2024-03-01 12:00:59.999", "2024-03-01 12:00:59.99999999", "2024-03-01 12:00:00.",
             "2024-03-01 12:00:00.5Z", "2024-03-01T12:00:00+01:00", "2024-03-01  12:00",
             "2024-03-01 12:00:00 ", " 2024-03-01", "2024-03-01x", "2460000.5", "now",
             "12:00", "12:00:00", "23:59:59.999", "07:30:00.9996", "24:00", "9:00", "12:00 ",
             "2024-3-01", "2024-03-1", "abcd-ef-gh", "", "2024-13-01", "2024-00-10",
             "1900-02-29", "2000-02-29", "2100-02-29", "2024-04-31", "2024-06-30 00:00",
             "12:00:00." + "1" * 20, "12:00:00." + "1" * 21, "12:00:00." + "1" * 310,
             "2024-03-01 23:59:00." + "1" * 400]  # SQLite: a fraction past 308 digits is NULL
    for _ in range(20000):
        year, month, day = generator.randrange(0, 10000), generator.randrange(0, 14), \
            generator.randrange(0, 33)
        hour, minute, second = generator.randrange(0, 26), generator.randrange(0, 62), \
            generator.randrange(0, 62)
        date = f"{year:04d}-{month:02d}-{day:02d}"
        time = f"{hour:02d}:{minute:02d}"
        fraction = "." + str(generator.randrange(10 ** 7)).zfill(generator.randrange(1, 8))
        texts += [date, f"{date} {time}", f"{date}T{time}:{second:02d}",
                  f"{date} {time}:{second:02d}{fraction}", time, f"{time}:{second:02d}",
                  f"{time}:{second:02d}{fraction}"]
    return texts


@pytest.mark.parametrize(("function", "sqlites"), [
    (sqlite_functions.TIMESTAMP_TEXT, f"strftime('{render.TIMESTAMP_FORMAT}', x)"),
    (sqlite_functions.DATE_TEXT, "date(x)"),
    (sqlite_functions.TIME_TEXT, "time(x)"),
])
def test_a_cpp_moment_is_sqlites_own_text_or_left_to_sqlite(
    native: sqlite3.Connection, function: str, sqlites: str
) -> None:
    """What the C++ writes, SQLite's function writes for the same text; what it leaves
    (NULL), SQLite's function reads (render.py calls it then)."""
    texts = moment_texts()
    native.execute("DROP TABLE IF EXISTS m")
    native.execute("CREATE TABLE m (x TEXT)")
    native.executemany("INSERT INTO m VALUES (?)", [(text,) for text in texts])
    rows = native.execute(f"SELECT x, {function}(x), {sqlites} FROM m ORDER BY rowid").fetchall()
    differ = [(text, ours, theirs) for text, ours, theirs in rows
              if ours is not None and ours != theirs]
    assert differ == []
    taken = {text for text, ours, _ in rows if ours is not None}
    plain = ({"12:00", "12:00:00", "23:59:59.999"} if function == sqlite_functions.TIME_TEXT
             else {"2024-02-29", "2023-12-31 23:59:59", "9999-12-31T23:59:59", "0001-01-01",
                   "2024-03-01 12:00:59.999", "2000-02-29", "2024-06-30 00:00"})
    assert plain <= taken, sorted(plain - taken)
    assert len(taken) > 10000  # the plain forms are the C++ function's, not SQLite's
    for left in ("2023-02-29", "2024-03-01 24:00:00", "2024-03-01 12:00:59.9995",
                 "2024-03-01T12:00:00+01:00", "now", "2024-02-30", "12:00:00." + "1" * 21):
        assert left not in taken
