"""The text formats on their own (exporter/formats: csv, tsv, ndjson, json, base and the
registry): the bytes a user gets of a document, made from its rows as each backend hands
them over, checked against Python's csv and json modules, in milliseconds and mostly without
a database.

A format frames blocks of whole rows into one document, as ``export_chunks`` (streaming.py)
calls it: ``begin()``, ``frame(block)`` for each block, ``end()``, then ``close()``. SQLite's
blocks are rows the database rendered, joined by the format's ``separator`` and followed by
its ``terminator`` (cursors.py); PostgreSQL's are COPY's output chunks, each made final by
``copy_rows`` and gathered by ``copy_join`` (pg_copy.py). The same rows must give the same
document either way, and it must read back, through Python's csv and json modules, as those
rows. The exports' tests (test_exports, test_foreign, test_tsv, test_pg_copy) check the same
documents through whole exports; these are the fast first line of the mutation run of the
formats (tests/mutation.py).

The COPY chunks here are written out as PostgreSQL writes them; one test asks PostgreSQL
(with ``EXPORTER_TEST_DATABASE_URL``; skipped without it) that they are, and one runs a real
SQLite export through ``export_chunks``.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from starlette.responses import StreamingResponse

from exporter.catalog import Column, Kind, reflect
from exporter.db import create_engine
from exporter.errors import NotFound
from exporter.formats import (
    BY_EXTENSION,
    FORMATS,
    Block,
    Csv,
    Format,
    JsonArray,
    Ndjson,
    Options,
    Parquet,
    Tsv,
)
from exporter.formats.base import DEFAULT_OPTIONS
from exporter.pipeline import export_chunks
from exporter.routes.exports import split_export_name
from tests.conftest import postgres_url, query_for

TEXT_FORMATS: list[type[Format]] = [Csv, Tsv, Ndjson, JsonArray]

# --- The rows, as the oracle knows them ------------------------------------------------------

# Names CSV must quote (a comma, a quote, a line feed) and TSV must escape (a tab, a
# backslash, a line feed).
FIELDS = ("id", "name, as given", 'the "bio"', "tab\there", "back\\slash\nline")
Row = tuple[int, str | None, str | None, str | None, str | None]
ROWS: list[Row] = [
    # CRLF and quotes inside a quoted field; an empty string and a NULL.
    (1, 'Zoë "Zee" O\'Brien, Jr.', 'Line one\r\nLine "two", with comma\tand tab', "", None),
    # A lone LF; COPY's own NULL marker as text; CSV's COPY row end (formats/csv.py) as a value;
    # U+2028, which str.splitlines() would take for a line end.
    (2, "王伟 🚀\u2028", "ends with LF\n", "\\N", ',"\r"\n'),
    # Backslashes, which COPY's text format doubles; COPY's end-of-data marker; a lone CR as
    # the last value, just before CSV's row-end column.
    (3, "back\\slash", "\\.", " padded ", "\r"),
]
COLUMNS = [Column("id", "INTEGER", Kind.INTEGER, False),
           *(Column(name, "TEXT", Kind.TEXT, True) for name in FIELDS[1:])]

# PostgreSQL's text COPY escapes, spelled by the test (as test_tsv.py does), not the service.
COPY_TEXT = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b",
                           "\f": "\\f", "\v": "\\v"})


def csv_line(values: Sequence[object]) -> str:
    """A row as csv.writer writes it, without its line end: SQLite's CSV shape. (With CRLF
    as its line end: csv.writer quotes a CR or LF only when it is in the line end.)"""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(values)
    return out.getvalue().removesuffix("\r\n")


def json_object(row: Row) -> str:
    """A row as the database renders it for NDJSON and JSON: one compact object."""
    return json.dumps(dict(zip(FIELDS, row, strict=True)), ensure_ascii=False,
                      separators=(",", ":"))


def tsv_line(values: Sequence[object]) -> str:
    """A row as PostgreSQL's text COPY writes it, without its line end: SQLite's TSV shape."""
    return "\t".join("\\N" if value is None else str(value).translate(COPY_TEXT)
                     for value in values)


# What SQLite renders each row as, per format (queries.Shape): one text per row.
RENDERED: dict[type[Format], list[str]] = {
    Csv: [csv_line(row) for row in ROWS],
    Tsv: [tsv_line(row) for row in ROWS],
    Ndjson: [json_object(row) for row in ROWS],
    JsonArray: [json_object(row) for row in ROWS],
}

# What PostgreSQL's COPY writes for the same rows, as pg_copy.py asks for them.
# CSV: one column per field (an empty string rendered as NULL, render.pg_csv_value, so that
# COPY writes nothing, as csv.writer does), and the lone-CR column that ends every row.
COPY_CSV = (
    '1,"Zoë ""Zee"" O\'Brien, Jr.","Line one\r\nLine ""two"", with comma\tand tab",,,"\r"\n'
    '2,王伟 🚀\u2028,"ends with LF\n",\\N,",""\r""\n","\r"\n'
    '3,back\\slash,\\., padded ,"\r","\r"\n'
).encode()
# NDJSON and JSON: the object as one text column, which the text COPY escapes; JSON has
# already escaped every control character, so what COPY adds is a doubled backslash.
COPY_JSON = "".join(json_object(row).translate(COPY_TEXT) + "\n" for row in ROWS).encode()
# TSV: one column per field, each value's text, escaped by COPY itself: the TSV lines as
# they are.
COPY_TSV = "".join(tsv_line(row) + "\n" for row in ROWS).encode()
COPY_CHUNKS: dict[type[Format], bytes] = {
    Csv: COPY_CSV, Tsv: COPY_TSV, Ndjson: COPY_JSON, JsonArray: COPY_JSON,
}


def expected_document(fmt: type[Format], rows: Sequence[Row]) -> bytes:
    """The document a user should get, by Python's own writers."""
    if fmt is Csv:
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows([FIELDS, *rows])
        return out.getvalue().encode()
    if fmt is Tsv:
        return "".join(tsv_line(values) + "\n" for values in [FIELDS, *rows]).encode()
    objects = [json_object(row) for row in rows]
    if fmt is Ndjson:
        return "".join(line + "\n" for line in objects).encode()
    return ("[\n" + ",\n".join(objects) + "\n]\n" if objects else "[]\n").encode()


