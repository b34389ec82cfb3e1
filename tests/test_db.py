"""db.py's process-wide SQLite switch: SQLite's memory count goes off only when that cannot
break a connection. Each case runs in a fresh interpreter, as the switch is once per
process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="libsqlite3.so.0 is Linux's")

MEMORY_USED = """
import ctypes, sqlite3
from exporter.db import uncount_sqlite_memory
library = ctypes.CDLL("libsqlite3.so.0")
library.sqlite3_memory_used.restype = ctypes.c_int64
"""


def run(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_USED + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_sqlite_stops_counting_memory_when_no_connection_is_open() -> None:
    switched, used, rows = run("""
        switched = uncount_sqlite_memory()
        conn = sqlite3.connect(":memory:")
        conn.execute("create table t (x)")
        conn.executemany("insert into t values (?)", [("x" * 1000,)] * 1000)
        rows = conn.execute("select count(*) from t").fetchone()[0]
        print(switched, library.sqlite3_memory_used(), rows)
    """)
    assert (switched, used, rows) == ("True", "0", "1000")


def test_an_open_connection_keeps_the_count_on_and_keeps_working() -> None:
    switched, again, used, rows = run("""
        conn = sqlite3.connect(":memory:")
        conn.execute("create table t (x)")
        switched = uncount_sqlite_memory()
        conn.execute("insert into t values (1)")
        again = uncount_sqlite_memory()  # tried once per process: no shutdown later either
        print(switched, again, library.sqlite3_memory_used() > 0,
              conn.execute("select count(*) from t").fetchone()[0])
    """)
    assert (switched, again, used, rows) == ("False", "False", "True", "1")
