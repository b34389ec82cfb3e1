"""Many exports at once against a real ``exporter serve``: every one of them is either
complete or a documented 503, never a 500 (SQLite's write lock, which lines the readers'
snapshots up, used to time out under load)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from collections import Counter
from pathlib import Path

import httpx

from tests.conftest import TOTAL_ROWS, Database, clone_database, running_server

CAP = 32
EXPORTS = 96


def count_rows(fmt: str, body: str) -> int:
    if fmt == "csv":
        return len(list(csv.reader(io.StringIO(body)))) - 1  # the header
    if fmt == "ndjson":
        return len([json.loads(line) for line in body.splitlines()])
    return len(json.loads(body))


async def test_96_concurrent_full_sqlite_exports_at_a_cap_of_32_all_complete(
    sqlite_database: Database, tmp_path: Path
) -> None:
    database = await clone_database(sqlite_database, tmp_path, "load")
    env = database.env(EXPORTER_MAX_CONCURRENT_EXPORTS=str(CAP), EXPORTER_BATCH_ROWS="20")
    with running_server(env) as base_url:
        limits = httpx.Limits(max_connections=CAP)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
            async def export(number: int) -> tuple[int | str, int]:
                fmt = ("csv", "ndjson", "json")[number % 3]
                try:
                    response = await client.get(f"/exports/users.{fmt}")
                except httpx.TransportError as error:  # an aborted body
                    return type(error).__name__, 0
                if response.status_code != 200:
                    return f"{response.status_code} {response.text}", 0
                return response.status_code, count_rows(fmt, response.text)

            results = await asyncio.gather(*(export(n) for n in range(EXPORTS)))
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: EXPORTS}, statuses
    assert {rows for _, rows in results} == {TOTAL_ROWS}


async def test_an_export_reads_on_one_connection_while_another_process_holds_the_write_lock(
    sqlite_database: Database, tmp_path: Path
) -> None:
    database = await clone_database(sqlite_database, tmp_path, "locked")
    with running_server(database.env()) as base_url:
        writer = sqlite3.connect(database.data_dir / "exporter.db", isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")  # a long write elsewhere, never committed here
            response = httpx.get(f"{base_url}/exports/users.ndjson", timeout=30)
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    assert response.status_code == 200, response.text
    assert response.content.count(b"\n") == TOTAL_ROWS
