"""The three streaming exports over HTTP (in-process), on every backend."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from exporter.app import create_app
from exporter.catalog import Column, Kind, Table
from exporter.config import load_settings
from exporter.db import migrate
from exporter.errors import InvalidParameter
from exporter.models import users
from exporter.params import parameter_names, parse_query
from tests.conftest import GOLDEN_AFTER_ID, TOTAL_ROWS, Database

GOLDEN_CSV = (
    "id,email,full_name,country,city,plan,is_active,lifetime_value,created_at,"
    "last_login_at,bio,avatar_image_id\r\n"
    '900001,zoe@example.com,"Zoë ""Zee"" O\'Brien, Jr.",DE,München,pro,true,12.30,'
    '2024-03-01T12:00:00Z,2024-03-02T08:30:05Z,"Line one\r\nLine ""two"", with comma\tand tab",'
    "1\r\n"
    "900002,wang@example.com,王伟 🚀,CN,,free,false,0.00,2024-03-01T12:00:01Z,,,\r\n"
    "900003,angstrom@example.com,Ångström,JP,東京,enterprise,true,9999999999.99,"
    '2025-12-31T23:59:59Z,2026-01-01T00:00:00Z,"ends with LF\n",2\r\n'
    "900004,pad@example.com, padded ,US,Austin,pro,true,0.05,2024-03-01T11:59:59Z,,,\r\n"
).encode()

GOLDEN_OBJECTS = [
    '{"id":900001,"email":"zoe@example.com","full_name":"Zoë \\"Zee\\" O\'Brien, Jr.",'
    '"country":"DE","city":"München","plan":"pro","is_active":true,"lifetime_value":12.30,'
    '"created_at":"2024-03-01T12:00:00Z","last_login_at":"2024-03-02T08:30:05Z",'
    '"bio":"Line one\\r\\nLine \\"two\\", with comma\\tand tab","avatar_image_id":1}',
    '{"id":900002,"email":"wang@example.com","full_name":"王伟 🚀","country":"CN","city":null,'
    '"plan":"free","is_active":false,"lifetime_value":0.00,"created_at":"2024-03-01T12:00:01Z",'
    '"last_login_at":null,"bio":null,"avatar_image_id":null}',
    '{"id":900003,"email":"angstrom@example.com","full_name":"Ångström","country":"JP",'
    '"city":"東京","plan":"enterprise","is_active":true,"lifetime_value":9999999999.99,'
    '"created_at":"2025-12-31T23:59:59Z","last_login_at":"2026-01-01T00:00:00Z",'
    '"bio":"ends with LF\\n","avatar_image_id":2}',
    '{"id":900004,"email":"pad@example.com","full_name":" padded ","country":"US",'
    '"city":"Austin","plan":"pro","is_active":true,"lifetime_value":0.05,'
    '"created_at":"2024-03-01T11:59:59Z","last_login_at":null,"bio":"",'
    '"avatar_image_id":null}',
]
GOLDEN_NDJSON = "".join(line + "\n" for line in GOLDEN_OBJECTS).encode()
GOLDEN_JSON = ("[\n" + ",\n".join(GOLDEN_OBJECTS) + "\n]\n").encode()


async def body(client: httpx.AsyncClient, path: str, **headers: str) -> bytes:
    response = await client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return response.content


async def ndjson_rows(client: httpx.AsyncClient, query: str = "") -> list[dict[str, Any]]:
    data = await body(client, f"/exports/users.ndjson{query}")
    return [json.loads(line) for line in data.splitlines()]


@pytest.mark.parametrize(
    ("extension", "expected"),
    [("csv", GOLDEN_CSV), ("ndjson", GOLDEN_NDJSON), ("json", GOLDEN_JSON)],
)
async def test_hostile_rows_export_as_the_golden_bytes(
    client: httpx.AsyncClient, extension: str, expected: bytes
) -> None:
    assert await body(client, f"/exports/users.{extension}?after_id={GOLDEN_AFTER_ID}") == expected


async def test_csv_export_quotes_commas_quotes_and_newlines_per_rfc_4180(
    client: httpx.AsyncClient,
) -> None:
    data = await body(client, f"/exports/users.csv?after_id={GOLDEN_AFTER_ID}&fields=id,bio")
    assert data == (
        b'id,bio\r\n900001,"Line one\r\nLine ""two"", with comma\tand tab"\r\n'
        b"900002,\r\n"
        b'900003,"ends with LF\n"\r\n'
        b"900004,\r\n"
    )


async def test_csv_quotes_exactly_what_pythons_csv_module_quotes_in_every_seeded_bio(
    client: httpx.AsyncClient, database: Database,
) -> None:
    """The golden rows' commas all come with quotes; the seeded bios also hold commas alone
    and leading spaces. Python's csv module, on the rows the driver reads, is the oracle."""
    engine = database.engine()
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(users.c.id, users.c.bio)
                                       .order_by(users.c.id))).all()
    finally:
        await engine.dispose()
    bios = [bio for _, bio in rows if bio]
    assert any("," in b and '"' not in b and "\n" not in b for b in bios), "a comma alone"
    assert any(b.startswith(" ") for b in bios), "a leading space"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["id", "bio"])
    writer.writerows((user_id, bio) for user_id, bio in rows)
    assert await body(client, "/exports/users.csv?fields=id,bio") == out.getvalue().encode()