def read_back(fmt: type[Format], document: bytes) -> list[list[Any]]:
    """A document's rows as Python's csv and json modules read them (the header first for
    CSV and TSV), each as a list of its values."""
    text = document.decode()
    if fmt is Csv:
        return [list(row) for row in csv.reader(io.StringIO(text, newline=""))]
    if fmt is Tsv:
        assert text.endswith("\n")
        return [[unescape(field) for field in line.split("\t")]
                for line in text[:-1].split("\n")]
    if fmt is Ndjson:
        assert text == "" or text.endswith("\n")
        # Not splitlines(): U+2028 is in a value.
        objects = [json.loads(line, object_pairs_hook=list) for line in text.split("\n")[:-1]]
    else:
        objects = json.loads(text, object_pairs_hook=list)
    for pairs in objects:
        assert [name for name, _ in pairs] == list(FIELDS)
    return [[value for _, value in pairs] for pairs in objects]


def unescape(field: str) -> str | None:
    """A TSV field as PostgreSQL's text COPY reads it back."""
    if field == "\\N":
        return None
    letters = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}
    out, chars = [], iter(field)
    for char in chars:
        out.append(letters[next(chars)] if char == "\\" else char)
    return "".join(out)


def as_read(fmt: type[Format], row: Row) -> list[Any]:
    """A row as ``read_back`` should find it: CSV holds texts, and no NULL apart from ''."""
    if fmt is Csv:
        return ["" if value is None else str(value) for value in row]
    if fmt is Tsv:
        return [None if value is None else str(value) for value in row]
    return list(row)


# --- Framing, as export_chunks drives a format ----------------------------------------------

