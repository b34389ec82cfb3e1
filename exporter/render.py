"""Each kind of column in its final text, rendered by the database, the same on both backends.

The database renders every row in its final form in C, outside Python's GIL: on SQLite a
CSV line (one ``printf``) or a JSON object (``json_object``); on PostgreSQL the columns that
``COPY ... (FORMAT csv)`` writes, or a ``row_to_json`` object. This module holds, for each
kind (catalog.Kind), the SQL that gives its text, so that both backends give the same bytes:

- floats: the shortest text that reads back to the same double, in PostgreSQL's notation
  (``39.81``, ``100``, ``1e+16``, ``1e-05``, ``5e-324``: exponent below -4 or from 15 up).
  PostgreSQL's own output is that; SQLite's printf and its reading of text are not
  correctly rounded (1 double in 200 came out wrong, some as another double), so SQLite
  calls Python's ``repr`` (``exporter_float``, a function each connection gets, db.py);
- numerics with a declared scale: that many decimals (SQLite stores them as REAL);
- timestamps: ``2024-03-01T12:00:00Z``, in UTC, to the second; a timestamp without a time
  zone is taken as UTC; dates ``2024-03-01``; times ``12:00:00`` (to the second);
- booleans ``true``/``false``; bytes base64; PostgreSQL arrays JSON arrays;
- JSON embedded as JSON in the JSON formats, its text in CSV.

SQLite lets any column hold any value. A value that does not fit its column's kind (a TEXT
in an INTEGER column, a date that does not parse) is exported as it is stored, a string in
JSON and a quoted field in CSV where it needs quotes: never a wrong number, never a crash.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    Interval,
    String,
    Text,
    Time,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSON

from exporter import sqlite_functions
from exporter.catalog import Column, Kind
from exporter.sqlite_functions import (
    BASE64,
    CSV_FIELD,
    CSV_TEXTS,
    DATE_TEXT,
    FLOAT_REPR,
    FLOAT_TEXT,
    REFUSE_NUL,
    TIME_TEXT,
    TIMESTAMP_TEXT,
    TSV_FIELD,
)

SQL = ColumnElement[Any]
CSV_SPECIALS = ('"', ",", "\r", "\n")  # a field holding any of these is quoted (RFC 4180)
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
EXACT_DOUBLE_DIGITS = 15  # every whole number of this many digits is a double exactly
PG_TIMESTAMP_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS"Z"'
# A JSON string (kept) or whitespace between tokens (dropped), in PostgreSQL's regex syntax.
JSON_WHITESPACE = r'("(?:[^"\\]|\\.)*")|[ \t\n\r]+'
LARGEST_DOUBLE = 1.7976931348623157e308  # beyond: infinity, which JSON has no number for


def register_functions(dbapi_connection: Any) -> None:
    """Give a SQLite connection the Python functions its rendering calls: ``sqlite_float``
    always (its rare values), and, where the C++ functions are not installed, the Python
    twins of the float and base64 ones (sqlite_functions.py)."""
    dbapi_connection.create_function(FLOAT_TEXT, 1, sqlite_float, deterministic=True)
    if not sqlite_functions.native_installed():
        register_python_twins(dbapi_connection)


def register_python_twins(dbapi_connection: Any) -> None:
    """The C++ float and base64 functions in Python (replacing them where installed), and
    what the SQL written without the C++ calls on a text holding a NUL."""
    dbapi_connection.create_function(BASE64, 1, sqlite_base64, deterministic=True)
    dbapi_connection.create_function(CSV_TEXTS, -1, csv_texts, deterministic=True)
    dbapi_connection.create_function(REFUSE_NUL, 1, refuse_nul, deterministic=True)
    # repr(), for a REAL that is not whole and below POSITIONAL_BELOW: its text is then
    # PostgreSQL's. SQLite's own float text is not correctly rounded.
    dbapi_connection.create_function(FLOAT_REPR, 1, float.__repr__, deterministic=True)


# SQLite keeps a NUL inside a text; its CSV and TSV lines are put together by printf's %s,
# which would end the text there (and leave a quoted field open): such an export fails
# instead (the C++ functions say the same).
NUL_REFUSED = ("a text holds a NUL character, which CSV and TSV cannot carry here: export "
               "it as NDJSON, JSON or Parquet, or leave that row out with a filter")


def refuse_nul(_value: Any) -> None:
    """SQLite's ``exporter_refuse_nul``: fails the statement (Python's sqlite3 reports it as
    "user-defined function raised exception"; the C++ functions' message is this one)."""
    raise ValueError(NUL_REFUSED)