async def test_empty_results_are_still_valid_documents(client: httpx.AsyncClient) -> None:
    assert await body(client, "/exports/users.csv?limit=0&fields=id,email") == b"id,email\r\n"
    assert await body(client, "/exports/users.ndjson?limit=0") == b""
    assert json.loads(await body(client, "/exports/users.json?limit=0")) == []


async def test_the_three_formats_agree_row_by_row(client: httpx.AsyncClient) -> None:
    csv_rows = list(csv.DictReader(io.StringIO(
        (await body(client, "/exports/users.csv")).decode(), newline=""
    )))
    # Floats kept as their text, so "12.30" cannot pass for "12.3".
    ndjson = [
        json.loads(line, parse_float=str)
        for line in (await body(client, "/exports/users.ndjson")).splitlines()
    ]
    array = json.loads(await body(client, "/exports/users.json"), parse_float=str)
    assert len(csv_rows) == len(ndjson) == len(array) == TOTAL_ROWS
    assert ndjson == array
    assert all(re.fullmatch(r"\d+\.\d\d", row["lifetime_value"]) for row in ndjson)

    def as_csv(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    for csv_row, json_row in zip(csv_rows, ndjson, strict=True):
        assert csv_row == {name: as_csv(value) for name, value in json_row.items()}


DEMO_FIELDS = ("id", "email", "full_name", "country", "city", "plan", "is_active",
               "lifetime_value", "created_at", "last_login_at", "bio", "avatar_image_id")


async def test_rows_come_in_ascending_id_with_every_field(client: httpx.AsyncClient) -> None:
    rows = await ndjson_rows(client)
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(list(row) == list(DEMO_FIELDS) for row in rows)


async def test_fields_are_exported_in_the_order_asked(client: httpx.AsyncClient) -> None:
    data = await body(client, "/exports/users.csv?fields=plan,id,email&limit=2")
    header, first, _ = data.split(b"\r\n", 2)
    assert header == b"plan,id,email"
    assert first.split(b",")[1] == b"1"
    rows = await ndjson_rows(client, "?fields=plan,id&limit=1")
    assert list(rows[0]) == ["plan", "id"]


FILTERS = [
    ("?country=DE,fr", lambda r: r["country"] in ("DE", "FR")),
    ("?plan=enterprise", lambda r: r["plan"] == "enterprise"),
    ("?plan=free,pro&is_active=false", lambda r: r["plan"] != "enterprise" and not r["is_active"]),
    ("?is_active=true", lambda r: r["is_active"]),
    ("?created_from=2024-03-01T12:00:00Z", lambda r: r["created_at"] >= "2024-03-01T12:00:00Z"),
    ("?created_to=2024-03-01T12:00:00Z", lambda r: r["created_at"] < "2024-03-01T12:00:00Z"),
    (
        "?created_from=2024-03-01T13:00:00%2B01:00&created_to=2024-03-01T12:00:01Z",
        lambda r: r["created_at"] == "2024-03-01T12:00:00Z",
    ),
    ("?after_id=2990", lambda r: r["id"] > 2990),
]


@pytest.mark.parametrize(("query", "keep"), FILTERS, ids=[q for q, _ in FILTERS])
async def test_filters_select_exactly_the_matching_rows(
    client: httpx.AsyncClient, query: str, keep: Any
) -> None:
    everything = await ndjson_rows(client)
    expected = [row for row in everything if keep(row)]
    assert expected, "the seeded data should hold matching rows"
    assert len(expected) < len(everything)
    assert await ndjson_rows(client, query) == expected


async def test_after_id_and_limit_accept_the_largest_documented_value(
    client: httpx.AsyncClient,
) -> None:
    biggest = 2**63 - 1
    assert await body(client, f"/exports/users.csv?after_id={biggest}&fields=id") == b"id\r\n"
    rows = await ndjson_rows(client, f"?limit={biggest}&fields=id")
    assert len(rows) == TOTAL_ROWS


async def test_after_id_and_limit_resume_where_a_reader_stopped(
    client: httpx.AsyncClient,
) -> None:
    everything = await ndjson_rows(client)
    resumed: list[dict[str, Any]] = []
    last_id = 0
    while page := await ndjson_rows(client, f"?after_id={last_id}&limit=700"):
        resumed.extend(page)
        last_id = page[-1]["id"]
    assert resumed == everything


BAD_QUERIES = [
    ("fields=id,password", "fields", "password"),
    ("fields=id,,email", "fields", "empty"),
    ("fields=id,id", "fields", "twice"),
    ("fields=", "fields", "empty"),
    ("country=Germany", "country", "Germany"),
    ("plan=gold", "plan", "gold"),
    ("is_active=maybe", "is_active", "maybe"),
    ("created_from=yesterday", "created_from", "yesterday"),
    ("created_to=2024-13-01", "created_to", "2024-13-01"),
    ("after_id=-1", "after_id", "-1"),
    ("after_id=1e3", "after_id", "1e3"),
    ("limit=ten", "limit", "ten"),
    ("limit=99999999999999999999", "limit", "99999999999999999999"),
    ("limit=5&limit=6", "limit", "more than once"),
    ("created_to=0001-01-01T00:00:00%2B01:00", "created_to", "0001"),
    ("created_from=9999-12-31T23:59:59-01:00", "created_from", "9999"),
    ("created_from=2024-06-30T23:59:60Z", "created_from", "leap seconds"),
    ("created_from=2024-02-01&created_to=2024-01-01", "created_to", "swapped"),
    ("after_id=%00", "after_id", "\\x00"),
    ("limit=%D9%A3", "limit", "٣"),
    ("limit=" + "9" * 5000, "limit", "whole number"),
    ("country=%ED%A0%80", "country", "country"),
    ("fields=" + "x" * 60_000, "fields", "unknown field"),
    ("colour=red", "colour", "unknown parameter"),
    # Issue 16.5: each of these was once read as something else (fromisoformat stops at a
    # NUL; fifty 1s read as 1111-11-11T11:11:11.111111; int() takes a sign).
    ("created_from=2024-06-01T00:00:00Z%00%00%00xyz", "created_from", "NUL"),
    ("created_from=" + "1" * 50, "created_from", "ISO 8601"),
    ("limit=%2B5", "limit", "whole number"),
    ("id=%2B5", "id", "whole number"),
    ("created_at__gte=2024-06-01%00", "created_at__gte", "NUL"),
    ("lifetime_value__gt=1_000", "lifetime_value__gt", "decimal"),
]


@pytest.mark.parametrize(("query", "parameter", "mentioned"), BAD_QUERIES)
@pytest.mark.parametrize("extension", ["csv", "ndjson", "json"])
async def test_bad_parameters_get_a_422_naming_the_parameter_and_value(
    client: httpx.AsyncClient, extension: str, query: str, parameter: str, mentioned: str
) -> None:
    response = await client.get(f"/exports/users.{extension}?{query}")
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert error["error"] == "invalid_parameter"
    assert error["parameter"] == parameter
    assert mentioned in error["message"]
    assert len(response.content) < 4000, "a huge value is not echoed back whole"


async def test_unknown_field_error_lists_the_valid_fields(client: httpx.AsyncClient) -> None:
    error = (await client.get("/exports/users.csv?fields=nope")).json()
    assert error["valid"] == list(DEMO_FIELDS)


async def test_unknown_export_format_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/exports/users.xml")).status_code == 404


@pytest.mark.parametrize(
    ("extension", "media_type"),
    [("csv", "text/csv; charset=utf-8"), ("ndjson", "application/x-ndjson"),
     ("json", "application/json")],
)
async def test_exports_are_attachments_with_a_timestamped_filename(
    client: httpx.AsyncClient, extension: str, media_type: str
) -> None:
    response = await client.get(f"/exports/users.{extension}?limit=1")
    assert response.headers["content-type"] == media_type
    disposition = response.headers["content-disposition"]
    match = re.fullmatch(
        r'attachment; filename="(users-\d{8}T\d{6}Z\.(\w+))"; filename\*=UTF-8\'\'(.+)', disposition
    )
    assert match, disposition
    assert match.group(2) == extension and match.group(3) == match.group(1)
    datetime.strptime(match.group(1)[6:22], "%Y%m%dT%H%M%SZ")
    assert response.headers["vary"] == "Accept-Encoding, Prefer"


@pytest.mark.parametrize("extension", ["csv", "ndjson", "json"])
async def test_gzip_is_sent_when_accepted_and_decodes_to_the_same_bytes(
    client: httpx.AsyncClient, extension: str
) -> None:
    plain = await client.get(f"/exports/users.{extension}", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    zipped = await client.get(
        f"/exports/users.{extension}", headers={"Accept-Encoding": "br;q=1.0, gzip;q=0.8"}
    )
    assert zipped.headers["content-encoding"] == "gzip"
    # httpx decodes transparently; check the wire bytes ourselves too.
    assert zipped.content == plain.content
    raw = b"".join([chunk async for chunk in _raw(client, f"/exports/users.{extension}")])
    assert gzip.decompress(raw) == plain.content
    assert len(raw) < len(plain.content) / 2


async def _raw(client: httpx.AsyncClient, path: str) -> Any:
    async with client.stream("GET", path, headers={"Accept-Encoding": "gzip"}) as response:
        async for chunk in response.aiter_raw():
            yield chunk


@pytest.mark.parametrize("refusal", ["gzip;q=0", "gzip; q = 0", "*;q=0", "identity", ""])
async def test_gzip_refused_or_not_offered_is_not_sent(
    client: httpx.AsyncClient, refusal: str
) -> None:
    response = await client.get("/exports/users.csv?limit=1", headers={"Accept-Encoding": refusal})
    assert "content-encoding" not in response.headers


async def test_gzip_offered_on_a_second_accept_encoding_line_is_used(
    client: httpx.AsyncClient,
) -> None:
    headers = [("Accept-Encoding", "br"), ("Accept-Encoding", "gzip")]
    response = await client.get("/exports/users.csv?limit=1", headers=headers)
    assert response.headers["content-encoding"] == "gzip"


async def test_the_table_lists_every_parameter_its_export_takes(
    client: httpx.AsyncClient,
) -> None:
    listed = (await client.get("/tables/users")).json()["parameters"]
    for name in listed:
        value = "1"
        if name in ("created_from", "created_to") or name.startswith("created_at") \
                or name.startswith("last_login_at"):
            value = "2024-03-01"
        if name in ("country", "country__exact"):
            value = "DE"
        if name == "plan":
            value = "pro"
        if name == "fields":
            value = "id"
        if name.endswith("__isnull") or name.startswith("is_active"):
            value = "true"
        response = await client.get("/exports/users.csv", params={name: value, "limit": "1"}
                                    if name != "limit" else {"limit": "1"})
        assert response.status_code == 200, (name, response.text)
    assert {"fields", "limit", "after", "after_id", "country", "plan", "is_active",
            "created_from", "created_to", "bio__isnull", "id__gt"} <= set(listed)


def test_a_column_that_takes_no_equality_is_listed_without_its_bare_name() -> None:
    """The page offers the operators GET /tables lists: a JSON, bytes or array column's
    bare name (equality) would be a 422, so only its __isnull is listed."""
    columns = (Column("id", "INTEGER", Kind.INTEGER, False),
               *(Column(kind.value, kind.value, kind, True)
                 for kind in (Kind.JSON, Kind.BYTES, Kind.ARRAY, Kind.BOOLEAN)))
    table = Table("things", columns, ("id",))
    listed = parameter_names(table)
    for kind in ("json", "bytes", "array"):
        assert [name for name in listed if name.startswith(kind)] == [f"{kind}__isnull"]
        with pytest.raises(InvalidParameter):
            parse_query(table, [(kind, "1")])
    assert [name for name in listed if name.startswith("boolean")] == [
        "boolean", "boolean__exact", "boolean__isnull"]
    for name in listed:
        value = "id" if name == "fields" else "1"
        parse_query(table, [(name, value)])


async def test_health_ready_and_metrics_answer(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = (await client.get("/metrics")).text
    assert "exporter_exports_started_total" in metrics
    assert "exporter_db_connections_checked_out 0.0" in metrics


async def test_ready_is_503_until_the_database_is_migrated(tmp_path: Path) -> None:
    app = create_app(load_settings(data_dir=tmp_path, database_url=None))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as fresh:
            response = await fresh.get("/ready")
            assert response.status_code == 503
            assert response.json()["error"] == "schema_not_migrated"
            assert "exporter migrate" in response.json()["message"]
            await migrate(app.state.engine)
            assert (await fresh.get("/ready")).status_code == 200


async def test_the_start_page_reads_the_tables_it_offers_from_the_service(
    client: httpx.AsyncClient,
) -> None:
    """The page names no table's columns or formats of its own: it builds its choices from
    GET /tables (tests/test_pages.py drives it in a browser)."""
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'fetch("/tables")' in page and 'fetch("/jobs"' in page
    assert "EventSource(" in page
    # The demo's columns and earlier filter names (created_at is also a job's field).
    demo_only = [*(name for name in DEMO_FIELDS if name not in ("id", "created_at")),
                 "created_from", "created_to", "after_id"]
    assert [name for name in demo_only if re.search(rf"\b{name}\b", page)] == []


async def test_head_answers_the_headers_get_would_send_without_a_body(
    client: httpx.AsyncClient,
) -> None:
    url = "/exports/users.ndjson?country=DE&limit=5"
    got = await client.get(url, headers={"Accept-Encoding": "gzip"})
    head = await client.head(url, headers={"Accept-Encoding": "gzip"})
    assert head.status_code == 200 and head.content == b""
    for name in ("content-type", "cache-control", "vary", "content-encoding",
                 "x-content-type-options"):
        assert head.headers[name] == got.headers[name], name
    # The file name holds the time of the request: the same up to the second.
    assert head.headers["content-disposition"].split("-")[0] == \
        got.headers["content-disposition"].split("-")[0]
    assert "content-length" not in head.headers, "an empty Content-Length would claim no rows"
    assert (await client.head("/exports/nope.csv")).status_code == 404
    assert (await client.head("/exports/users.csv?limt=5")).status_code == 422


@pytest.mark.parametrize("extension", ["csv", "ndjson", "json"])
@pytest.mark.parametrize("query", ["", "country=DE&plan=pro", "after_id=150&limit=40",
                                   "country=ZZ"])
async def test_prefer_count_exact_tells_the_rows_the_body_then_holds(
    client: httpx.AsyncClient, extension: str, query: str
) -> None:
    response = await client.get(f"/exports/users.{extension}?{query}",
                                headers={"Prefer": "return=minimal, count=exact"})
    assert response.status_code == 200
    assert response.headers["preference-applied"] == "count=exact"
    if extension == "json":
        streamed = len(json.loads(response.content))
    elif extension == "ndjson":
        streamed = len(response.content.splitlines())
    else:
        streamed = len(list(csv.reader(io.StringIO(response.text)))) - 1  # less the header
    assert int(response.headers["x-total-count"]) == streamed
    if query == "country=ZZ":
        assert streamed == 0


@pytest.mark.parametrize("prefer", [None, "count=planned", "count"])
async def test_an_export_counts_only_when_asked_for_an_exact_count(
    client: httpx.AsyncClient, prefer: str | None
) -> None:
    headers = {"Prefer": prefer} if prefer else {}
    response = await client.get("/exports/users.ndjson?limit=3", headers=headers)
    assert response.status_code == 200
    assert "x-total-count" not in response.headers
    assert "preference-applied" not in response.headers


async def test_every_bad_parameter_of_a_query_is_named_at_once(client: httpx.AsyncClient) -> None:
    response = await client.get("/exports/users.csv?limit=-1&country=Germany&nope=1&fields=id")
    assert response.status_code == 422
    error = response.json()
    assert error["parameter"] == "limit"  # the first, as before
    assert [e["parameter"] for e in error["errors"]] == ["limit", "country", "nope"]
    for name in ("limit=", "country=", "nope="):
        assert name in error["message"], error["message"]