async def document(fmt: Format, blocks: Iterable[bytes]) -> bytes:
    """What export_chunks sends for these blocks: begin, each block framed, end; then close."""
    out = [fmt.begin()]
    try:
        for block in blocks:
            out.append(await fmt.frame(block))
        out.append(await fmt.end())
    finally:
        await fmt.close()
    return b"".join(out)


def sqlite_block(fmt: type[Format], rows: Sequence[str]) -> bytes:
    """A batch of rendered rows as cursors.py makes it a block."""
    return fmt.separator.join(row.encode() for row in rows) + fmt.terminator


def copy_block(fmt: type[Format], chunks: Sequence[bytes]) -> Block:
    """COPY chunks as pg_copy.CopyOut makes them a block: each checked to end at a row end,
    made final by ``copy_rows``, the block's parts joined by ``copy_join``."""
    rows, parts = 0, []
    for chunk in chunks:
        assert chunk.endswith(fmt.copy_row_end)
        count, data = fmt.copy_rows(chunk)
        rows += count
        parts.append(data)
    return rows, fmt.copy_join(parts)


def copy_lines(fmt: type[Format]) -> list[bytes]:
    """COPY's output for ROWS, one row each."""
    chunk, end = COPY_CHUNKS[fmt], fmt.copy_row_end
    return [line + end for line in chunk.split(end)[:-1]]


# Ways an export's rows are cut into blocks (batches, or COPY chunks gathered), by row index.
CUTS = [[[0, 1, 2]], [[0], [1], [2]], [[0], [1, 2]], [[0, 1], [2]]]


@pytest.mark.parametrize("cuts", CUTS, ids=str)
@pytest.mark.parametrize("fmt", TEXT_FORMATS, ids=lambda fmt: fmt.name)
async def test_sqlite_batches_frame_into_a_document_python_reads_back_as_the_rows(
    fmt: type[Format], cuts: list[list[int]]
) -> None:
    blocks = [sqlite_block(fmt, [RENDERED[fmt][i] for i in cut]) for cut in cuts]
    got = await document(fmt(COLUMNS), blocks)
    assert got == expected_document(fmt, ROWS)
    header = [list(FIELDS)] if fmt in (Csv, Tsv) else []
    assert read_back(fmt, got) == header + [as_read(fmt, row) for row in ROWS]


@pytest.mark.parametrize("cuts", CUTS, ids=str)
@pytest.mark.parametrize("fmt", TEXT_FORMATS, ids=lambda fmt: fmt.name)
async def test_copy_chunks_frame_into_the_same_document_and_count_their_rows(
    fmt: type[Format], cuts: list[list[int]]
) -> None:
    """Each block as CopyOut gathers it: some chunks of whole rows (one row each, or several
    in one chunk), each made final, then joined."""
    lines = copy_lines(fmt)
    single = [copy_block(fmt, [lines[i] for i in cut]) for cut in cuts]  # a chunk a row
    gathered = [copy_block(fmt, [b"".join(lines[i] for i in cut)]) for cut in cuts]
    for blocks in (single, gathered):
        assert [rows for rows, _ in blocks] == [len(cut) for cut in cuts]
        assert await document(fmt(COLUMNS), [data for _, data in blocks]) == (
            expected_document(fmt, ROWS))


@pytest.mark.parametrize("fmt", TEXT_FORMATS, ids=lambda fmt: fmt.name)
async def test_an_export_of_no_rows_is_still_a_whole_document(fmt: type[Format]) -> None:
    """No blocks at all (a COPY of no rows gives none, pg_copy.py): the header alone, an
    empty NDJSON body, an empty JSON array."""
    got = await document(fmt(COLUMNS), [])
    assert got == {
        Csv: b'id,"name, as given","the ""bio""",tab\there,"back\\slash\nline"\r\n',
        Tsv: b"id\tname, as given\tthe \"bio\"\ttab\\there\tback\\\\slash\\nline\n",
        Ndjson: b"",
        JsonArray: b"[]\n",
    }[fmt]
    assert got == expected_document(fmt, [])
    assert read_back(fmt, got) == ([list(FIELDS)] if fmt in (Csv, Tsv) else [])


