"""Live streams (follow.py, changes.py) against a real uvicorn, on SQLite and PostgreSQL:
a writer commits rows while followers read, cut their connections and come back; every
follower must get every row once, in key order, with the export's own bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import Database, scratch_postgres_url, serving

START_ROWS = 40
WRITTEN = 120
TABLES_SQL = {
    "sqlite": [
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL, at TIMESTAMP)",
        "CREATE TABLE pairs (a INTEGER, b INTEGER, PRIMARY KEY (a, b))",
        "CREATE TABLE loose (x TEXT)",
        "CREATE TABLE big (id INTEGER PRIMARY KEY, filler TEXT)",
        # Keys a text round trip would spoil: moments with microseconds and a 'T', and a
        # key of no declared type (SQLite then compares an integer below any text).
        "CREATE TABLE stamps (at TIMESTAMP PRIMARY KEY, v TEXT)",
        "CREATE TABLE untyped (k PRIMARY KEY, v TEXT)",
        "CREATE TABLE feed (at TIMESTAMP NOT NULL, seq INTEGER NOT NULL, msg TEXT)",
    ],
    "postgresql": [
        "CREATE TABLE events (id bigserial PRIMARY KEY, body text NOT NULL, at timestamptz)",
        "CREATE TABLE pairs (a integer, b integer, PRIMARY KEY (a, b))",
        "CREATE TABLE loose (x text)",
        "CREATE TABLE big (id integer PRIMARY KEY, filler text)",
        "CREATE TABLE stamps (at timestamptz PRIMARY KEY, v text)",
        "CREATE TABLE untyped (k text PRIMARY KEY, v text)",
        "CREATE TABLE feed (at timestamp NOT NULL, seq integer NOT NULL, msg text)",
    ],
}
# A heartbeat longer than any test: a follower that only read on its heartbeat would fail.
FAST = {"EXPORTER_FOLLOW_POLL_SECONDS": "0.1", "EXPORTER_BATCH_ROWS": "16",
        "EXPORTER_FOLLOW_HEARTBEAT_SECONDS": "60"}


def body(i: int) -> str:
    """Text that tests the rendering too: quotes, a line break, non-ASCII."""
    return f'row {i}: "quoted", line\nbreak, Zoë' if i % 7 == 0 else f"row {i}"


def insert(i: int) -> tuple[str, dict[str, Any]]:
    return ("INSERT INTO events (body, at) VALUES (:body, '2024-05-01 12:00:00')",
            {"body": body(i)})


async def build_events_database(backend: str, data_dir: Path, suffix: str) -> Database:
    if backend == "postgresql":
        url = await scratch_postgres_url(suffix)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite+aiosqlite:///{data_dir / 'app.db'}"
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in TABLES_SQL[backend]:
                await conn.exec_driver_sql(statement)
            from sqlalchemy import text

            for i in range(1, START_ROWS + 1):
                sql, values = insert(i)
                await conn.execute(text(sql), values)
            await conn.execute(text("INSERT INTO big VALUES (:id, :filler)"),
                               [{"id": i, "filler": "x" * 4000} for i in range(1, 3001)])
    finally:
        await engine.dispose()
    database = Database(backend, url, data_dir / "data")
    subprocess.run([sys.executable, "-m", "exporter", "migrate"], env=database.env(),
                   check=True, capture_output=True, timeout=120)
    return database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def events(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Database:
    return await build_events_database(
        request.param, tmp_path_factory.mktemp(f"follow-{request.param}"), "follow")


async def write_rows(url: str, first: int, count: int, every: float) -> None:
    """One writer, one row a commit, at a steady rate."""
    from sqlalchemy import text

    engine = create_async_engine(url)
    try:
        for i in range(first, first + count):
            async with engine.begin() as conn:
                sql, values = insert(i)
                await conn.execute(text(sql), values)
            await asyncio.sleep(every)
    finally:
        await engine.dispose()


async def ndjson_follower(url: str, until: int, cut_after: int | None = None) -> list[bytes]:
    """Follow events until the row ``until`` came; with ``cut_after``, drop the connection
    after that many rows and resume with after= as a client would."""
    lines: list[bytes] = []
    after: int | None = None
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            params = {"follow": "true", **({"after": str(after)} if after else {})}
            async with client.stream("GET", f"{url}/exports/events.ndjson", params=params
                                     ) as response:
                assert response.status_code == 200, await response.aread()
                async for line in _lines(response):
                    row = json.loads(line)  # a keepalive space before it is JSON's whitespace
                    lines.append(line.strip())
                    after = row["id"]
                    if row["id"] >= until:
                        return lines
                    if cut_after is not None and len(lines) == cut_after:
                        cut_after = None
                        break  # leaves the stream: the connection is closed mid-body


async def _lines(response: httpx.Response) -> AsyncIterator[bytes]:
    pending = b""
    async for chunk in response.aiter_bytes():
        pending += chunk
        *whole, pending = pending.split(b"\n")
        for line in whole:
            yield line


async def sse_follower(url: str, until: int, cut_after: int | None = None
                       ) -> list[tuple[str, bytes]]:
    """An EventSource's way: events with ids; on a cut, reconnect with Last-Event-ID."""
    events: list[tuple[str, bytes]] = []
    last: str | None = None
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            async with client.stream("GET", f"{url}/streams/events", headers=headers
                                     ) as response:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["x-accel-buffering"] == "no"
                fields: dict[str, bytes] = {}
                async for line in _lines(response):
                    line = line.rstrip(b"\r")
                    if line:
                        name, _, value = line.partition(b":")
                        fields[name.decode()] = value.removeprefix(b" ")
                        continue
                    if "data" in fields:
                        last = fields["id"].decode()
                        events.append((last, fields["data"]))
                        if int(last) >= until:
                            return events
                        if cut_after is not None and len(events) == cut_after:
                            cut_after = None
                            break
                    fields = {}


