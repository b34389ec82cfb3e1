"""PostgreSQL exports through ``COPY (SELECT ...) TO STDOUT``: the database writes the bytes.

``copy_blocks`` gives an export's rows as blocks of whole rows, already in their final form,
byte for byte what ``formats`` makes of the same rows (the header, the JSON array's brackets
and separators between blocks are left to the encoder). Python only fixes COPY's output up
with a bytes method or two per chunk, so the export runs at COPY's speed. ``copy_ranges``
gives the same blocks from several connections in one snapshot, each COPYing a range of ids
in turn, so that the rendering, the server's work, runs in several server processes.

How each format asks COPY for its rows and makes COPY's output its bytes is the format's
own (formats/csv.py, formats/ndjson.py).

Rejected by measurement (1M users, load 7-9): building each CSV line in SQL and COPYing it as
text, which costs the server more (psql \\copy 3.75 s against 3.10 s) and the client a
replace() per COPY text escape to undo it (2.3 s against 0.3 s). Timestamps rendered from
their ISO text with replace() instead of to_char() would save ~50 ms of server CPU per
column and million rows (100 ms without a guard for infinity and BC), and depend on DateStyle.

Whole rows: COPY sends one CopyData message per row (a protocol guarantee) and asyncpg hands
its sink whole messages, so every chunk ends at a row end; this is checked, not assumed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import ColumnElement, Select, literal_column
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter.db import DriverStatement
from exporter.errors import BrokenExport, TornRow
from exporter.formats import Block, Format
from exporter.queries import (
    ExportQuery,
    Keyed,
    Planned,
    batch_rows,
    build_plan,
    build_statement,
    key_arguments,
    plan_ranges,
    plan_row,
)

BLOCKS_AHEAD = 2  # blocks made ahead of the reader
# Each chunk asyncpg hands over costs ~50 us of Python; COPY sends 8 KB at a time, and a
# reader that keeps up gets them one by one (17,000 chunks for 1M users). Pausing 1 ms after
# a small chunk gathers ~40 KB per chunk: 3,500 chunks, client CPU 0.9 s -> 0.35 s.
GATHER_BYTES = 64 * 1024  # a chunk smaller than this means the reader is keeping up
GATHER_SECONDS = 0.001
STOP_WAIT = 0.25  # seconds an early stop waits for the next chunk before closing the connection
RANGE_END_WAIT = 5.0  # seconds an early stop lets a range's COPY run to its end
ROW_END_COLUMN: ColumnElement[str] = literal_column("E'\\r'")  # closes every CSV row


def copy_statement(query: ExportQuery, fmt: type[Format]) -> Select[Any]:
    """The ``SELECT`` that COPY runs for this export: ``build_statement``'s, with the
    row-end column COPY's CSV needs (formats/csv.py)."""
    return _with_row_end(build_statement(query, "postgresql", fmt.copy_shape), fmt)


def _with_row_end(statement: Select[Any], fmt: type[Format]) -> Select[Any]:
    if fmt.copy_format != "csv":  # rows end at the first line feed: no column needed
        return statement
    columns: list[ColumnElement[Any]] = list(statement.selected_columns)
    with_end: Select[Any] = statement.with_only_columns(*columns, ROW_END_COLUMN)
    return with_end


