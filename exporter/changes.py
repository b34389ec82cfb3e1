"""``Changes``: one per process, telling live streams (follow.py) that a table may have new
rows, so that no follower queries a table in a loop or holds a connection while it waits.

Each table has a generation, a number that goes up when the table may have changed. A
follower notes the generation, reads what is new, and if nothing is, waits for the
generation to move (``wait``). What moves it:

- SQLite: the database file and its WAL, looked at (``os.stat``) every ``WATCH_SECONDS``
  while anyone waits. A commit by any process changes one of them. It does not say which
  table changed, so every table's generation moves; the service's own state lives in
  another file (exporter-state.db) and moves nothing.
- PostgreSQL, a table with the trigger ``exporter follow install`` made (never installed
  by the service itself): the trigger's ``NOTIFY`` on ``CHANNEL``, heard on one ``LISTEN``
  connection per process, whatever the number of followers.
- PostgreSQL, any other table: one ``max(key)`` query per table every
  ``follow_poll_seconds``, whatever the number of followers.

A lost ``LISTEN`` connection is opened again; until it is, every table is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.catalog import Table
from exporter.db import backend_name

log = logging.getLogger("exporter.changes")

CHANNEL = "exporter_follow"
TRIGGER = "exporter_follow"
FUNCTION = "exporter.notify_follow"  # in the service's own schema, beside its state
WATCH_SECONDS = 0.05  # SQLite: how often the file is looked at, for a latency under 100 ms
RECONNECT_SECONDS = 2.0  # PostgreSQL: a lost LISTEN connection is opened again after this
LINGER_SECONDS = 10.0  # the watcher stops once no one has waited for this long
ANNOUNCED = """
SELECT EXISTS (SELECT 1 FROM pg_trigger t
                 JOIN pg_class c ON c.oid = t.tgrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE t.tgname = :trigger AND c.relname = :table
                  AND n.nspname = current_schema())
"""


class Changes:
    def __init__(self, engine: AsyncEngine, poll_seconds: float) -> None:
        self.engine = engine
        self.poll_seconds = poll_seconds
        self.generations: dict[str, int] = {}
        self.moved: dict[str, asyncio.Event] = {}  # set when the table's generation moves
        self.waiting: dict[str, Table] = {}  # the tables waited on, by name
        self.waiters = 0
        self.idle_since = 0.0
        self.announced: set[str] = set()  # PostgreSQL tables whose trigger NOTIFYs
        self.listening = False
        # What was last seen, kept across the watcher's restarts so that a change made
        # while no one waited is not taken for the way things were.
        self.stamps: list[tuple[int, int, int] | None] | None = None
        self.maxima: dict[str, Any] = {}
        self.task: asyncio.Task[None] | None = None

    def generation(self, table: str) -> int:
        return self.generations.get(table, 0)

    async def wait(self, table: Table, seen: int, seconds: float) -> int:
        """The table's generation once it is past ``seen``, or as it is after ``seconds``."""
        self.waiting.setdefault(table.name, table)
        self.waiters += 1
        try:
            if self.task is None or self.task.done():
                self.task = asyncio.create_task(self._watch())
            if self.generation(table.name) <= seen:
                moved = self.moved.setdefault(table.name, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(moved.wait(), seconds)
            return self.generation(table.name)
        finally:
            self.waiters -= 1
            if not self.waiters:
                self.idle_since = time.monotonic()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def _move(self, tables: Iterable[str] | None) -> None:
        """Move the named tables' generations (None: every waited-on table's) and wake
        their waiters."""
        for name in list(self.waiting if tables is None else tables):
            self.generations[name] = self.generation(name) + 1
            moved = self.moved.pop(name, None)
            if moved is not None:
                moved.set()

    def _done(self) -> bool:
        """True once no one has waited for ``LINGER_SECONDS``: the watcher then stops."""
        if self.waiters or time.monotonic() - self.idle_since < LINGER_SECONDS:
            return False
        self.waiting.clear()
        return True

    async def _watch(self) -> None:
        watch = self._watch_file if backend_name(self.engine) == "sqlite" else self._watch_pg
        try:
            await watch()
        except asyncio.CancelledError:
            raise
        except Exception:  # followers are not left waiting on nothing: they read on their
            log.exception("watching for new rows failed; followers read on their heartbeat")

    # --- SQLite ---------------------------------------------------------------------------

    async def _watch_file(self) -> None:
        database = self.engine.url.database
        if not database or database == ":memory:":  # no file to look at: every poll moves
            while not self._done():
                await asyncio.sleep(self.poll_seconds)
                self._move(None)
            return
        paths = [Path(database), Path(f"{database}-wal")]
        while not self._done():
            now = _stamps(paths)
            if now != self.stamps:
                if self.stamps is not None:
                    self._move(None)
                self.stamps = now
            await asyncio.sleep(WATCH_SECONDS)

    # --- PostgreSQL -----------------------------------------------------------------------

    async def _watch_pg(self) -> None:
        listener = asyncio.create_task(self._listen())
        try:
            while not self._done():
                await self._poll_maxima()
                await asyncio.sleep(self.poll_seconds)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _poll_maxima(self) -> None:
        """One max(key) query per waited-on table that no trigger announces."""
        polled = [table for name, table in list(self.waiting.items())
                  if table.key and not (self.listening and name in self.announced)]
        if not polled:
            return
        async with self.engine.connect() as conn:
            for table in polled:
                announced = (await conn.execute(
                    text(ANNOUNCED), {"trigger": TRIGGER, "table": table.name})).scalar_one()
                if announced:
                    self.announced.add(table.name)
                key = table.sql.c[table.key[0]]
                largest = (await conn.execute(select(func.max(key)))).scalar_one()
                if self.maxima.get(table.name, largest) != largest:
                    self._move([table.name])
                self.maxima[table.name] = largest

    async def _listen(self) -> None:
        url = self.engine.url.set(drivername="postgresql")
        while True:
            try:
                connection = await asyncpg.connect(
                    url.render_as_string(hide_password=False),
                    server_settings={"application_name": "exporter follow"},
                )
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("LISTEN %s: could not connect (%s); polling every table", CHANNEL,
                            error)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            lost = asyncio.Event()
            try:
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, self._heard)
                self.listening = True
                self._move(None)  # rows may have come while no one listened
                await lost.wait()
                log.warning("LISTEN %s: connection lost; polling every table", CHANNEL)
            finally:
                self.listening = False
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)
            await asyncio.sleep(RECONNECT_SECONDS)

    def _heard(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.announced.add(payload)
        self._move([payload])


def _stamps(paths: list[Path]) -> list[tuple[int, int, int] | None]:
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            found = os.stat(path)
        except FileNotFoundError:
            stamps.append(None)
        else:
            stamps.append((found.st_ino, found.st_size, found.st_mtime_ns))
    return stamps


# --- The trigger (exporter follow install|uninstall TABLE) ----------------------------------


def install_statements(table: str) -> list[str]:
    """PostgreSQL: a statement-level trigger on ``table`` that NOTIFYs ``CHANNEL`` with the
    table's name after each INSERT, so that followers hear of new rows at once."""
    quoted = _quoted(table)
    return [
        f"CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME); RETURN NULL; END $$",
        f"DROP TRIGGER IF EXISTS {TRIGGER} ON {quoted}",
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON {quoted} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()",
    ]


def uninstall_statements(table: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {TRIGGER} ON {_quoted(table)}"]


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