async def test_every_follower_gets_every_row_once_in_key_order_across_cuts(
    events: Database, tmp_path: Path,
) -> None:
    last = START_ROWS + WRITTEN
    with serving(events.env(**FAST)) as server:
        followers = [
            *(ndjson_follower(server.url, last) for _ in range(6)),
            *(ndjson_follower(server.url, last, cut_after=cut) for cut in (5, START_ROWS + 20)),
        ]
        readers = [asyncio.ensure_future(follower) for follower in followers]
        sse = [asyncio.ensure_future(sse_follower(server.url, last, cut))
               for cut in (None, START_ROWS + 7)]
        await asyncio.sleep(0.5)  # they have caught up and wait
        await write_rows(events.url, START_ROWS + 1, WRITTEN, every=0.01)
        # Noticed, not waited for: the heartbeat (60 s) would come far later.
        got = await asyncio.wait_for(asyncio.gather(*readers), 15)
        sse_got = await asyncio.wait_for(asyncio.gather(*sse), 15)
        export = httpx.get(f"{server.url}/exports/events.ndjson", params={"id__lte": last})
        expected = export.content.splitlines()
        assert len(expected) == last
        for lines in got:
            assert lines == expected, "every row once, in key order, as the export writes it"
        for received in sse_got:
            assert [key for key, _ in received] == [str(i) for i in range(1, last + 1)]
            assert [data for _, data in received] == expected
        deadline = time.monotonic() + 10
        while "exporter_followers 0.0" not in (
                metrics := httpx.get(f"{server.url}/metrics").text):
            assert time.monotonic() < deadline, "streams that ended kept their slots"
            await asyncio.sleep(0.1)
    assert re.search(r'exporter_follow_rows_total\{stream="ndjson"\} (\d+)', metrics)
    rows_sent = int(float(re.findall(r'exporter_follow_rows_total\{stream="ndjson"\} (\S+)',
                                     metrics)[0]))
    assert rows_sent >= 8 * last