async def _driver_in_snapshot(conn: AsyncConnection) -> asyncpg.Connection:
    """asyncpg's connection, inside the transaction ``conn`` began. SQLAlchemy's adapter
    sends that BEGIN (with its isolation level and READ ONLY) only before its first
    statement, so a COPY sent straight to the driver first would run outside it."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert isinstance(driver, asyncpg.Connection), "copy_blocks needs asyncpg"
    if not driver.is_in_transaction():
        await conn.exec_driver_sql("SELECT 1")
    return driver


@dataclass
class _End:
    error: Exception | None = None


class _Stopped(Exception):
    """Raised by the sink of a COPY that is no longer wanted."""


class CopyOut:
    """One ``COPY ... TO STDOUT`` in a task of its own. asyncpg hands each chunk it reads
    to the sink, which makes it final and gathers chunks into blocks, up to
    ``BLOCKS_AHEAD`` blocks ahead of the reader: past that, asyncpg stops reading the
    socket and the server waits.

    Stopping it early must leave asyncpg's protocol in order. asyncpg cancels the COPY (a
    cancel request, then the next statement waits for it to be done) when its sink fails or
    is cancelled, but not when the task is cancelled just as a chunk has come in and before
    the task has run again: the protocol is then left mid-COPY. So the task is cancelled
    only while it waits in the sink; otherwise the sink is told to fail on the next chunk.
    If no chunk comes for ``STOP_WAIT`` seconds (a slow scan), ``stop`` gives up and says so.

    Whenever the sink raised (a stop, or a failure of the format's own), asyncpg has asked
    the server to cancel the COPY and makes the next statement wait for the server's answer.
    A COPY that had already ended when the sink raised (its last chunk read with the end of
    the command, as a small export is) is answered never, and the snapshot's rollback would
    wait forever: so the connection is tried once, within ``STOP_WAIT``, before it is given
    back (``_answers``), and otherwise closed.
    """

    def __init__(self, driver: asyncpg.Connection, sql: str, args: Sequence[Any],
                 fmt: type[Format], chunk_bytes: int, ahead: int = BLOCKS_AHEAD) -> None:
        self.fmt = fmt
        self.chunk_bytes = chunk_bytes
        # ahead=0: no bound (a range's COPY, bounded by its rows, runs while the one before
        # it is read)
        self.queue: asyncio.Queue[Block | _End] = asyncio.Queue(maxsize=ahead)
        self.parts: list[bytes] = []
        self.size = self.rows = 0
        self.first = True  # the first chunk goes out alone, so that the client sees bytes
        self.waiting = False  # the task waits in the sink: for room in the queue, or a pause
        self.stopping = False
        self.sink_raised = False  # asyncpg then cancels the COPY
        self.driver = driver
        self.task = asyncio.create_task(self._copy(driver, sql, args))

    async def _copy(self, driver: asyncpg.Connection, sql: str, args: Sequence[Any]) -> None:
        try:
            await driver.copy_from_query(
                sql, *args, output=self._sink, format=self.fmt.copy_format
            )
            if self.parts:
                await self.queue.put(self._block())
        except _Stopped:
            return
        except Exception as error:  # handed to the reader, which raises it
            await self.queue.put(_End(error))
        else:
            await self.queue.put(_End())

    async def _sink(self, chunk: bytes) -> None:
        try:
            await self._take(chunk)
        except BaseException:  # a stop (_Stopped, or the task cancelled in it) or a failure
            self.sink_raised = True
            raise

    async def _take(self, chunk: bytes) -> None:
        if self.stopping:
            raise _Stopped
        if not chunk.endswith(self.fmt.copy_row_end):
            raise TornRow(f"a COPY chunk of {len(chunk)} bytes ends inside a row")
        rows, data = self.fmt.copy_rows(chunk)
        self.parts.append(data)
        self.size += len(data)
        self.rows += rows
        if self.first or self.size >= self.chunk_bytes:
            self.first = False
            await self._wait(self.queue.put(self._block()))
        elif len(chunk) < GATHER_BYTES:
            # asyncpg reads the socket again only when the sink returns, so a short pause
            # lets the server's 8 KB writes gather into one larger chunk.
            await self._wait(asyncio.sleep(GATHER_SECONDS))

    async def _wait(self, waited: Awaitable[None]) -> None:
        self.waiting = True
        try:
            await waited
        finally:
            self.waiting = False

    def _block(self) -> Block:
        block = self.rows, self.fmt.copy_join(self.parts)
        self.parts.clear()
        self.size = self.rows = 0
        return block

    async def blocks(self) -> AsyncGenerator[Block, None]:
        while not isinstance(item := await self.queue.get(), _End):
            yield item
        if item.error is not None:
            raise item.error

    async def stop(self) -> bool:
        """End the COPY if it still runs; False if it could not be ended in order, and the
        connection must be closed (then ``abandon``)."""
        if self.task.done():
            return await self._answers()
        if self.waiting:
            self.task.cancel()
        else:
            self.stopping = True
            while not self.queue.empty():  # room for a put the task may be waiting on
                self.queue.get_nowait()
            await asyncio.wait({self.task}, timeout=STOP_WAIT)
            if not self.task.done():
                return False
        with suppress(asyncio.CancelledError):
            await self.task
        return await self._answers()

    async def _answers(self) -> bool:
        """Whether the connection takes a statement again after the COPY ended: always, unless
        the sink raised and asyncpg waits for an answer to its cancel that may never come."""
        if not self.sink_raised:
            return True
        try:
            await asyncio.wait_for(self.driver.execute("SELECT 1"), STOP_WAIT)
        except asyncpg.PostgresError:
            return True  # the cancel was answered, and aborted the transaction
        except (TimeoutError, asyncpg.InterfaceError):
            return False
        return True

    async def finish(self, seconds: float) -> bool:
        """Let the COPY run to its end, its blocks dropped: for a COPY whose rows are few
        (a range), rather than ``stop``, since asyncpg waits forever for a cancel that
        comes after the COPY's last message was read. False if it did not end in time."""
        await asyncio.wait({self.task}, timeout=seconds)
        while not self.queue.empty():
            self.queue.get_nowait()
        if not self.task.done():
            return False
        with suppress(Exception):  # a failure of a COPY no one reads any more
            await self.task
        return await self._answers()

    async def abandon(self) -> None:
        """End the task once its connection is closed."""
        self.task.cancel()
        with suppress(Exception, asyncio.CancelledError):
            await self.task


async def copy_blocks(
    conn: AsyncConnection, query: ExportQuery, fmt: type[Format], *, chunk_bytes: int
) -> AsyncGenerator[Block, None]:
    """The export's rows, in id order, as blocks of about ``chunk_bytes`` of whole rows in
    their final form: CSV rows each ending in CRLF (no header), NDJSON objects each ending
    in LF, JSON objects joined by ``,\\n`` (no brackets, no separator before or after).

    ``conn`` is inside the export's snapshot (``db.snapshot``). The first block goes out as
    soon as COPY's first chunk arrives, so that the client sees bytes at once. An error,
    such as the server ending the connection, is raised, never taken for the end.

    Closing the generator early cancels the COPY and leaves the connection usable (its
    transaction aborted), unless the server sent nothing for ``STOP_WAIT`` seconds: then
    the connection is closed and invalidated, and the snapshot must be left by the exception
    that closed the generator (a rollback); committing it would raise.
    """
    # COPY takes no parameters: asyncpg has the server quote_literal() each value into it.
    statement = DriverStatement(copy_statement(query, fmt), conn.dialect)
    driver = await _driver_in_snapshot(conn)
    copy = CopyOut(driver, statement.sql, statement.arguments(), fmt, chunk_bytes)
    try:
        async with aclosing(copy.blocks()) as blocks:
            async for block in blocks:
                yield block
    except Exception:
        await _invalidate_closed(conn)
        raise
    finally:
        await _end(conn, driver, copy)


async def copy_ranges(
    planner: AsyncConnection,
    readers: Sequence[AsyncConnection],
    query: ExportQuery,
    fmt: type[Format],
    *,
    chunk_bytes: int,
    range_rows: int,
) -> AsyncGenerator[Block, None]:
    """``copy_blocks``, with the server's rendering spread over several connections: the
    export is cut into ranges of ``range_rows`` rows by its key (planned on ``planner``), each one
    COPY, run by the readers in turn, so that while one range is read the next ones are
    rendered by other server processes. Every connection is in one snapshot
    (``db.shared_snapshot``). A range's count of rows is checked against its plan.

    At most one range per reader is ahead of the one being read, held in memory: about
    ``range_rows`` rendered rows each. Closing early lets each running COPY end (a range
    at most), dropping its rows, or closes its connection after ``RANGE_END_WAIT``.
    """
    statement = Keyed(lambda first: range_statement(query, fmt, first), planner.dialect)
    drivers = [await _driver_in_snapshot(conn) for conn in readers]
    ranges = _plan(planner, query, range_rows)
    running: deque[tuple[CopyOut, Planned, int]] = deque()  # oldest first, with its reader

    async def start(reader: int) -> None:
        planned = await anext(ranges, None)
        if planned is not None:
            sql, arguments = statement.call(planned.after, **key_arguments("until", planned.until))
            copy = CopyOut(drivers[reader], sql, arguments, fmt, chunk_bytes, 0)
            running.append((copy, planned, reader))

    try:
        for reader in range(len(drivers)):
            await start(reader)
        while running:
            copy, planned, reader = running[0]
            rows = 0
            async with aclosing(copy.blocks()) as blocks:
                async for block in blocks:
                    rows += block[0]
                    yield block
            if rows != planned.rows:
                raise BrokenExport(
                    f"the range after key {planned.after} gave {rows} rows for {planned.rows} "
                    "planned: the readers do not share one snapshot"
                )
            running.popleft()
            await start(reader)
    except Exception:
        await _invalidate_closed(planner, *readers)
        raise
    finally:
        try:
            for copy, _, reader in running:
                if not await copy.finish(RANGE_END_WAIT):
                    await _close(readers[reader], drivers[reader], copy)
        finally:
            await ranges.aclose()


async def _invalidate_closed(*connections: AsyncConnection) -> None:
    """Tell SQLAlchemy of each connection the error closed (the planner's too), or the
    snapshot's rollback fails on it and hides the error that closed it."""
    for conn in connections:
        if conn.invalidated:
            continue
        driver = (await conn.get_raw_connection()).driver_connection
        if driver is None or driver.is_closed():
            await conn.invalidate()


async def ends_idle_transactions(engine: AsyncEngine) -> bool:
    """Whether the server ends a transaction left idle for a while
    (``idle_in_transaction_session_timeout``). ``copy_ranges``' connections wait idle in
    their transactions while a slow client reads (a range done early, the planner), so on
    such a server an export takes one COPY on one connection, which stays busy."""
    async with engine.connect() as conn:
        setting = await conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout")
        return str(setting.scalar_one()) not in ("0", "0ms")


def range_statement(query: ExportQuery, fmt: type[Format], first: bool) -> Select[Any]:
    """``copy_statement`` for the rows of one planned range."""
    return _with_row_end(batch_rows(query, "postgresql", fmt.copy_shape, first), fmt)


def _plan(planner: AsyncConnection, query: ExportQuery, range_rows: int
          ) -> AsyncGenerator[Planned, None]:
    plan = Keyed(lambda first: build_plan(query, "postgresql", first), planner.dialect)

    async def step(after: tuple[Any, ...] | None, rows: int
                   ) -> tuple[tuple[Any, ...] | None, int]:
        # On the driver, as the COPYs are: one row needs none of SQLAlchemy's result.
        driver = await _driver_in_snapshot(planner)
        sql, arguments = plan.call(after, batch_rows=rows)
        return plan_row(await driver.fetchrow(sql, *arguments))

    return plan_ranges(step, query, range_rows)


async def _end(conn: AsyncConnection, driver: asyncpg.Connection, copy: CopyOut) -> None:
    """Stop a COPY that may still run, or else close its connection."""
    stopped = False
    try:
        stopped = await copy.stop()
    finally:
        if not stopped:
            await _close(conn, driver, copy)


async def _close(conn: AsyncConnection, driver: asyncpg.Connection, copy: CopyOut) -> None:
    """End a COPY that could not be stopped in order: the server ends it when it next
    writes to the closed socket, and SQLAlchemy drops the connection from its pool."""
    driver.terminate()
    await conn.invalidate()
    await copy.abandon()
