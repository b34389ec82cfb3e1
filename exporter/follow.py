"""Live streams: an export that catches up, then sends each new row once it is committed,
until the client leaves (``follow=true`` on NDJSON; Server-Sent Events on
``GET /streams/{table}``).

A follower reads in short keyset batches (the rows after the last key it sent, in key
order, at most ``batch_rows``), each on a pooled connection taken for that read alone, and
between them waits on ``Changes`` (changes.py) holding no connection and no transaction:
nothing pins an old snapshot or keeps vacuum back, whatever the number of followers.

The key must be the table's primary key, of one column, and grow as rows are added (an
integer id from a sequence or AUTOINCREMENT, a time-ordered key): a row committed with a
key below one already sent is not sent. On PostgreSQL, two transactions can commit their
sequence numbers out of order (the one that took 41 commits after the one that took 42,
which a follower may have sent already): with several concurrent writers, such a row can
be missed, as it would be by any reader resuming after a key. One writer, or writers that
commit in key order, lose nothing.

Unlike an export, a live stream is not one snapshot: each batch sees what was committed
when it ran. Rows are the NDJSON export's bytes (the database renders them); a quiet
stream sends a keepalive every ``follow_heartbeat_seconds`` (NDJSON: one space, which JSON
allows before a value, so every line stays one JSON object); after
``follow_max_seconds``, or when the server shuts down, the stream ends cleanly and the
client resumes after its last key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from datetime import time as time_of_day
from typing import Any

from sqlalchemy import literal, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from exporter.catalog import Table
from exporter.changes import Changes
from exporter.config import Settings
from exporter.db import backend_name
from exporter.errors import FollowersBusy, InvalidParameter
from exporter.metrics import Metrics
from exporter.params import after_key
from exporter.queries import ExportQuery, Shape, build_statement, order_key
from exporter.streaming import ExportResponse, ExportSlots

log = logging.getLogger("exporter.follow")

HEARTBEAT = b" "  # NDJSON's keepalive: whitespace JSON allows before the next value
FOLLOW = "follow"


@dataclass(frozen=True)
class Row:
    key: str  # its key as after= takes it (and an event's id)
    json: str  # the row as the NDJSON export writes it, without its line feed


def followed(table: Table, settings: Settings) -> Table:
    """The table as a live stream sees it: keyed by the columns ``EXPORTER_FOLLOW_KEYS``
    names for it, if any (a 422 if it names one the table lacks), else by its own key."""
    named = settings.follow_key(table.name)
    if not named:
        return table
    missing = [name for name in named if not table.has(name)]
    if missing:
        raise InvalidParameter(
            FOLLOW, "true", f"EXPORTER_FOLLOW_KEYS names {table.name}.{missing[0]}, a column "
            f"{table.name!r} does not have (or hides)", table.names,
        )
    return replace(table, key=named)


def followable(table: Table, settings: Settings) -> bool:
    return bool(settings.follow_key(table.name)) or len(table.key) == 1


def check_followable(query: ExportQuery, settings: Settings, name: str = FOLLOW) -> None:
    """A 422 unless the query can be followed: a key of one column or the one
    ``EXPORTER_FOLLOW_KEYS`` names (``followed``), no limit."""
    table = query.table
    if not followable(table, settings):
        what = "no primary key" if not table.key else f"a key of {len(table.key)} columns"
        raise InvalidParameter(
            name, "true", f"{table.name!r} has {what}: a live stream sends the rows after the "
            "last key it sent, and needs a primary key of one column that grows as rows are "
            "added, or columns EXPORTER_FOLLOW_KEYS names for it",
        )
    if query.limit is not None:
        raise InvalidParameter("limit", str(query.limit),
                               "a live stream has no end: limit cannot be combined with it")


def key_text(value: Any) -> str:
    """A key value as ``after=`` takes it back."""
    if isinstance(value, datetime | date | time_of_day):
        return value.isoformat()
    return str(value)


async def follow_rows(
    engine: AsyncEngine, changes: Changes, query: ExportQuery, settings: Settings,
) -> AsyncGenerator[Sequence[Row] | None, None]:
    """Batches of the rows after ``query.after``, in key order, as they come: the first
    at once, even empty (the stream has begun); then each batch that came, or None when
    nothing was sent for ``follow_heartbeat_seconds``. Ends after ``follow_max_seconds``."""
    table = query.table
    heartbeat = settings.follow_heartbeat_seconds
    deadline = time.monotonic() + settings.follow_max_seconds
    last: Any = None  # the last key sent, as the database gave it (None: query.after)
    first = True
    sent_at = time.monotonic()
    async with changes.watching(table):  # watched before the first read: no commit slips by
        while True:
            seen = changes.generation(table.name)
            rows, key = await _read(engine, changes, query, last, settings.batch_rows)
            if rows or first:
                yield rows
                first = False
                sent_at = time.monotonic()
            if rows:
                last = key
            now = time.monotonic()
            if now >= deadline or changes.stopping:
                return
            if len(rows) == settings.batch_rows:
                await asyncio.sleep(0)
                continue  # more are there already
            quiet = sent_at + heartbeat - now
            if quiet <= 0:  # whatever woke it, a stream quiet this long sends a keepalive
                yield None
                sent_at = now
                quiet = heartbeat
            await changes.wait(table, seen, min(quiet, deadline - now))
            if changes.stopping:
                return


async def _read(engine: AsyncEngine, changes: Changes, query: ExportQuery, last: Any,
                rows: int) -> tuple[list[Row], Any]:
    """The next rows after ``last`` (the key as the database gave it, compared as it is
    stored: no text in between, which SQLite would compare otherwise), or after the
    query's own ``after`` at first; on a pooled connection taken for this read alone."""
    key = order_key(query)
    batch = replace(query, after=query.after if last is None else None, limit=rows)
    statement = build_statement(batch, backend_name(engine), Shape.JSON).add_columns(*key)
    # A row whose key holds NULL has no place after any key (a column EXPORTER_FOLLOW_KEYS
    # names may allow NULL): it is never sent, rather than end a batch no row comes after.
    statement = statement.where(*(column.is_not(None) for column in key))
    if last is not None:
        bound = [literal(value, column.type) for column, value in zip(key, last, strict=True)]
        statement = statement.where(tuple_(*key) > tuple_(*bound) if len(key) > 1
                                    else key[0] > bound[0])
    async with changes.reads, engine.connect() as conn:
        found = (await conn.execute(statement)).all()
    rows_read = [Row(",".join(map(key_text, values)), json) for json, *values in found]
    return rows_read, (tuple(found[-1][1:]) if found else None)


