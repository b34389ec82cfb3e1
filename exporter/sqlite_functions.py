"""The C++ SQL functions SQLite calls while it renders rows: their names, and their
installation into every SQLite connection the process opens from then on.

The functions run for every float, every BLOB, every CSV text field and every date or time
(``exporter_float_repr``, ``exporter_base64``, ``exporter_csv_field``,
``exporter_timestamp`` ...): in C++ (``_sqlite_functions.cpp``, built with the package) they
run without Python's GIL, so that two readers render one export on two cores, and at a
fraction of the CPU that SQL or Python spent on each value. Python's ``sqlite3`` has no call
to add a C function to a connection (and this Python's cannot load extensions), so the C++
entry point goes to SQLite's own ``sqlite3_auto_extension``, through ``ctypes``, which
SQLite then calls for every connection opened afterwards in the process. Where the module
did not build (no C++17 compiler) or SQLite is not reachable that way, ``render.py`` renders
without them: the float and base64 functions in Python (``render.register_functions``),
whose every call takes the GIL, so an export that renders floats or bytes reads on one
reader, as two would only take turns (a 33-column table with 5 floats and a BLOB: 300k CSV
rows in 5.8 s with two readers, 4.1 s with one); CSV's quoting and TSV's escaping in SQL
(``instr`` and ``replace``) and moments by SQLite's date functions alone, slower.

This module imports nothing of the service's but the kinds, so that ``render.py`` can ask
it which SQL to write.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import sqlite3
import threading
from collections.abc import Iterable

from exporter.catalog import Column, Kind

log = logging.getLogger("exporter.sqlite_functions")

FLOAT_TEXT = "exporter_float"  # render.sqlite_float, in Python on every connection
FLOAT_REPR = "exporter_float_repr"  # repr() of a REAL
BASE64 = "exporter_base64"  # base64 of a BLOB, any other value as it is: SQLite has none
CSV_FIELD = "exporter_csv_field"  # a text as csv.writer writes it; C++ only
TSV_FIELD = "exporter_tsv_field"  # a text as PostgreSQL's text COPY writes it; C++ only
CSV_TEXTS = "exporter_csv_texts"  # a row's texts as a CSV line that tells '' from NULL
REFUSE_NUL = "exporter_refuse_nul"  # fails the statement: a text holds a NUL; Python only
# The plain forms of a moment as strftime(TIMESTAMP_FORMAT), date() and time() write them,
# NULL for any other form; C++ only.
TIMESTAMP_TEXT = "exporter_timestamp"
DATE_TEXT = "exporter_date"
TIME_TEXT = "exporter_time"
# Every function _sqlite_functions.cpp gives a connection (its exporter_sqlite_init).
NATIVE_FUNCTIONS = (FLOAT_REPR, BASE64, CSV_FIELD, TSV_FIELD, CSV_TEXTS, TIMESTAMP_TEXT,
                    DATE_TEXT, TIME_TEXT)
NATIVE_MODULE = "exporter._sqlite_functions"
NATIVE_ENTRY_POINT = "exporter_sqlite_init"  # in _sqlite_functions.cpp
# Kinds whose every value SQLite renders by a call of FLOAT_REPR or BASE64.
CALLED_FOR_EVERY_VALUE = frozenset({Kind.FLOAT, Kind.BYTES})

_installing = threading.Lock()
_native: bool | None = None  # None: not tried yet in this process


def install_native() -> bool:
    """Give every SQLite connection opened from now on in this process the C++ functions,
    once per process. Returns whether they are installed. ``db.prepare_sqlite`` calls it
    after ``db.uncount_sqlite_memory``, which shuts SQLite down, forgetting them."""
    global _native
    with _installing:
        if _native is None:
            _native = _install_native()
        return _native


def _install_native() -> bool:
    try:
        module = importlib.import_module(NATIVE_MODULE)
    except ImportError as error:
        log.warning("SQLite renders floats and bytes in Python, on one reader: %s did not "
                    "build (%s); a C++17 compiler and SQLite's headers at install build it",
                    NATIVE_MODULE, error)
        return False
    try:
        entry = getattr(ctypes.CDLL(module.__file__), NATIVE_ENTRY_POINT)
        # The library Python's sqlite3 is linked to, whichever it is: its own handle finds
        # the symbol in it (or in the module itself, where SQLite is built in and exported).
        sqlite = ctypes.CDLL(importlib.import_module("_sqlite3").__file__)
        register = sqlite.sqlite3_auto_extension
    except (OSError, AttributeError) as error:
        log.warning("SQLite renders floats and bytes in Python, on one reader: its "
                    "sqlite3_auto_extension is out of reach (%s)", error)
        return False
    register.argtypes = [ctypes.c_void_p]
    if register(ctypes.cast(entry, ctypes.c_void_p)) != 0:
        log.warning("SQLite refused the C++ functions: floats and bytes render in Python")
        return False
    # Seen from a connection of Python's own: the library reached may not be the one it
    # uses, or may have no extension API (the entry point then adds nothing).
    probe = sqlite3.connect(":memory:")
    try:
        # Each of them (a module built from an older source may lack one).
        probe.execute(f"SELECT {', '.join(f'{name}(NULL)' for name in NATIVE_FUNCTIONS)}"
                      ).fetchall()
    except sqlite3.OperationalError as error:
        sqlite.sqlite3_cancel_auto_extension.argtypes = [ctypes.c_void_p]
        sqlite.sqlite3_cancel_auto_extension(ctypes.cast(entry, ctypes.c_void_p))
        log.warning("SQLite renders floats and bytes in Python, on one reader: the C++ "
                    "functions did not reach Python's connections (%s)", error)
        return False
    finally:
        probe.close()
    return True


def native_installed() -> bool:
    """Whether connections opened now get the C++ functions."""
    return bool(_native)


def calls_python(columns: Iterable[Column]) -> bool:
    """Whether SQLite calls into Python for every value of one of these columns: two
    readers would then take turns for the GIL."""
    return not native_installed() and any(
        column.kind in CALLED_FOR_EVERY_VALUE for column in columns
    )