@pytest.mark.parametrize(("fields", "header"), [
    pytest.param(["id"], b"id\r\n", id="one"),
    pytest.param(["id", "email"], b"id,email\r\n", id="two"),
    # Quoted only where RFC 4180 needs it: a comma, a quote (doubled), CR or LF; a space
    # or a non-ASCII letter needs none.
    pytest.param(["a,b", 'say "hi"', "cr\r", "lf\n", " spaced ", "Straße"],
                 '"a,b","say ""hi""","cr\r","lf\n", spaced ,Straße\r\n'.encode(), id="awkward"),
])
def test_the_csv_header_is_the_field_names_quoted_as_csv_requires(
    fields: list[str], header: bytes
) -> None:
    columns = [Column(name, "TEXT", Kind.TEXT, True) for name in fields]
    assert Csv(columns).begin() == header
    assert next(csv.reader(io.StringIO(header.decode(), newline=""))) == fields


def test_the_tsv_header_is_the_field_names_escaped_as_postgresql_copy_escapes() -> None:
    names = ["id", "a\\b", "tab\t", "lf\n", "cr\r", "\b\f\v", "\\N", "Straße"]
    header = Tsv([Column(name, "TEXT", Kind.TEXT, True) for name in names]).begin()
    assert header == b"id\ta\\\\b\ttab\\t\tlf\\n\tcr\\r\t\\b\\f\\v\t\\\\N\tStra\xc3\x9fe\n"
    assert [unescape(field) for field in header.decode()[:-1].split("\t")] == names


async def test_a_json_array_skips_an_empty_block_without_a_stray_comma() -> None:
    """frame() of an empty block adds nothing, before or between rows: the array stays
    valid, and the first row still opens it on a line of its own."""
    objects = [json_object(row).encode() for row in ROWS[:2]]
    assert await document(JsonArray(COLUMNS), [b""]) == b"[]\n"
    got = await document(JsonArray(COLUMNS), [b"", objects[0], b"", objects[1], b""])
    assert got == b"[\n" + objects[0] + b",\n" + objects[1] + b"\n]\n"
    assert json.loads(got) == [dict(zip(FIELDS, row, strict=True)) for row in ROWS[:2]]


async def test_each_json_array_export_frames_afresh() -> None:
    """Framing state belongs to one export (one instance), never to the class."""
    first = JsonArray(COLUMNS)
    assert await document(first, [json_object(ROWS[0]).encode()]) == (
        expected_document(JsonArray, ROWS[:1]))
    assert await document(JsonArray(COLUMNS), []) == b"[]\n"


# --- COPY's output, one format at a time ----------------------------------------------------

# Named ids: pytest writes a bytes value's \r and \n escaped in its id, and mutmut's clean
# run, which names each test on the command line, could not find such a test again.
@pytest.mark.parametrize(("fmt", "chunk", "rows", "final"), [
    # CSV: the lone-CR column and LF give way to CRLF; a quoted CRLF, LF or ',"\r"\n' stays.
    pytest.param(Csv, b'1,"a\r\nb","\r"\n', 1, b'1,"a\r\nb"\r\n', id="csv-quoted-crlf"),
    pytest.param(Csv, b'1,x,"\r"\n2,",""\r""\n","\r"\n', 2, b'1,x\r\n2,",""\r""\n"\r\n',
                 id="csv-two-rows-quoted-lf"),
    pytest.param(Csv, b'"\r","\r"\n', 1, b'"\r"\r\n', id="csv-quoted-cr"),
    # A lone '' (render.pg_csv_value), as csv.writer has it.
    pytest.param(Csv, b'"","\r"\n', 1, b'""\r\n', id="csv-empty-text"),
    pytest.param(Csv, COPY_CSV, 3, expected_document(Csv, ROWS).split(b"\r\n", 1)[1],
                 id="csv-hostile-rows"),
    # NDJSON: every backslash COPY doubled is single again; the rows are the lines.
    pytest.param(Ndjson, rb'{"a":"x\\"y\\\\z\\n"}' + b"\n", 1, rb'{"a":"x\"y\\z\n"}' + b"\n",
                 id="ndjson-backslashes"),
    pytest.param(Ndjson, b'{"a":1}\n{"a":2}\n', 2, b'{"a":1}\n{"a":2}\n', id="ndjson-two-rows"),
    pytest.param(Ndjson, COPY_JSON, 3, expected_document(Ndjson, ROWS), id="ndjson-hostile-rows"),
    # TSV: COPY's text is TSV's; a line feed in a value is written \n, so lines are rows.
    pytest.param(Tsv, b"1\ta\\nb\t\\N\n2\t\\\\\t\n", 2, b"1\ta\\nb\t\\N\n2\t\\\\\t\n",
                 id="tsv-escapes"),
    pytest.param(Tsv, COPY_TSV, 3, expected_document(Tsv, ROWS).split(b"\n", 1)[1],
                 id="tsv-hostile-rows"),
])
def test_copy_rows_counts_a_chunks_rows_and_makes_its_bytes_final(
    fmt: type[Format], chunk: bytes, rows: int, final: bytes
) -> None:
    assert chunk.endswith(fmt.copy_row_end)
    assert fmt.copy_rows(chunk) == (rows, final)


