"""``GET /streams/{table}``: a table followed live, as Server-Sent Events (follow.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import suppress
from dataclasses import replace
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from exporter.errors import DATABASE_UNREACHABLE, DatabaseUnavailable
from exporter.follow import FOLLOW, Followers, Row, check_followable, follow_rows, last_event_key
from exporter.openapi import BAD_PARAMETER, not_found
from exporter.params import parse_query
from exporter.routes.deps import CatalogDep, EngineDep, SettingsDep

router = APIRouter(tags=["exports"])

RETRY_MILLISECONDS = 2000  # how soon an EventSource reconnects after the stream ends
# Characters an event id cannot hold (the field ends at a line break; NUL resets it).
NOT_IN_IDS = frozenset("\r\n\x00")


@router.get(
    "/streams/{table:path}",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "One event per row (its id the row's key), then each "
                                    "new row as it is committed."}}
    | not_found("No such table: `valid` lists those there are.") | BAD_PARAMETER
    | {503: {"description": "Every live-stream slot is taken (EXPORTER_MAX_FOLLOWERS), or "
                            "the database is unreachable; ask again after Retry-After."}},
)
async def stream_table(
    request: Request,
    table: Annotated[str, Path(description="A table with a one-column primary key.")],
    engine: EngineDep,
    settings: SettingsDep,
    catalog: CatalogDep,
    last_event_id: Annotated[str | None, Header(
        description="Sent by an EventSource that reconnects: the key of the last row it "
                    "got; the stream resumes after it.")] = None,
) -> EventSourceResponse:
    """Server-Sent Events of a table's rows in key order: the rows after `after=` (or
    `Last-Event-ID`), then each new one as it is committed, until the client leaves. The
    export's filters and `fields=` apply; each event's data is the row as NDJSON writes it,
    its id the row's key, so that an EventSource resumes by itself."""
    found = await catalog.get(table)
    query = parse_query(found, [(key, value) for key, value in request.query_params.multi_items()
                                if key != FOLLOW])
    check_followable(query, "/streams")
    after = last_event_key(found, last_event_id, query.after)
    followers: Followers = request.app.state.followers
    on_rows, on_end = followers.start("sse")
    rows = follow_rows(engine, followers.changes, replace(query, after=after), settings)
    try:
        first = await anext(rows)
    except BaseException as exc:
        await rows.aclose()
        on_end("failed")
        if isinstance(exc, DATABASE_UNREACHABLE):
            raise DatabaseUnavailable(f"the database could not be read: {exc}") from exc
        raise
    shutdown = anyio.Event()
    return ClosingEventSource(
        _events(first, rows, on_rows, on_end),
        shutdown_event=shutdown,
        shutdown_grace_period=1,
        send_timeout=settings.follow_send_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    first: Sequence[Row] | None, rows: AsyncGenerator[Sequence[Row] | None, None],
    on_rows: Callable[[int, int], None], on_end: Callable[[str], None],
) -> AsyncIterator[ServerSentEvent]:
    outcome = "failed"
    try:
        yield ServerSentEvent(retry=RETRY_MILLISECONDS, comment="rows follow")
        batch = first
        while True:
            if batch is None:
                yield ServerSentEvent(comment="keepalive")
            for row in batch or ():
                yield ServerSentEvent(
                    data=row.json, id=None if NOT_IN_IDS & set(row.key) else row.key)
            on_rows(len(batch or ()), 0)
            try:
                batch = await anext(rows)
            except StopAsyncIteration:
                break
        outcome = "completed"
    except BaseException as exc:
        if isinstance(exc, GeneratorExit | anyio.get_cancelled_exc_class()):
            outcome = "disconnected"
        raise
    finally:
        await rows.aclose()
        on_end(outcome)


class ClosingEventSource(EventSourceResponse):
    """An event stream whose events generator is closed however the response ends (a
    client gone, a send timed out), so that its slot is given back at once."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            iterator: Any = self.body_iterator
            with suppress(Exception):
                await iterator.aclose()