async def test_a_quiet_stream_keeps_alive_with_json_whitespace_and_ends_cleanly_in_time(
    events: Database,
) -> None:
    env = events.env(**{**FAST, "EXPORTER_FOLLOW_HEARTBEAT_SECONDS": "0.2",
                        "EXPORTER_FOLLOW_MAX_SECONDS": "1.5"})
    with serving(env) as server:
        started = time.monotonic()
        # Rows keep coming that the filter leaves out: they wake the stream, send nothing,
        # and must not hold its keepalives back.
        writer = asyncio.ensure_future(write_rows(events.url, 10_000, 30, every=0.05))
        answer = await httpx.AsyncClient().get(
            f"{server.url}/exports/events.ndjson",
            params={"follow": "true", "id__lte": "3", "fields": "id"},
            timeout=10)  # a complete body: the stream ended, not broke
        took = time.monotonic() - started
        await writer
        sse = httpx.get(f"{server.url}/streams/events", params={"id__lte": "2"}, timeout=10)
    assert answer.status_code == 200 and 1.4 < took < 5
    assert answer.content.startswith(b'{"id":1}\n{"id":2}\n{"id":3}\n')
    tail = answer.content[len(b'{"id":1}\n{"id":2}\n{"id":3}\n'):]
    assert len(tail) >= 4 and set(tail) == {ord(" ")}, "keepalives: spaces, nothing else"
    *lines, unterminated = answer.content.split(b"\n")  # as a reader by lines sees it
    assert [json.loads(line) for line in lines] == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert unterminated.strip() == b"", "what follows the last line feed is no row"
    assert answer.headers["content-disposition"].startswith('attachment; filename="events-')
    assert b"id: 2\r\ndata: " in sse.content or b"id: 2\ndata: " in sse.content
    assert b": keepalive" in sse.content


async def test_what_cannot_be_followed_is_refused_with_the_reason(events: Database) -> None:
    with serving(events.env(**FAST, EXPORTER_MAX_FOLLOWERS="2",
                            EXPORTER_RETRY_AFTER_SECONDS="7")) as server:
        cases = {
            "/exports/events.csv?follow=true": "a live stream is NDJSON",
            "/exports/loose.ndjson?follow=true": "'loose' has no primary key",
            "/exports/pairs.ndjson?follow=true": "a key of 2 columns",
            "/exports/events.ndjson?follow=true&limit=5": "limit cannot be combined",
            "/exports/events.ndjson?follow=maybe": "expected a boolean",
            "/exports/events.ndjson?follow=true&follow=true": "given more than once",
            "/streams/loose": "'loose' has no primary key",
            "/streams/events?nope=1": "has no column 'nope'",
        }
        for path, says in cases.items():
            answer = httpx.get(server.url + path)
            assert answer.status_code == 422 and says in answer.json()["message"], (path, answer)
        # An id this stream never sent is ignored, as /jobs/{id}/events ignores one.
        with httpx.stream("GET", f"{server.url}/streams/events?id__lte=1",
                          headers={"Last-Event-ID": "x"}) as foreign:
            assert foreign.status_code == 200
            seen = b""
            for chunk in foreign.iter_bytes():
                seen += chunk
                if b"data: " in seen:
                    break
            assert re.search(rb"id: 1\r?\ndata: ", seen), seen
        assert httpx.get(f"{server.url}/streams/nope").status_code == 404
        # follow=false is an export like any other.
        plain = httpx.get(f"{server.url}/exports/events.ndjson?follow=false&id__lte=2")
        assert plain.status_code == 200 and len(plain.content.splitlines()) == 2
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", f"{server.url}/exports/events.ndjson?follow=true"):
                async with client.stream("GET", f"{server.url}/streams/events"):
                    third = await client.get(f"{server.url}/exports/events.ndjson?follow=true")
                    assert third.status_code == 503 and third.headers["retry-after"] == "7"
                    assert "EXPORTER_MAX_FOLLOWERS" in third.json()["message"]
                    assert (await client.get(f"{server.url}/exports/events.csv")
                            ).status_code == 200, "exports have slots of their own"