def test_json_copy_rows_are_ndjsons_and_copy_join_makes_them_array_elements() -> None:
    """The array's rows come from COPY as NDJSON's do; joining the chunks of a block makes
    them elements: ',\\n' between rows, across chunks too, and none after the last."""
    assert JsonArray.copy_rows is Ndjson.copy_rows
    assert JsonArray.copy_join([b'{"a":1}\n{"a":2}\n', b'{"a":3}\n']) == (
        b'{"a":1},\n{"a":2},\n{"a":3}')
    assert JsonArray.copy_join([b'{"a":1}\n']) == b'{"a":1}'
    # The other formats' rows are whole lines already: joined as they are.
    for fmt in (Csv, Tsv, Ndjson):
        assert fmt.copy_join([b"1,x\r\n", b"2,y\r\n3,z\r\n"]) == b"1,x\r\n2,y\r\n3,z\r\n"


def test_a_format_without_copy_rows_says_so() -> None:
    with pytest.raises(NotImplementedError):
        Format.copy_rows(b"1\n")


async def test_the_copy_chunks_here_are_what_postgresql_writes() -> None:
    """COPY_CSV, COPY_JSON and COPY_TSV are PostgreSQL's COPY of the same values, asked for
    as each format asks (its ``copy_format``), each chunk ending in its ``copy_row_end``."""
    connection = await asyncpg.connect(postgres_url().replace("postgresql+asyncpg",
                                                              "postgresql"))
    objects: list[list[str | None]] = [[json_object(row)] for row in ROWS]
    cases: list[tuple[type[Format], list[list[str | None]], str]] = [
        # render.pg_csv_value makes an empty string NULL; E'\r' ends every row.
        (Csv, [[None if value in ("", None) else str(value) for value in row] for row in ROWS],
         "SELECT *, E'\\r' FROM unnest({arrays}) AS t"),
        (Ndjson, objects, "SELECT * FROM unnest({arrays}) AS t"),
        (JsonArray, objects, "SELECT * FROM unnest({arrays}) AS t"),
        (Tsv, [[None if value is None else str(value) for value in row] for row in ROWS],
         "SELECT * FROM unnest({arrays}) AS t"),
    ]
    try:
        for fmt, rows, statement in cases:
            by_column = list(zip(*rows, strict=True))
            arrays = ", ".join(f"${i}::text[]" for i in range(1, len(by_column) + 1))
            chunks: list[bytes] = []

            async def sink(chunk: bytes, chunks: list[bytes] = chunks) -> None:
                chunks.append(chunk)

            await connection.copy_from_query(statement.format(arrays=arrays),
                                             *map(list, by_column), output=sink,
                                             format=fmt.copy_format)
            assert all(chunk.endswith(fmt.copy_row_end) for chunk in chunks), fmt.name
            assert b"".join(chunks) == COPY_CHUNKS[fmt], fmt.name
    finally:
        await connection.close()


