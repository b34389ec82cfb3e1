"""Parquet exports of tables the project did not create: read by pyarrow, polars and DuckDB,
typed by each column's kind, holding the NDJSON export's values, on both backends."""
# ruff: noqa: F811  (the fixtures of test_foreign.py, imported, are the tests' arguments)

from __future__ import annotations

import base64
import io
import json
import sqlite3
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import httpx
import polars
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.app import create_app
from exporter.catalog import Column, Kind
from exporter.formats.arrow import arrow_type
from tests.conftest import Database
from tests.test_foreign import (  # noqa: F401
    Foreign,
    exported_specs,
    exporter_migrate,
    foreign,
    postgres_foreign,
    sqlite_foreign,
)

PARQUET = "application/vnd.apache.parquet"
TYPES = {
    "integer": pa.int64(), "float": pa.float64(), "boolean": pa.bool_(), "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"), "time": pa.time64("us"), "bytes": pa.binary(),
    "text": pa.string(), "uuid": pa.string(), "any": pa.string(),
}


def expected_type(column: dict[str, Any]) -> pa.DataType:
    kind = column["kind"]
    if kind == "numeric":
        scale = int(column["type"].rstrip(")").split(",")[1])
        precision = int(column["type"].split("(")[1].split(",")[0])
        return pa.decimal128(precision, scale)
    if kind in ("json", "array"):
        return pa.json_(pa.string()) if hasattr(pa, "json_") else pa.string()
    return TYPES[kind]


def as_ndjson(value: Any) -> Any:
    """A Parquet value as the NDJSON export writes it."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def as_float(value: Any) -> Any:
    """NDJSON's float as the double it reads back as (infinity is a string in JSON)."""
    return None if value is None else float(value)


def ndjson_rows(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line, parse_float=Decimal) for line in data.splitlines()]


async def described(foreign: Foreign, table: str) -> dict[str, Any]:
    found: dict[str, Any] = (await foreign.get(f"/tables/{quote(table)}")).json()
    return found


TABLES = ["users", "kinds", "memberships", "log_lines", "Order Items", "active_users", "wide",
          "doubles", "pg_extras"]


@pytest.mark.parametrize("table", TABLES)
async def test_every_table_is_typed_by_kind_and_holds_the_ndjson_exports_values(
    foreign: Foreign, table: str
) -> None:
    if table not in {spec.name for spec in exported_specs(foreign.backend)}:
        pytest.skip(f"{table} is not a table on {foreign.backend}")
    response = await foreign.get(f"/exports/{quote(table)}.parquet")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == PARQUET
    assert '.parquet"' in response.headers["content-disposition"]
    parquet = pq.read_table(io.BytesIO(response.content))
    columns = (await described(foreign, table))["columns"]
    assert parquet.schema.names == [column["name"] for column in columns]
    for column in columns:
        assert parquet.schema.field(column["name"]).type == expected_type(column), column
    ndjson = await foreign.body(f"/exports/{quote(table)}.ndjson")
    assert_same_values(parquet, ndjson, columns)


def assert_same_values(parquet: pa.Table, ndjson: bytes, columns: list[dict[str, Any]]
                       ) -> None:
    """The Parquet file's rows are the NDJSON export's, value for value."""
    json_columns = {c["name"] for c in columns if c["kind"] in ("json", "array")}
    float_columns = {c["name"] for c in columns if c["kind"] == "float"}
    got = [{name: json.loads(value, parse_float=Decimal)
            if name in json_columns and value is not None else as_ndjson(value)
            for name, value in row.items()} for row in parquet.to_pylist()]
    expected = [{name: as_float(value) if name in float_columns else value
                 for name, value in row.items()} for row in ndjson_rows(ndjson)]
    assert got == expected