def _holds_nul(value: SQL) -> SQL:
    return type_coerce(func.instr(value, func.char(0)), Boolean)


def csv_texts(*texts: str | None) -> str:
    """SQLite's ``exporter_csv_texts``: a row's texts as CSV fields for Arrow's reader
    (Parquet), each after a comma, NULL as nothing and an empty text quoted, so that the
    two read apart (_sqlite_functions.cpp says why the comma comes first)."""
    return "".join("," if text is None else "," + _csv_text(str(text)) for text in texts)


def _csv_text(text: str) -> str:
    if text and not any(special in text for special in CSV_SPECIALS):
        return text
    return '"' + text.replace('"', '""') + '"'


def sqlite_base64(value: bytes | None) -> str | None:
    """SQLite's ``exporter_base64``: bytes as base64 text (what PostgreSQL's ``encode``
    writes, less its line breaks); any other value as it is."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def sqlite_float(value: float | None) -> str | None:
    """SQLite's ``exporter_float``: a number as the shortest text that reads back to the
    same double (``repr``'s digits), written as PostgreSQL writes float8. SQLite's own
    printf is not correctly rounded: 1.7976931348623157e+308 came out ...56e+308, which
    reads back as another double."""
    if value is None:
        return None
    if -POSITIONAL_BELOW < value < POSITIONAL_BELOW:  # the common case, cheap: no Decimal
        text = repr(value)  # PostgreSQL's notation already, less a trailing ".0"
        return text[:-2] if text.endswith(".0") else text
    number = float(value)
    if not math.isfinite(number):
        return PG_NON_FINITE[repr(number)]
    # From 1e15 up PostgreSQL writes an exponent, whatever the digits.
    digits = Decimal(_shortest_inside(number)).normalize()
    mantissa, exponent = format(digits, "e").split("e")
    return f"{mantissa}e{exponent[0]}{exponent[1:].zfill(2)}"  # e+16, e-05: two digits


PG_NON_FINITE = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}
# Below 1e15 repr writes what PostgreSQL writes: positional from 1e-4 up, else e-05 (two
# exponent digits at least, as PostgreSQL), and repr's digits are PostgreSQL's, since no
# halfway case lies below 2**53. From 1e15, PostgreSQL switches to an exponent, repr at 1e16.
POSITIONAL_BELOW = 1e15
EXACT_INTEGERS = 2.0**53  # below, no halfway point between two doubles is a short decimal


def _shortest_inside(number: float) -> str:
    """``repr``'s digits, unless they lie exactly halfway to the next double (1e23 does:
    reading it rounds to even). PostgreSQL's float8 output takes the shortest digits
    strictly between the halfway points (9.999999999999999e+22), and so do we, for the
    same bytes on both backends."""
    text = repr(number)
    if abs(number) < EXACT_INTEGERS:
        return text
    neighbours = (math.nextafter(number, -math.inf), math.nextafter(number, math.inf))
    halfway = {(Fraction(number) + Fraction(n)) / 2 for n in neighbours if math.isfinite(n)}
    if Fraction(text) not in halfway:
        return text
    for places in range(16):  # correctly rounded, one more significant digit each time
        candidate = f"{number:.{places}e}"
        if float(candidate) == number and Fraction(candidate) not in halfway:
            return candidate
    return f"{number:.16e}"


def _text(value: SQL) -> SQL:
    return type_coerce(value, String)


# --- SQLite ---------------------------------------------------------------------------------


def _typeof(column: SQL) -> SQL:
    return func.typeof(column)


DECIMAL_DIGITS = 38  # decimal128's, for a numeric declared without a precision


def _sqlite_float(column: SQL) -> SQL:
    """A number (REAL or INTEGER) as ``sqlite_float`` writes it, with that Python function
    called only for the rare values SQLite's own arithmetic and ``repr`` cannot do (from
    1e15 up): the common values take ``repr`` (``FLOAT_REPR``, in C++ where built; else
    the builtin ``float.__repr__``, 0.34 µs a call against 0.75 for ``sqlite_float``), or,
    when whole, SQLite's integer text. Zero is "0", or "-0" for a REAL -0.0 (which SQLite
    keeps in a column without affinity), told apart by its repr: SQLite's printf drops
    the sign. 1.8M zeros through ``sqlite_float`` cost 1.3 s of a 3 s export."""
    return _text(case(
        # Not abs(): it overflows on the smallest 64-bit integer.
        (or_(column >= POSITIONAL_BELOW, column <= -POSITIONAL_BELOW),
         getattr(func, FLOAT_TEXT)(column)),
        # CASE tries its branches in order: repr is only called with a REAL.
        (column == 0, case((_typeof(column) != "real", "0"),
                           (getattr(func, FLOAT_REPR)(column) == "-0.0", "-0"),
                           else_="0")),
        (column == cast(column, Integer), func.printf("%d", column)),
        else_=getattr(func, FLOAT_REPR)(column),
    ))


def _json_float(column: SQL) -> SQL:
    """A float as a JSON number; infinity, which JSON has none for, as the string
    "Infinity", as PostgreSQL's row_to_json writes it (SQLite holds no NaN)."""
    return case((func.abs(column) <= LARGEST_DOUBLE, func.json(_sqlite_float(column))),
                else_=_sqlite_float(column))


