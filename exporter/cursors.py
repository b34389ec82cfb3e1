"""Rendered rows out of the database in blocks, by the fastest route each backend has.

Every route yields ``Block``s, ``(rows, bytes)``, joined by the export's encoder, inside the
caller's snapshot transaction; closing the generator stops the read and leaves the
connection free for the caller to end the transaction.

- SQLite: batches planned by id on one connection and rendered, each by one statement
  step that joins its rows (``group_concat``), in turn by several readers sharing one
  snapshot, through the driver (aiosqlite) with ``AHEAD`` batches queued on each reader's
  thread. SQLite releases the GIL for a whole batch, so two readers render on two cores
  while the loop sends. Row by row, each row would take the GIL back; through SQLAlchemy's
  result, each fetch would wait for the loop and each row would become a ``Row`` first.
- PostgreSQL: ``COPY ... TO STDOUT`` (``pg_copy.py``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from exporter.db import DriverStatement, driver_connection
from exporter.formats import Block, Encoder
from exporter.queries import ExportQuery, Planned, build_batch, build_plan, plan_ranges

AHEAD = 2  # batches queued per reader: enough to keep each one busy


def plan_batches(
    planner: AsyncConnection, query: ExportQuery, batch_rows: int
) -> AsyncGenerator[Planned, None]:
    """Split the export into batches of ``batch_rows`` rows by reading ids only (on its own
    connection, so that planning never waits behind a batch)."""
    plan = DriverStatement(build_plan(query), planner.dialect)

    async def step(after: int, rows: int) -> tuple[int | None, int]:
        driver = await driver_connection(planner)
        [(until, count)] = await driver.execute_fetchall(
            plan.sql, plan.arguments(batch_after=after, batch_rows=rows)
        )
        return until, count

    return plan_ranges(step, query, batch_rows)


async def sqlite_blocks(
    planner: AsyncConnection,
    readers: Sequence[AsyncConnection],
    query: ExportQuery,
    encoder: Encoder,
    batch_rows: int,
) -> AsyncGenerator[Block, None]:
    """The export's batches, rendered in turn by each reader: with two readers SQLite
    renders on two cores. Every connection is in the same snapshot (db.shared_snapshot)."""
    drivers = [await driver_connection(conn) for conn in readers]
    render = DriverStatement(
        build_batch(query, encoder.shape, encoder.separator.decode()),
        planner.dialect,
    )
    plan = plan_batches(planner, query, batch_rows)
    turns = itertools.cycle(drivers)
    pending: deque[tuple[asyncio.Future[Any], Planned]] = deque()

    async def submit() -> None:
        # aiosqlite runs requests one after another on its thread: batches queued on a
        # reader run back to back, whatever the loop is doing.
        planned = await anext(plan, None)
        if planned is not None:
            arguments = render.arguments(batch_after=planned.after, batch_until=planned.until)
            fetch = next(turns).execute_fetchall(render.sql, arguments)
            pending.append((asyncio.ensure_future(fetch), planned))

    try:
        for _ in range(len(drivers) * AHEAD):
            await submit()
        while pending:
            future, planned = pending[0]
            [(data, rows)] = await future
            pending.popleft()
            if rows != planned.rows:
                raise RuntimeError(
                    f"the batch after id {planned.after} gave {rows} lines for "
                    f"{planned.rows} planned rows: a row rendered as NULL, or the readers "
                    "do not share one snapshot"
                )
            await submit()
            block = data + encoder.terminator
            check_utf8(block)
            yield rows, block
    finally:
        # Queued batches still run on the readers' threads: let them end first.
        await asyncio.gather(*(future for future, _ in pending), return_exceptions=True)
        await plan.aclose()


def check_utf8(block: bytes) -> None:
    """SQLite keeps whatever bytes it was given as text; a row that is not UTF-8 fails the
    export (as decoding it would) rather than go out in a document that says UTF-8."""
    if not block.isascii():
        block.decode()