def last_event_key(table: Table, header: str | None, after: tuple[Any, ...] | None
                   ) -> tuple[Any, ...] | None:
    """Where a stream resumes: the ``Last-Event-ID`` an EventSource sends on reconnecting,
    else ``after=``. An id that is no key of this table (not one this stream sent) is
    ignored, as ``/jobs/{id}/events`` ignores one."""
    if header is None or header == "":
        return after
    try:
        return after_key(table, "Last-Event-ID", header)
    except InvalidParameter:
        return after


async def ndjson_body(rows: AsyncGenerator[Sequence[Row] | None, None],
                      on_rows: Callable[[int, int], None]) -> AsyncGenerator[bytes, None]:
    """A live stream as NDJSON: each batch's lines, or a keepalive space."""
    try:
        async for batch in rows:
            data = HEARTBEAT if batch is None else "".join(
                f"{row.json}\n" for row in batch).encode()
            on_rows(len(batch or ()), len(data))
            yield data
    finally:
        await rows.aclose()


class SlowFollower(Exception):
    """The client took no write for ``follow_send_seconds``: it is cut, not buffered for."""


class FollowResponse(ExportResponse):
    """An export response whose every write must be taken within ``send_seconds``."""

    def __init__(self, *args: Any, send_seconds: float, on_slow: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send_seconds = send_seconds
        self.on_slow = on_slow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed(message: Any) -> None:
            try:
                await asyncio.wait_for(send(message), self.send_seconds)
            except TimeoutError:
                log.warning("a live stream's client took no write for %s s: cut",
                            self.send_seconds)
                self.on_slow()
                raise SlowFollower() from None

        await super().__call__(scope, receive, timed)


class Followers:
    """This process's live streams: their cap, their change signals, their metrics."""

    def __init__(self, engine: AsyncEngine, settings: Settings, metrics: Metrics) -> None:
        self.changes = Changes(engine, settings.follow_poll_seconds)
        self.slots = ExportSlots(settings.max_followers, settings.retry_after_seconds,
                                 busy=FollowersBusy)
        self.metrics = metrics

    def start(self, stream: str) -> tuple[Callable[[int, int], None], Callable[[str], None]]:
        """Take a slot (or raise FollowersBusy); the per-batch and at-the-end callbacks."""
        self.slots.acquire()
        self.metrics.followers.inc()
        rows = self.metrics.follow_rows.labels(stream)

        def on_rows(count: int, _size: int) -> None:
            rows.inc(count)

        ended = False

        def on_end(outcome: str) -> None:  # once, whoever calls it first
            nonlocal ended
            if ended:
                return
            ended = True
            self.slots.release()
            self.metrics.followers.dec()
            self.metrics.followers_finished.labels(
                "ended" if outcome == "completed" else outcome).inc()

        return on_rows, on_end

    async def close(self) -> None:
        await self.changes.close()