def _quoted(value: SQL) -> SQL:
    """A CSV field as csv.writer writes it: quoted only when it holds a special. In C++
    where installed, one pass over the text: 1M users' six text fields in 0.57 s of SQLite's
    CPU, against 1.24 s for these four instr and a replace (0.31 s as they are)."""
    if sqlite_functions.native_installed():
        return _text(getattr(func, CSV_FIELD)(value))
    needs = or_(*(type_coerce(func.instr(value, s), Boolean) for s in CSV_SPECIALS))
    quoted = literal('"') + func.replace(value, '"', '""') + literal('"')
    return _text(case((_holds_nul(value), getattr(func, REFUSE_NUL)(value)), (needs, quoted),
                      else_=value))


def _unquoted(value: SQL) -> SQL:
    return value


Quote = Callable[[SQL], SQL]


def _as_stored(column: SQL, quoted: Quote, blob: Quote) -> SQL:
    """A value that does not fit its kind, as SQLite holds it."""
    return _text(case(
        (_typeof(column) == "real", _sqlite_float(column)),
        (_typeof(column) == "blob", blob(column)),
        (_typeof(column) == "text", quoted(column)),
        else_=column,
    ))


def _base64(column: SQL) -> SQL:
    return _text(getattr(func, BASE64)(column))


def _numeric_format(scale: int) -> str:
    return f"%.{scale}f"


def sqlite_csv_field(column: Column, value: SQL) -> tuple[str, SQL]:
    """``(printf format, argument)`` for one field of SQLite's CSV line; ``%s`` writes NULL
    as nothing."""
    return "%s", _sqlite_text(column, value, _quoted)


def sqlite_text_value(column: Column, value: SQL) -> SQL:
    """One value's text as CSV has it, unquoted; NULL stays NULL (Parquet reads it)."""
    return cast(_sqlite_text(column, value, _unquoted), Text)  # a number too: its text


def sqlite_csv_texts(texts: Sequence[SQL]) -> SQL:
    """Values' texts (``sqlite_text_value``) as CSV fields for Parquet's reading, each after
    a comma, an empty text (quoted) apart from NULL (nothing): in C++ where installed, else
    in Python (``csv_texts``)."""
    return _text(getattr(func, CSV_TEXTS)(*texts))


def sqlite_tsv_field(column: Column, value: SQL) -> SQL:
    """One field of SQLite's TSV line: the value's text as CSV has it, escaped as
    PostgreSQL's text COPY escapes, bytes as its hex bytea (so that ``\\copy ... from``
    reads them back as bytes), NULL as ``\\N``."""
    return func.coalesce(_text(_sqlite_text(column, value, _tsv_escaped, _bytea_hex)),
                         TSV_NULL)


# PostgreSQL's text COPY: a backslash (first, or it would escape the others' own), and the
# six control characters it spells; any other character goes out as it is.
TSV_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"),
               ("\b", "\\b"), ("\f", "\\f"), ("\v", "\\v"))
