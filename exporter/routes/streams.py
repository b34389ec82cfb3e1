"""``GET /streams/{table}``: a table followed live, as Server-Sent Events (follow.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import replace
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from exporter.follow import (
    FOLLOW,
    Followers,
    Row,
    check_followable,
    follow_rows,
    followed,
    last_event_key,
)
from exporter.openapi import BAD_PARAMETER, not_found
from exporter.params import parse_query
from exporter.routes.deps import CatalogDep, EngineDep, SettingsDep
from exporter.streaming import EVENT_STREAM_HEADERS, PrimedStream, response_body

router = APIRouter(tags=["exports"])
log = logging.getLogger("exporter.follow")

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
    found = followed(await catalog.get(table), settings)
    query = parse_query(found, [(key, value) for key, value in request.query_params.multi_items()
                                if key != FOLLOW])
    check_followable(query, settings, "/streams")
    after = last_event_key(found, last_event_id, query.after)
    followers: Followers = request.app.state.followers
    on_rows, on_end = followers.start("sse")
    rows = follow_rows(engine, followers.changes, replace(query, after=after), settings)
    # The first read is made here, while its failure can be an error status; each later
    # one runs shielded from the response's cancel scope (PrimedStream), so that a client
    # leaving mid-read cannot cut the connection's way back to the pool.
    events = await response_body(_events(rows, on_rows, on_end), ServerSentEvent())
    return ClosingEventSource(
        events, on_end=on_end, on_slow=followers.metrics.followers_slow.inc,
        shutdown_event=anyio.Event(), shutdown_grace_period=1,
        send_timeout=settings.follow_send_seconds, headers=EVENT_STREAM_HEADERS,
    )


@router.head("/streams/{table:path}", include_in_schema=False)
async def stream_table_head(request: Request, table: str, catalog: CatalogDep,
                            settings: SettingsDep) -> Response:
    """The headers GET would send, after the same checks (404, 422), without a follower."""
    found = followed(await catalog.get(table), settings)
    check_followable(parse_query(found, request.query_params.multi_items()), settings,
                     "/streams")
    return Response(media_type="text/event-stream", headers=EVENT_STREAM_HEADERS)


async def _events(
    rows: AsyncGenerator[Sequence[Row] | None, None],
    on_rows: Callable[[int, int], None], on_end: Callable[[str], None],
) -> AsyncGenerator[ServerSentEvent, None]:
    """The first read, then the reconnection delay, then each batch's rows."""
    outcome = "failed"
    try:
        batch = await anext(rows)
        yield ServerSentEvent(retry=RETRY_MILLISECONDS, comment="rows follow")
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
    except (GeneratorExit, asyncio.CancelledError):
        outcome = "disconnected"
        raise
    finally:
        await rows.aclose()
        on_end(outcome)


class ClosingEventSource(EventSourceResponse):
    """An event stream whose events are closed however the response ends (a client gone,
    a send timed out), and whose slot is given back even if they never started."""

    def __init__(self, content: PrimedStream[ServerSentEvent], *, on_end: Callable[[str], None],
                 on_slow: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.events = content
        self.on_end = on_end
        self.on_slow = on_slow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.warning("a live stream's client took no event for %s s: cut", self.send_timeout)
            self.on_slow()
            raise
        finally:
            await self.events.aclose()
            self.on_end("disconnected")  # a no-op if the events ended it already