# --- One real export ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROWS in a SQLite table whose column names are FIELDS."""
    path = tmp_path_factory.mktemp("formats") / "formats.db"
    quoted = [f'"{name.replace(chr(34), chr(34) * 2)}"' for name in FIELDS]
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(f"CREATE TABLE people ({quoted[0]} INTEGER PRIMARY KEY, "
                               + ", ".join(f"{name} TEXT" for name in quoted[1:]) + ")")
            connection.executemany("INSERT INTO people VALUES (?, ?, ?, ?, ?)", ROWS)
    finally:
        connection.close()
    return path


@pytest.mark.parametrize("fmt", TEXT_FORMATS, ids=lambda fmt: fmt.name)
async def test_a_sqlite_export_through_export_chunks_gives_the_document(
    sqlite_path: Path, fmt: type[Format]
) -> None:
    """The framing above as pipeline.export_chunks really drives it, over SQLite's real
    batches (one row each, so that blocks are framed after the first)."""
    engine = create_engine(f"sqlite+aiosqlite:///{sqlite_path}",
                           state_path=sqlite_path.with_suffix(".state"))
    try:
        async with engine.connect() as conn:
            [table] = [table for table in await reflect(conn) if table.name == "people"]
        chunks = export_chunks(engine, query_for(table), fmt, batch_rows=1, chunk_bytes=1)
        assert b"".join([chunk async for chunk in chunks]) == expected_document(fmt, ROWS)
    finally:
        await engine.dispose()


# --- What the HTTP API says of each format --------------------------------------------------

@pytest.mark.parametrize(("name", "content_type", "compressible"), [
    ("csv", "text/csv; charset=utf-8", True),
    ("tsv", "text/tab-separated-values; charset=utf-8", True),
    ("ndjson", "application/x-ndjson", True),
    ("json", "application/json", True),
    # Compressed inside: gzip on the wire would only cost CPU.
    ("parquet", "application/vnd.apache.parquet", False),
])
def test_each_format_is_found_by_name_and_extension_and_served_as_its_media_type(
    name: str, content_type: str, compressible: bool
) -> None:
    fmt = FORMATS[name]
    assert fmt.name == fmt.extension == name
    assert BY_EXTENSION[name] is fmt
    assert split_export_name(f"my.users.{name}") == ("my.users", fmt)
    # The Content-Type of an export (a Starlette response, which would add a charset to a
    # text/ type without one) and of a job's file (files.py sends the media type as it is).
    response = StreamingResponse(iter(()), media_type=fmt.media_type)
    assert response.headers["content-type"] == fmt.media_type == content_type
    assert fmt.compressible is compressible
    assert fmt.compressions == (() if compressible else ("zstd", "snappy", "gzip", "none"))


def test_the_registry_holds_the_five_formats_and_nothing_else() -> None:
    assert list(FORMATS) == ["csv", "tsv", "ndjson", "json", "parquet"]
    assert list(FORMATS.values()) == [Csv, Tsv, Ndjson, JsonArray, Parquet]
    assert list(BY_EXTENSION) == list(FORMATS)
    for unknown in ("xlsx", "CSV", "jsonl", ""):
        assert unknown not in FORMATS and unknown not in BY_EXTENSION
    for name in ("users.xlsx", "users.CSV", "users", "users.csv.gz"):
        with pytest.raises(NotFound) as caught:
            split_export_name(name)
        assert caught.value.details["valid"] == ["csv", "tsv", "ndjson", "json", "parquet"]
        assert ".csv, .tsv, .ndjson, .json, .parquet" in caught.value.message


@pytest.mark.parametrize("fmt", TEXT_FORMATS, ids=lambda fmt: fmt.name)
def test_a_format_keeps_its_columns_field_names_and_options(fmt: type[Format]) -> None:
    options = Options(compression="none", row_group_bytes=1)
    encoder = fmt(tuple(COLUMNS), options)  # any sequence: kept as a list
    assert encoder.columns == COLUMNS and encoder.fields == list(FIELDS)
    assert encoder.options is options
    assert fmt(COLUMNS).options is DEFAULT_OPTIONS