TSV_NULL = "\\N"


def tsv_escape(text: str) -> str:
    """A text as PostgreSQL's text COPY writes it (a TSV header's names)."""
    for char, escaped in TSV_ESCAPES:
        text = text.replace(char, escaped)
    return text


def _tsv_escaped(value: SQL) -> SQL:
    if sqlite_functions.native_installed():  # one pass in C++, and a NUL refused there
        return _text(getattr(func, TSV_FIELD)(value))
    escaped = value
    for char, spelled in TSV_ESCAPES:
        escaped = func.replace(escaped, char, spelled)
    return _text(case((_holds_nul(value), getattr(func, REFUSE_NUL)(value)), else_=escaped))


def _bytea_hex(value: SQL) -> SQL:
    """Bytes as PostgreSQL's bytea hex text, its backslash escaped for TSV: ``\\\\x00ff``."""
    return _text(literal("\\\\x") + func.lower(func.hex(value)))


def _sqlite_text(column: Column, value: SQL, quoted: Quote, blob: Quote = _base64) -> SQL:
    kind = column.kind
    stored = _as_stored(value, quoted, blob)
    if kind is Kind.TEXT:  # its affinity turns numbers into text, but keeps a BLOB a BLOB
        return case((_typeof(value) == "blob", blob(value)), else_=quoted(value))
    if kind is Kind.UUID or kind is Kind.JSON:  # numeric affinity: numbers stay numbers
        return case((_typeof(value) == "text", quoted(value)), else_=stored)
    if kind is Kind.INTEGER:
        return case((_typeof(value) == "integer", value), else_=stored)
    if kind is Kind.FLOAT:
        return case((_typeof(value).in_(("real", "integer")), _sqlite_float(value)),
                    else_=stored)
    if kind is Kind.NUMERIC and column.scale is not None:
        return case((_typeof(value).in_(("real", "integer")),
                     func.printf(_numeric_format(column.scale), value)), else_=stored)
    if kind is Kind.BOOLEAN:
        return case((value == 1, "true"), (value == 0, "false"), else_=stored)
    if kind in (Kind.TIMESTAMP, Kind.DATE, Kind.TIME):
        rendered = _sqlite_moment(kind, value)
        return case((_typeof(value) == "text", func.coalesce(rendered, quoted(value))),
                    else_=stored)
    return stored  # BYTES, ANY, NUMERIC without a scale


def sqlite_fits(column: Column, value: SQL) -> SQL | None:
    """Whether a value has its kind's own form (NULL does), so that a typed column can hold
    it: SQLite lets a column hold anything. None for kinds whose every value is text."""
    kind = column.kind
    if kind is Kind.INTEGER:
        fits = _typeof(value) == "integer"
    elif kind is Kind.FLOAT:
        fits = _typeof(value).in_(("real", "integer"))
    elif kind is Kind.NUMERIC and column.scale is not None:
        # SQLite keeps no precision: 1234.5 in a NUMERIC(5,2) column, or an infinity, fits
        # no decimal of that precision. Counted on the text it renders as (999.995: 1000.00),
        # its sign and leading zeros left out (0.50 has the two digits of a NUMERIC(2,2)).
        digits = column.precision or DECIMAL_DIGITS
        text = func.ltrim(func.printf(_numeric_format(column.scale), value), "-0")
        fits = and_(func.abs(value) <= LARGEST_DOUBLE,
                    func.length(text) <= digits + (column.scale > 0))
        if 0 <= column.scale <= digits <= column.scale + EXACT_DOUBLE_DIGITS:
            # Most values lie well inside the precision: below the largest decimal it holds,
            # less one step, none rounds up out of it, and a comparison clears them where
            # printf would cost most of the scan (1M users: 0.92 s -> 0.56 s). Only where a
            # double holds every such number exactly: printf reads an integer as a double,
            # which rounds 9999999999999999 up to 17 digits, too many for a NUMERIC(16,0).
            inside = 10.0 ** (digits - column.scale) - 10.0 ** -column.scale
            fits = or_(func.abs(value) < inside, fits)
        fits = and_(_typeof(value).in_(("real", "integer")), fits)
    elif kind is Kind.BOOLEAN:
        fits = value.in_((0, 1))
    elif kind in (Kind.TIMESTAMP, Kind.DATE, Kind.TIME):
        # Its shape only: parsing every value too would double the scan's cost (1M users:
        # 0.35 s against 0.85). A text of the shape that is no date ('2024-13-45') is then
        # refused when it is converted (formats/parquet.py), never written wrong.
        fits = and_(_typeof(value) == "text", value.like(MOMENT_LOOKS[kind]))
    elif kind is Kind.BYTES:
        fits = _typeof(value) == "blob"
    elif kind is Kind.JSON:  # Parquet's JSON type: readers refuse a text that is no JSON
        fits = and_(_typeof(value) != "blob", func.json_valid(value) == 1)
    else:
        return None
    return or_(value.is_(None), fits)