async def _connections(url: str) -> list[tuple[str, str]]:
    """The service's connections to this database: (state, application_name)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    connection = await asyncpg.connect(parsed.set(drivername="postgresql").render_as_string(
        hide_password=False).replace(f"/{parsed.database}", "/postgres"))
    try:
        rows = await connection.fetch(
            "SELECT state, application_name FROM pg_stat_activity WHERE datname = $1 "
            "AND pid <> pg_backend_pid()", parsed.database)
    finally:
        await connection.close()
    return [(row["state"] or "", row["application_name"]) for row in rows]


async def test_idle_followers_hold_no_connection_and_the_service_stays_quick(
    events: Database,
) -> None:
    # No job worker: its poll takes a connection every second.
    with serving(events.env(**FAST, EXPORTER_RUN_WORKER="false")) as server:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=300)
                                     ) as client:
            before = await _connections(events.url) if events.backend == "postgresql" else []
            streams = []
            for _ in range(200):
                stream = client.stream("GET", f"{server.url}/exports/events.ndjson",
                                       params={"follow": "true", "after": "1000000"})
                streams.append(stream)
                assert (await stream.__aenter__()).status_code == 200
            try:
                metrics = (await client.get(f"{server.url}/metrics")).text
                assert "exporter_followers 200.0" in metrics
                # SQLite's watcher only looks at the files; PostgreSQL's polls the tables'
                # largest keys on one connection (every 0.1 s here), which a reading may
                # catch. Held by followers, no reading would be 0.
                checked_out = []
                for _ in range(20):
                    metrics = (await client.get(f"{server.url}/metrics")).text
                    checked_out.append(float(re.search(
                        r"^exporter_db_connections_checked_out (\S+)$", metrics, re.M)[1]))
                    await asyncio.sleep(0.03)
                assert 0 in checked_out, checked_out
                if events.backend == "sqlite":
                    assert set(checked_out) == {0}, checked_out
                waits = []
                for _ in range(20):
                    started = time.monotonic()
                    assert (await client.get(f"{server.url}/health")).status_code == 200
                    waits.append(time.monotonic() - started)
                assert max(waits) < 0.5, waits
                if events.backend == "postgresql":
                    during = await _connections(events.url)
                    assert not [c for c in during if c[0].startswith("idle in transaction")]
                    assert [c for c in during if c[1] == "exporter follow"], "one LISTEN"
                    assert len(during) <= len(before) + 6, (before, during)
            finally:
                for stream in streams:
                    await stream.__aexit__(None, None, None)
        deadline = time.monotonic() + 10
        while "exporter_followers 0.0" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline, "followers that left were not let go"
            await asyncio.sleep(0.1)


async def test_a_follower_that_does_not_read_is_cut_not_buffered_for(events: Database) -> None:
    env = events.env(**{**FAST, "EXPORTER_FOLLOW_SEND_SECONDS": "1", "EXPORTER_BATCH_ROWS": "200"})
    with serving(env) as server:
        port = int(server.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /exports/big.ndjson?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.readline()  # the status line: then nothing more is read
        deadline = time.monotonic() + 15
        while "exporter_followers_slow_total 1.0" not in (
                metrics := httpx.get(f"{server.url}/metrics").text):
            assert time.monotonic() < deadline, "the stalled follower was not cut"
            await asyncio.sleep(0.2)
        assert "exporter_followers 0.0" in metrics
        writer.close()


async def test_postgresqls_trigger_is_installed_by_the_operator_and_announces_rows(
    events: Database,
) -> None:
    def follow(action: str, table: str = "events") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "exporter", "follow", action, table],
                              env=events.env(), capture_output=True, text=True, timeout=60)

    if events.backend == "sqlite":
        done = follow("install")
        assert done.returncode == 0 and "SQLite needs no trigger" in done.stderr
        return
    missing = follow("install", "nope")
    assert missing.returncode == 1 and "no exportable table" in missing.stderr
    assert follow("install").returncode == 0
    # Polling every 30 s could not explain a row that arrives within a second.
    with serving(events.env(**{**FAST, "EXPORTER_FOLLOW_POLL_SECONDS": "30"})) as server:
        last = int(httpx.get(f"{server.url}/exports/events.csv?fields=id").text.split()[-1])
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("GET", f"{server.url}/exports/events.ndjson",
                                     params={"follow": "true", "after": str(last)}) as stream:
                await asyncio.sleep(1.0)  # the LISTEN connection is up
                started = time.monotonic()
                await write_rows(events.url, last + 1, 1, every=0)
                async for line in _lines(stream):
                    assert json.loads(line)["id"] == last + 1
                    break
                assert time.monotonic() - started < 1.0
    assert follow("uninstall").returncode == 0


async def test_keys_that_text_would_spoil_are_followed_as_the_database_holds_them(
    events: Database,
) -> None:
    """Each row once, through several batches and new rows, for keys whose text is not
    the stored value: a moment with microseconds and a 'T' (rendered to the second), a key
    of no declared type holding integers (SQLite), a text key (PostgreSQL). (SQLite orders
    moments as it stores them, as text: one table mixing forms has no growing key.)"""
    from sqlalchemy import text

    sqlite = events.backend == "sqlite"
    stamps: list[Any] = [f"2024-01-01T10:00:{i:02d}.{i:06d}" if sqlite
                         else datetime(2024, 1, 1, 10, 0, i, i, tzinfo=UTC)
                         for i in range(1, 41)]
    keys = list(range(1, 41)) if sqlite else [f"k{i:03d}" for i in range(1, 41)]
    engine = create_async_engine(events.url)
    try:
        async with engine.begin() as conn:
            for stamp, key in zip(stamps[:35], keys[:35], strict=True):
                await conn.execute(text("INSERT INTO stamps VALUES (:at, 'x')"), {"at": stamp})
                await conn.execute(text("INSERT INTO untyped VALUES (:k, 'x')"), {"k": key})
        env = events.env(**{**FAST, "EXPORTER_BATCH_ROWS": "8",
                            "EXPORTER_FOLLOW_HEARTBEAT_SECONDS": "0.2"})
        with serving(env) as server:
            async with httpx.AsyncClient(timeout=30) as client:
                async def lines(table: str, rows: int) -> list[bytes]:
                    got: list[bytes] = []
                    async with client.stream("GET", f"{server.url}/exports/{table}.ndjson",
                                             params={"follow": "true"}) as response:
                        received = _lines(response)
                        while len(got) < rows:
                            got.append((await anext(received)).strip())
                        # A second of heartbeats and reads after the last row: none again.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(1.0):
                                got.append((await anext(received)).strip())
                    return got

                reading = [asyncio.ensure_future(lines(table, 40))
                           for table in ("stamps", "untyped")]
                await asyncio.sleep(0.5)
                async with engine.begin() as conn:
                    for stamp, key in zip(stamps[35:], keys[35:], strict=True):
                        await conn.execute(text("INSERT INTO stamps VALUES (:at, 'x')"),
                                           {"at": stamp})
                        await conn.execute(text("INSERT INTO untyped VALUES (:k, 'x')"),
                                           {"k": key})
                done, _ = await asyncio.wait(reading, timeout=15)
                assert len(done) == 2, "a follower stopped getting rows"
                for table, future in zip(("stamps", "untyped"), reading, strict=True):
                    got = future.result()
                    assert len(got) == 40, (table, got[-3:])
                    exported = (await client.get(f"{server.url}/exports/{table}.ndjson"))
                    assert got == exported.content.splitlines(), table
    finally:
        await engine.dispose()


async def test_a_table_is_followed_by_the_columns_the_operator_names(events: Database) -> None:
    """No primary key: EXPORTER_FOLLOW_KEYS=feed.at,feed.seq, a time the application sets
    and a tie-breaker. Rows sharing a moment come once each, across a cut and a resume by
    Last-Event-ID."""
    from sqlalchemy import text

    sqlite = events.backend == "sqlite"

    def moment(i: int) -> Any:  # three rows a second: ties the second column breaks
        at = datetime(2024, 1, 1, 10, 0, i // 3)
        return at.strftime("%Y-%m-%d %H:%M:%S") if sqlite else at

    async def insert_feed(numbers: range) -> None:
        async with engine.begin() as conn:
            for i in numbers:
                await conn.execute(text("INSERT INTO feed VALUES (:at, :seq, :msg)"),
                                   {"at": moment(i), "seq": i, "msg": f"m{i}"})

    engine = create_async_engine(events.url)
    try:
        await insert_feed(range(0, 20))
        env = events.env(**FAST, EXPORTER_FOLLOW_KEYS="feed.at,feed.seq")
        with serving(env) as server:
            listed = httpx.get(f"{server.url}/tables/feed").json()
            assert listed["stream"].endswith("/streams/feed")
            assert listed["primary_key"] == [], "the catalog's key is the database's"
            received: list[str] = []
            last = None
            async with httpx.AsyncClient(timeout=30) as client:
                for cut in (7, None):
                    headers = {"Last-Event-ID": last} if last else {}
                    async with client.stream("GET", f"{server.url}/streams/feed",
                                             params={"fields": "seq"}, headers=headers
                                             ) as response:
                        if cut is None:
                            await insert_feed(range(20, 30))
                        fields: dict[str, str] = {}
                        async for line in _lines(response):
                            line = line.rstrip(b"\r")
                            if line:
                                name, _, value = line.decode().partition(":")
                                fields[name] = value.strip()
                                continue
                            if "data" in fields:
                                last = fields["id"]
                                received.append(json.loads(fields["data"])["seq"])
                                if len(received) in (cut, 30):
                                    break
                            fields = {}
            assert received == list(range(30)), "each row once, in (at, seq) order"
            assert last is not None and last.endswith(",29")
            resumed = httpx.get(f"{server.url}/exports/feed.ndjson", timeout=10, params={
                "follow": "true", "after": last, "fields": "seq", "limit": "1"})
            assert resumed.status_code == 422, "after= takes the followed key; limit never"
        bad = events.env(**FAST, EXPORTER_FOLLOW_KEYS="feed.nope")
        with serving(bad) as server:
            refused = httpx.get(f"{server.url}/exports/feed.ndjson?follow=true")
            assert refused.status_code == 422
            assert "EXPORTER_FOLLOW_KEYS names feed.nope" in refused.json()["message"]
    finally:
        await engine.dispose()


async def test_a_shutdown_ends_live_streams_cleanly_for_their_clients_to_resume(
    events: Database,
) -> None:
    """Live streams have no end of their own: on SIGTERM they end (a complete body, which
    the client resumes after its last key) instead of waiting out the grace and being cut."""
    with serving(events.env(**FAST, EXPORTER_SHUTDOWN_GRACE_SECONDS="30")) as server:
        async with httpx.AsyncClient(timeout=30) as client:
            async def whole(path: str) -> bytes:
                async with client.stream("GET", server.url + path) as response:
                    return b"".join([chunk async for chunk in response.aiter_bytes()])

            bodies = [asyncio.ensure_future(whole(path)) for path in (
                "/exports/events.ndjson?follow=true&fields=id&id__lte=2",
                "/streams/events?fields=id&id__lte=2")]
            await asyncio.sleep(1.0)
            assert server.process is not None
            started = time.monotonic()
            server.process.terminate()
            ndjson, sse = await asyncio.wait_for(asyncio.gather(*bodies), 15)
            assert time.monotonic() - started < 10, "they ended at once, not after the grace"
    assert ndjson.splitlines() == [b'{"id":1}', b'{"id":2}']
    assert b'data: {"id":2}' in sse


async def test_a_uuid_keyed_table_is_polled_like_any_other(events: Database) -> None:
    """PostgreSQL has no max() of a uuid: the poll takes the largest key by ORDER BY. A
    poll that failed would leave followers to their heartbeat (60 s here)."""
    if events.backend == "sqlite":
        return
    from sqlalchemy import text

    engine = create_async_engine(events.url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE uuids (id uuid PRIMARY KEY, v text)"))
            await conn.execute(text(
                "INSERT INTO uuids VALUES ('00000000-0000-0000-0000-000000000001', 'a')"))
        with serving(events.env(**FAST)) as server:
            async with httpx.AsyncClient(timeout=30) as client:
                async with client.stream("GET", f"{server.url}/exports/uuids.ndjson",
                                         params={"follow": "true"}) as response:
                    lines = _lines(response)
                    assert json.loads(await anext(lines))["v"] == "a"
                    await asyncio.sleep(0.5)
                    async with engine.begin() as conn:
                        await conn.execute(text(
                            "INSERT INTO uuids VALUES ('00000000-0000-0000-0000-000000000002', "
                            "'b')"))
                    async with asyncio.timeout(5):
                        assert json.loads(await anext(lines))["v"] == "b"
    finally:
        await engine.dispose()
