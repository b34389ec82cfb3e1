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
import weakref
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter.catalog import Table
from exporter.config import FOLLOW_READS_AT_ONCE
from exporter.db import backend_name

log = logging.getLogger("exporter.changes")

CHANNEL = "exporter_follow"
TRIGGER = "exporter_follow"
FUNCTION = "exporter.notify_follow"  # in the service's own schema, beside its state
WATCH_SECONDS = 0.05  # SQLite: how often the file is looked at, for a latency under 100 ms
RECONNECT_SECONDS = 2.0  # PostgreSQL: a lost LISTEN connection is opened again after this
LINGER_SECONDS = 10.0  # the watcher stops once no one has followed for this long
SAFETY_POLLS = 10  # an announced table is still polled every this many polls
DB_HEADER = b"\0" * 28  # SQLite's header up to its file change counter (offset 24)
SHM_HEADER = b"\0" * 48  # the WAL index's header: iChange, mxFrame, salts, checksums
RUNNING: weakref.WeakSet[Changes] = weakref.WeakSet()  # this process's, for a shutdown
ANNOUNCED = """
SELECT EXISTS (SELECT 1 FROM pg_trigger t
                 JOIN pg_class c ON c.oid = t.tgrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE t.tgname = :trigger AND c.relname = :table AND t.tgenabled <> 'D'
                  AND n.nspname = current_schema())
"""


def stop_followers() -> None:
    """On SIGTERM (server.py): every live stream in this process ends cleanly."""
    for changes in list(RUNNING):
        changes.stop()


class Changes:
    def __init__(self, engine: AsyncEngine, poll_seconds: float) -> None:
        self.engine = engine
        self.poll_seconds = poll_seconds
        self.generations: dict[str, int] = {}
        self.moved: dict[str, asyncio.Event] = {}  # set when the table's generation moves
        self.watched: dict[str, Table] = {}  # the tables followed now, by name ...
        self.followers: dict[str, int] = {}  # ... and how many follow each
        self.idle_since = 0.0
        self.announced: set[str] = set()  # PostgreSQL tables whose trigger NOTIFYs
        self.listening = False
        self.polls = 0
        # What was last seen, kept across the watcher's restarts so that a change made
        # while no one followed is not taken for the way things were.
        self.stamps: list[bytes] | None = None
        self.maxima: dict[str, Any] = {}
        self.task: asyncio.Task[None] | None = None
        # Followers' reads at once, so that they never take the connections exports need
        # (a SQLite commit wakes every follower of the file at the same moment).
        self.reads = asyncio.Semaphore(FOLLOW_READS_AT_ONCE)  # the pool has room
        self.stopping = False  # the server shuts down: live streams end cleanly
        RUNNING.add(self)

    def stop(self) -> None:
        """End every live stream of this process cleanly, each after its current batch:
        on a shutdown, a client resumes after its last key rather than see a cut body."""
        self.stopping = True
        self._move(None)

    def generation(self, table: str) -> int:
        return self.generations.get(table, 0)

    @contextlib.asynccontextmanager
    async def watching(self, table: Table) -> AsyncIterator[None]:
        """While a follower follows ``table``: the table is watched, from before its first
        read (a commit between that read and its first wait moves the generation)."""
        self.watched[table.name] = table
        self.followers[table.name] = self.followers.get(table.name, 0) + 1
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._watch())
        try:
            yield
        finally:
            self.followers[table.name] -= 1
            if not self.followers[table.name]:
                del self.followers[table.name], self.watched[table.name]
                self.maxima.pop(table.name, None)
            if not self.followers:
                self.idle_since = time.monotonic()

    async def wait(self, table: Table, seen: int, seconds: float) -> int:
        """The table's generation once it is past ``seen``, or as it is after ``seconds``
        (``watching`` the table)."""
        if self.generation(table.name) <= seen:
            moved = self.moved.setdefault(table.name, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(moved.wait(), seconds)
        return self.generation(table.name)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def _move(self, tables: Iterable[str] | None) -> None:
        """Move the named tables' generations (None: every watched table's) and wake
        their waiters."""
        for name in list(self.watched if tables is None else tables):
            self.generations[name] = self.generation(name) + 1
            moved = self.moved.pop(name, None)
            if moved is not None:
                moved.set()

    def _done(self) -> bool:
        """True once no one has followed for ``LINGER_SECONDS``: the watcher then stops
        (and a follower that comes later starts another)."""
        if self.followers or time.monotonic() - self.idle_since < LINGER_SECONDS:
            return False
        self.task = None
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
        paths = [Path(database), Path(f"{database}-wal"), Path(f"{database}-shm")]
        self._move(None)  # what came while no one watched
        while not self._done():
            now = _stamps(paths)
            if now != self.stamps:
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
        """One max(key) query per followed table that no trigger announces (and, every
        ``SAFETY_POLLS``, of those too: a NOTIFY can be lost with its connection); whether
        each has its trigger, asked again each time (an operator may remove it)."""
        self.polls += 1
        tables = [table for table in list(self.watched.values()) if table.key]
        if not tables:
            return
        async with self.reads, self.engine.connect() as conn:
            for table in tables:
                announced = (await conn.execute(
                    text(ANNOUNCED), {"trigger": TRIGGER, "table": table.name})).scalar_one()
                if announced:
                    self.announced.add(table.name)
                else:
                    self.announced.discard(table.name)
                if announced and self.listening and self.polls % SAFETY_POLLS:
                    continue
                largest = await self._largest(conn, table)
                known = self.maxima.get(table.name, self)  # self: never polled yet
                if known is self or known != largest:  # a first poll moves: rows may have
                    self._move([table.name])            # come before it (and so does a
                self.maxima[table.name] = largest       # table that could not be polled)

    async def _largest(self, conn: AsyncConnection, table: Table) -> Any:
        """The largest key, all its columns (ORDER BY ... DESC: PostgreSQL has no max() of a
        uuid); ``self`` if the query failed, which then moves the table at every poll."""
        key = [table.sql.c[name] for name in table.key]
        try:
            async with conn.begin_nested():
                found = (await conn.execute(
                    select(*key).where(*(column.is_not(None) for column in key))
                    .order_by(*(column.desc() for column in key)).limit(1)
                )).first()
        except DBAPIError as error:
            log.warning("looking for new rows of %r failed (%s); its followers read at "
                        "every poll", table.name, error.orig)
            return self
        return None if found is None else tuple(found)

    async def _listen(self) -> None:
        url = self.engine.url.set(drivername="postgresql")
        while True:
            try:
                connection = await asyncpg.connect(
                    url.render_as_string(hide_password=False),
                    server_settings={"application_name": "exporter follow",
                                     # a connection gone silently is noticed, not waited on
                                     "tcp_keepalives_idle": "30",
                                     "tcp_keepalives_interval": "10"},
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
        if payload in self.watched:
            self._move([payload])


def _stamps(paths: list[Path]) -> list[bytes]:
    """What changes with every commit: each file's size and times, the database header's
    change counter (rollback journal) and the WAL index's header, whose counter moves with
    every WAL transaction even when the WAL is reused at the same size."""
    stamps: list[bytes] = []
    for path, head in zip(paths, (DB_HEADER, b"", SHM_HEADER), strict=True):
        try:
            found = os.stat(path)
        except FileNotFoundError:
            stamps.append(b"")
            continue
        stamp = f"{found.st_ino}:{found.st_size}:{found.st_mtime_ns}".encode()
        if head:
            with contextlib.suppress(OSError), open(path, "rb") as file:
                stamp += file.read(len(head))
        stamps.append(stamp)
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