# SQLite's date functions also read 'now' (the current time), a time alone ('12:00' is
# 2000-01-01) and a number (a Julian day): text that does not have the column's shape is
# exported as stored. LIKE's `_` takes any character, so 'abcd-ef-gh' passes, but the date
# function gives NULL for it and the value is then exported as stored all the same; LIKE
# costs a third of GLOB's digit classes (100k timestamps: 50 ms against 64, strftime 45).
MOMENT_LOOKS = {Kind.TIMESTAMP: "____-__-__%", Kind.DATE: "____-__-__%", Kind.TIME: "%__:__%"}


def _sqlite_moment(kind: Kind, value: SQL) -> SQL:
    rendered: SQL
    if kind is Kind.TIMESTAMP:
        rendered, plain = func.strftime(TIMESTAMP_FORMAT, value), TIMESTAMP_TEXT
    elif kind is Kind.DATE:
        rendered, plain = func.date(value), DATE_TEXT
    else:
        rendered, plain = func.time(value), TIME_TEXT
    # SQLite's date functions (and LIKE) read a text up to a NUL in it: '2024-01-01\0x'
    # would be written 2024-01-01. Such a text goes as stored instead, and CSV and TSV
    # refuse it (NUL_REFUSED).
    rendered = case((~_holds_nul(value), rendered))
    if sqlite_functions.native_installed():
        # The plain forms in C++ (`exporter export` of 1M users, two timestamps: CSV 2.4 ->
        # 2.2 s, Parquet 4.1 -> 3.4 s; of wide, with two dates, two timestamps and a time,
        # CSV 4.9 -> 3.8 s), which reads the whole text; any other form gives NULL there,
        # and coalesce only then goes on to SQLite's function.
        rendered = func.coalesce(getattr(func, plain)(value), rendered)
    return case((value.like(MOMENT_LOOKS[kind]), rendered))


def sqlite_json_value(column: Column, value: SQL) -> SQL:
    """One member's value for SQLite's ``json_object``: numbers and booleans as JSON
    (``json()``), text as strings; what does not fit its kind as stored."""
    kind = column.kind
    as_stored = case(
        (_typeof(value) == "real", _json_float(value)),
        (_typeof(value) == "blob", _base64(value)),
        else_=value,
    )
    if kind is Kind.TEXT:  # a BLOB would make json_object fail the export
        return case((_typeof(value) == "blob", _base64(value)), else_=value)
    if kind in (Kind.UUID, Kind.INTEGER):
        fits = "text" if kind is Kind.UUID else "integer"
        return case((_typeof(value) == fits, value), else_=as_stored)
    if kind is Kind.FLOAT:
        return case((_typeof(value).in_(("real", "integer")), _json_float(value)),
                    else_=as_stored)
    if kind is Kind.NUMERIC and column.scale is not None:
        return case((_typeof(value).in_(("real", "integer")),
                     func.json(func.printf(_numeric_format(column.scale), value))),
                    else_=as_stored)
    if kind is Kind.BOOLEAN:
        return case((value == 1, func.json("true")), (value == 0, func.json("false")),
                    else_=as_stored)
    if kind in (Kind.TIMESTAMP, Kind.DATE, Kind.TIME):
        return case((_typeof(value) == "text", func.coalesce(_sqlite_moment(kind, value), value)),
                    else_=as_stored)
    if kind is Kind.JSON:
        # Text that is JSON, as JSON; a number stored as one goes as a number would (json()
        # would write a REAL with SQLite's 15 digits: 0.30000000000000004 as 0.3), a BLOB
        # as base64 (SQLite 3.45's json_valid would read it as JSONB).
        return case((and_(_typeof(value) == "text", func.json_valid(value) == 1),
                     func.json(value)), else_=as_stored)
    return as_stored  # BYTES, ANY, NUMERIC without a scale