async def test_every_column_alone_holds_the_ndjson_exports_values(foreign: Foreign) -> None:
    """A lone field is where a line of texts is most fragile: a row whose only value is
    NULL was an empty line, which Arrow's reader skipped (the row lost), and a text that
    starts with U+FEFF (kinds' first label) lost it at the start of a row group."""
    for spec in exported_specs(foreign.backend):
        if spec.name in ("active_users", "wide"):  # the view's and wide's columns: elsewhere
            continue
        columns = (await described(foreign, spec.name))["columns"]
        for column in columns:
            path, fields = f"/exports/{quote(spec.name)}", column["name"]
            parquet = pq.read_table(io.BytesIO(await foreign.body(f"{path}.parquet",
                                                                  fields=fields)))
            assert parquet.num_rows == len(spec.rows), (spec.name, fields)
            assert_same_values(parquet, await foreign.body(f"{path}.ndjson", fields=fields),
                               [column])


@pytest.mark.parametrize("table", TABLES)
async def test_polars_and_duckdb_read_the_same_rows(
    foreign: Foreign, table: str, tmp_path: Path
) -> None:
    if table not in {spec.name for spec in exported_specs(foreign.backend)}:
        pytest.skip(f"{table} is not a table on {foreign.backend}")
    data = await foreign.body(f"/exports/{quote(table)}.parquet")
    arrow = pq.read_table(io.BytesIO(data))
    rows = arrow.num_rows
    frame = polars.read_parquet(io.BytesIO(data))
    assert frame.height == rows > 0
    assert frame.columns == arrow.schema.names
    assert frame.to_dicts() == arrow.to_pylist()  # polars' own reader, the same values
    path = tmp_path / "export.parquet"
    path.write_bytes(data)
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall() == [(rows,)]
    if table == "kinds":  # typed as pyarrow reads them
        kinds = {name: kind for name, kind, *_ in duckdb.sql(
            f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()}
        assert kinds["big"] == "BIGINT" and kinds["ratio"] == "DOUBLE"
        assert kinds["price"] == "DECIMAL(12,2)" and kinds["flag"] == "BOOLEAN"
        assert kinds["day"] == "DATE" and kinds["at_utc"] == "TIMESTAMP WITH TIME ZONE"
        assert kinds["clock"] == "TIME" and kinds["raw"] == "BLOB"
        assert frame.schema["at_utc"] == polars.Datetime("us", "UTC")


async def test_a_body_cut_short_opens_in_no_reader(foreign: Foreign, tmp_path: Path) -> None:
    data = await foreign.body("/exports/kinds.parquet")
    path = tmp_path / "cut.parquet"
    for cut in (len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(pa.ArrowInvalid):
            pq.read_table(path)
        with pytest.raises(polars.exceptions.PolarsError):
            polars.read_parquet(path)
        with pytest.raises(duckdb.Error):
            duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()


async def test_parquet_is_never_gzipped_on_the_wire(foreign: Foreign) -> None:
    response = await foreign.client.get("/exports/kinds.parquet",
                                        headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.content[:4] == response.content[-4:] == b"PAR1"


async def test_filters_fields_and_an_empty_export_give_valid_files(foreign: Foreign) -> None:
    data = await foreign.body("/exports/kinds.parquet", fields="label,id", limit="3")
    table = pq.read_table(io.BytesIO(data))
    assert table.schema.names == ["label", "id"] and table.num_rows == 3
    empty = pq.read_table(io.BytesIO(await foreign.body("/exports/kinds.parquet", limit="0")))
    assert empty.num_rows == 0 and empty.schema.field("id").type == pa.int64()


async def test_a_sqlite_column_holding_other_kinds_is_written_as_text(
    sqlite_foreign: Foreign,
) -> None:
    """SQLite lets a column hold any value: such a column becomes strings, each value's
    text as CSV has it, so that nothing is lost and the type says what it holds."""
    data = await sqlite_foreign.body("/exports/misfits.parquet")
    table = pq.read_table(io.BytesIO(data))
    assert table.schema.field("id").type == pa.int64()  # only integers: still typed
    typed_kinds = ("n", "f", "b", "d", "ts", "m")  # each holds a value of another kind
    assert [table.schema.field(name).type for name in typed_kinds] == [pa.string()] * 6
    assert table.column("n").to_pylist() == [
        "abc", base64.b64encode(b"\x00\xff").decode(), "1.5", "9", None, "a,b", "-Infinity"]
    typed = pq.read_table(io.BytesIO(await sqlite_foreign.body(
        "/exports/misfits.parquet", fields="id,d", id="4")))
    assert typed.schema.field("d").type == pa.date32()  # row 4 alone holds a date: typed


async def test_infinite_postgresql_moments_are_refused_with_a_reason(
    postgres_foreign: Foreign,
) -> None:
    response = await postgres_foreign.get("/exports/pg_moments.parquet")
    assert response.status_code == 422
    assert "infinity" in response.json()["message"]
    assert "day" in response.json()["message"]
    finite = await postgres_foreign.body("/exports/pg_moments.parquet", id="3,4")
    assert pq.read_table(io.BytesIO(finite)).column("day").to_pylist() == [
        date(2024, 3, 1), None]


@pytest.mark.parametrize("compression", ["zstd", "snappy", "gzip", "none"])
async def test_compression_chooses_the_codec_of_every_column(
    foreign: Foreign, compression: str
) -> None:
    data = await foreign.body("/exports/kinds.parquet", compression=compression)
    metadata = pq.read_metadata(io.BytesIO(data))
    codecs = {metadata.row_group(0).column(i).compression
              for i in range(metadata.num_columns)}
    assert codecs == {"UNCOMPRESSED" if compression == "none" else compression.upper()}
    assert pq.read_table(io.BytesIO(data)).num_rows == metadata.num_rows > 0


async def test_a_bad_compression_is_a_422_with_the_valid_ones_and_other_bad_parameters(
    foreign: Foreign,
) -> None:
    response = await foreign.get("/exports/kinds.parquet", compression="lz4", nosuch="1")
    assert response.status_code == 422
    body = response.json()
    assert body["parameter"] == "compression" and body["valid"] == [
        "zstd", "snappy", "gzip", "none"]
    assert "nosuch" in body["message"]
    # Elsewhere compression= is no parameter: a filter on a column of that name, if any.
    assert (await foreign.get("/exports/kinds.csv", compression="zstd")).status_code == 422


async def test_row_groups_follow_the_setting(sqlite_foreign: Foreign) -> None:
    settings = sqlite_foreign.database.settings(run_worker=False, batch_rows=16,
                                                parquet_row_group_mb=0.001)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            small = (await client.get("/exports/kinds.parquet")).content
    assert pq.read_metadata(io.BytesIO(small)).num_row_groups > 1
    whole = await sqlite_foreign.body("/exports/kinds.parquet")
    assert pq.read_metadata(io.BytesIO(whole)).num_row_groups == 1
    assert pq.read_table(io.BytesIO(small)).equals(pq.read_table(io.BytesIO(whole)))


async def sqlite_export(tmp_path: Path, script: str, path: str) -> httpx.Response:
    """An export of an SQLite file made by ``script``, by a service of its own."""
    [response] = await sqlite_exports(tmp_path, script, [path])
    return response


async def sqlite_exports(tmp_path: Path, script: str, paths: list[str], **settings: object
                         ) -> list[httpx.Response]:
    """Exports of an SQLite file made by ``script``, by a service of its own with these
    settings."""
    database = Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'own.db'}", tmp_path)
    with sqlite3.connect(tmp_path / "own.db") as conn:
        conn.executescript(script)
    exporter_migrate(database)
    app = create_app(database.settings(run_worker=False, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            return [await client.get(path) for path in paths]


async def test_a_row_larger_than_arrows_read_blocks_is_written(tmp_path: Path) -> None:
    """A row over the end of one of Arrow's read blocks is carried over to the next (Arrow's
    JSON reader, which read the rows before its CSV reader did, failed on 5 MB in one row)."""
    big = "x" * (5 << 20)
    response = await sqlite_export(tmp_path, f"""
        CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT, raw BLOB);
        INSERT INTO t VALUES (1, 'small', x'00'), (2, '{big}', zeroblob(3000000)),
                             (3, 'after', NULL);
    """, "/exports/t.parquet")
    assert response.status_code == 200, response.text[:300]
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column("body").to_pylist() == ["small", big, "after"]
    assert table.column("raw").to_pylist() == [b"\x00", bytes(3000000), None]


@pytest.mark.parametrize("readers", [1, 2, 3])
async def test_a_misfit_in_any_part_of_the_scan_makes_its_column_strings(
    tmp_path: Path, readers: int
) -> None:
    """The scan before the first row is cut by rowid into a part for each reader: a value
    of another kind in the first row, the last row of the dense ones or the only row at
    the largest rowid a table can have, is found by whichever part reads it."""
    rows = ", ".join(f"({i}, {i}, {i}, '2024-01-0{i % 9 + 1}', {i})" for i in range(2, 2000))
    script = f"""
        CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER, c DATE, d INTEGER);
        INSERT INTO t VALUES (1, 'first', 1, '2024-01-01', 1), {rows},
                             (2000, 2000, 'last', '2024-01-01', 2000),
                             (9223372036854775807, 1, 1, 'largest', 1);
    """
    whole, dense = (response.content for response in await sqlite_exports(
        tmp_path, script, ["/exports/t.parquet", "/exports/t.parquet?id__lt=2000"],
        sqlite_readers=readers))
    schema = pq.read_schema(io.BytesIO(whole))
    assert [schema.field(name).type for name in "abcd"] == [pa.string()] * 3 + [pa.int64()]
    table = pq.read_table(io.BytesIO(whole))
    assert table.num_rows == 2001
    assert table.column("c").to_pylist()[-1] == "largest"
    assert table.column("b").to_pylist()[-2] == "last"
    schema = pq.read_schema(io.BytesIO(dense))  # the filter leaves b's and c's misfits out
    assert [schema.field(name).type for name in "abcd"] == [
        pa.string(), pa.int64(), pa.date32(), pa.int64()]


async def test_decimals_beyond_their_precision_and_text_that_is_no_json_become_strings(
    tmp_path: Path,
) -> None:
    """SQLite keeps no precision and no JSON: such columns are written as their texts, so
    that every reader opens the file (DuckDB refuses a JSON column holding no JSON)."""
    response = await sqlite_export(tmp_path, """
        CREATE TABLE t (id INTEGER PRIMARY KEY, small NUMERIC(5,2), fine NUMERIC(5,2),
                        doc JSON, good JSON);
        INSERT INTO t VALUES (1, 1234.5, 999.99, '{oops', '{"a": 1}'),
                             (2, 999.995, 1.5, '[1]', '[1, 2]'), (3, NULL, NULL, NULL, NULL);
    """, "/exports/t.parquet")
    assert response.status_code == 200, response.text[:300]
    path = tmp_path / "t.parquet"
    path.write_bytes(response.content)
    schema = pq.read_schema(path)
    assert schema.field("small").type == pa.string()  # 1234.50 and 1000.00 need 6 digits
    assert schema.field("fine").type == pa.decimal128(5, 2)
    assert schema.field("doc").type == pa.string()
    assert schema.field("good").type == pa.json_(pa.string())
    assert pq.read_table(path).column("small").to_pylist() == ["1234.50", "1000.00", None]
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall() == [(3,)]


def test_a_numeric_wider_than_any_arrow_decimal_is_its_text() -> None:
    column = Column("n", "numeric(100,2)", Kind.NUMERIC, True, scale=2, precision=100)
    assert arrow_type(column) == pa.string()
    assert arrow_type(Column("n", "numeric(60,2)", Kind.NUMERIC, True, scale=2,
                             precision=60)) == pa.decimal256(60, 2)
