"""TSV exports of tables the project did not create: PostgreSQL's text COPY escaping, the
same bytes on both backends, and every table loads back into PostgreSQL with COPY FROM."""
# ruff: noqa: F811  (the fixtures of test_foreign.py, imported, are the tests' arguments)

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime, time
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from tests.test_foreign import (  # noqa: F401
    SHARED,
    WIDE,
    Foreign,
    foreign,
    postgres_foreign,
    sqlite_foreign,
)

# The test's own spelling of PostgreSQL's text COPY escapes (not the service's table).
ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b",
                         "\f": "\\f", "\v": "\\v"})
TABLES = [spec.name for spec in (*SHARED, WIDE)]


def oracle_field(value: Any, kind: str) -> str:
    """A value of the NDJSON export (numbers kept as their text) as a TSV field."""
    if value is None:
        return "\\N"
    if kind == "bytes":
        return "\\\\x" + base64.b64decode(value).hex()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).translate(ESCAPES)


async def test_every_value_is_its_ndjson_text_escaped_as_postgresql_copy_escapes(
    foreign: Foreign,
) -> None:
    columns = (await foreign.get("/tables/kinds")).json()["columns"]
    plain = [c["name"] for c in columns if c["kind"] != "json"]  # JSON: compacted in NDJSON
    fields = ",".join(plain)
    tsv = (await foreign.body("/exports/kinds.tsv", fields=fields)).decode()
    ndjson = (await foreign.body("/exports/kinds.ndjson", fields=fields)).decode()
    kinds = {c["name"]: c["kind"] for c in columns}
    expected = ["\t".join(plain)] + [
        "\t".join(oracle_field(value, kinds[name]) for name, value in json.loads(
            line, parse_float=str, parse_int=str).items())
        for line in ndjson.split("\n")[:-1]  # not splitlines(): U+2028 is in a value
    ]
    assert tsv.split("\n") == [*expected, ""]
    assert "\\N" in tsv and "\\t" in tsv and "\\r\\n" in tsv and "\\\\" in tsv


@pytest.mark.parametrize("table", TABLES)
async def test_both_backends_give_identical_bytes(
    sqlite_foreign: Foreign, postgres_foreign: Foreign, table: str
) -> None:
    path = f"/exports/{quote(table)}.tsv"
    assert await sqlite_foreign.body(path) == await postgres_foreign.body(path)


def at_the_second(value: Any) -> Any:
    """Every format exports timestamps and times to the second."""
    if isinstance(value, datetime | time):
        return value.replace(microsecond=0)
    return value


def comparable(rows: list[asyncpg.Record], json_columns: set[str]) -> list[tuple[Any, ...]]:
    return sorted(
        (tuple(json.loads(v) if k in json_columns and v is not None else at_the_second(v)
               for k, v in row.items()) for row in rows),
        key=repr,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("table", [*TABLES, "pg_extras"])
async def test_every_table_loads_back_into_postgresql_with_copy_from(
    sqlite_foreign: Foreign, postgres_foreign: Foreign, table: str, backend: str
) -> None:
    if table == "pg_extras" and backend == "sqlite":
        pytest.skip("arrays are PostgreSQL's")
    source = sqlite_foreign if backend == "sqlite" else postgres_foreign
    data = await source.body(f"/exports/{quote(table)}.tsv")
    columns = (await postgres_foreign.get(f"/tables/{quote(table)}")).json()["columns"]
    json_columns = {c["name"] for c in columns if c["kind"] == "json"}
    url = postgres_foreign.database.url.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(url)
    try:
        quoted = '"' + table.replace('"', '""') + '"'
        await conn.execute(f"CREATE TEMP TABLE loaded (LIKE {quoted})")
        await conn.copy_to_table("loaded", source=_chunks(data), format="text", header=True)
        original = await conn.fetch(f"SELECT * FROM {quoted}")
        loaded = await conn.fetch("SELECT * FROM loaded")
    finally:
        await conn.close()
    assert len(loaded) == len(original) > 0
    assert comparable(loaded, json_columns) == comparable(original, json_columns)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    """The file, as asyncpg's copy_to_table reads an asynchronous source."""
    for start in range(0, len(data), 65536):
        yield data[start:start + 65536]


async def test_tsv_is_offered_with_its_media_type_and_gzip(foreign: Foreign) -> None:
    response = await foreign.client.get("/exports/memberships.tsv",
                                        headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/tab-separated-values; charset=utf-8"
    assert response.headers["content-encoding"] == "gzip"
    assert '.tsv"' in response.headers["content-disposition"]
    assert response.text.startswith("org\tmember\trole\n")