# --- PostgreSQL -----------------------------------------------------------------------------


def _pg_timestamp(column: Column, value: SQL) -> SQL:
    if "with time zone" in column.declared or column.declared == "timestamptz":
        value = func.timezone("UTC", value)
    return _finite(func.to_char(value, PG_TIMESTAMP_FORMAT), value)


def _finite(rendered: SQL, value: SQL) -> SQL:
    """to_char gives NULL for 'infinity' and '-infinity', which would export a value as
    NULL: those go out as PostgreSQL writes them."""
    return func.coalesce(rendered, cast(value, Text))


def _pg_rendered(column: Column, value: SQL) -> SQL | None:
    """The text of kinds PostgreSQL would write otherwise than our rendering, in both
    shapes; None where its own output (or row_to_json's) is already ours."""
    kind = column.kind
    if kind is Kind.TIMESTAMP:
        return _pg_timestamp(column, value)
    if kind is Kind.DATE:
        return _finite(func.to_char(value, "YYYY-MM-DD"), value)
    if kind is Kind.TIME:  # to_char takes no time: as an interval, to the second
        return func.to_char(cast(cast(value, Time()), Interval()), "HH24:MI:SS")
    if kind is Kind.BYTES:
        return func.translate(func.encode(value, "base64"), "\n", "")
    return None


def pg_csv_value(column: Column, value: SQL, alone: bool) -> SQL:
    """One column of PostgreSQL's CSV COPY: text where COPY would write it otherwise than
    csv.writer (booleans, empty strings: see pg_copy.py)."""
    rendered = _pg_rendered(column, value)
    kind = column.kind
    if rendered is not None:
        # Empty bytes are '' in base64, which COPY writes as "" (see below).
        result = func.nullif(rendered, "") if kind is Kind.BYTES else rendered
    elif kind is Kind.BOOLEAN:
        result = case((value, "true"), (~value, "false"))
    elif kind is Kind.ARRAY:
        result = cast(func.array_to_json(value), Text)
    elif kind in (Kind.TEXT, Kind.ANY, Kind.JSON, Kind.UUID):
        # COPY writes '' as "" to tell it from NULL; csv.writer writes nothing.
        result = func.nullif(cast(value, Text), "")
    else:
        result = value
    if alone:  # csv.writer writes a lone empty field as "": COPY quotes a lone ''
        return func.coalesce(cast(result, Text), "")
    return result


def pg_text_value(column: Column, value: SQL) -> SQL:
    """One value's text as CSV has it, unquoted, empty strings kept (Parquet reads it)."""
    rendered = _pg_rendered(column, value)
    if rendered is not None:
        return rendered
    if column.kind is Kind.BOOLEAN:
        return case((value, "true"), (~value, "false"))
    if column.kind is Kind.ARRAY:
        return cast(func.array_to_json(value), Text)
    return cast(value, Text)


def pg_tsv_value(column: Column, value: SQL) -> SQL:
    """One column of PostgreSQL's text COPY for TSV, which escapes it: the text CSV has,
    but bytes as bytea's hex and arrays as PostgreSQL's own literal, which COPY reads back."""
    if column.kind is Kind.BYTES:
        return literal("\\x") + func.encode(value, "hex")
    if column.kind is Kind.ARRAY:
        return cast(value, Text)
    return pg_text_value(column, value)


def pg_json_value(column: Column, value: SQL) -> SQL:
    """One member's value for PostgreSQL's ``row_to_json``, which renders numbers,
    booleans, JSON, UUIDs and arrays as ours already."""
    rendered = _pg_rendered(column, value)
    if rendered is not None:
        return rendered
    if column.kind is Kind.JSON:
        # row_to_json embeds a json value's text as the user wrote it, line breaks and all
        # (one NDJSON row over several lines), and jsonb's with a space after each , and :.
        # SQLite's json() drops the whitespace between tokens: so here, strings kept whole.
        compact = func.regexp_replace(cast(value, Text), JSON_WHITESPACE, r"\1", "g")
        return cast(compact, JSON)
    return value

