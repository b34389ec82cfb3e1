"""The ingesting side, for programs: an export's rows in key order, each exactly once,
whatever happens to the connection on the way.

A dropped connection, a body the service aborted (it never makes a cut export look complete,
see streaming.py), a 503 with ``Retry-After``, a server restarting: the client waits, then
asks for the rows after the key of the last row it handed out (``after=``), so that a loop
over ``rows()`` sees no gap and no duplicate. It gives up (``GaveUp``) after
``Retry.attempts`` failures in a row with no row between them, and stops at once on a refusal
(``Refused``: a 4xx, which the same request would get again).

    with Client("http://127.0.0.1:8000") as client:
        for row in client.rows("users", params={"country": "DE"}):
            store(row)

Resuming needs the table's primary key among the exported fields, and a format whose rows
can be told apart as they arrive: NDJSON (a line each) or CSV (a record each, quoted line
breaks and all). A resumed export reads a new snapshot: rows committed meanwhile with a key
beyond the last one handed out are included, as if the export had started later.

Requests and retries are written once, here, without I/O (``_Export``); ``Client`` and
``AsyncClient`` only move bytes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

API_KEY_VARIABLE = "EXPORTER_API_KEY"
RESUMABLE = ("ndjson", "csv")
# Key kinds whose exported text is coarser than the value (timestamps and times to the
# second): after= that text would give the rows of the same second again.
INEXACT_KEYS = ("timestamp", "time")

Params = Mapping[str, str | int] | Sequence[tuple[str, str | int]] | None
Progress = Callable[[int, int, int | None], None]  # rows, bytes, total rows (when counted)


class ExportError(Exception):
    """The export could not be had."""


class Refused(ExportError):
    """The service refused the request (a 4xx): asking again would not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class GaveUp(ExportError):
    """Every attempt failed, ``Retry.attempts`` in a row, with no row between them."""


@dataclass(frozen=True)
class Retry:
    """How long to keep trying: ``attempts`` failures in a row (any row received starts the
    count again), waiting ``first_wait`` seconds, doubling up to ``longest_wait``, or what a
    503's ``Retry-After`` asks (up to ``longest_wait`` too)."""

    attempts: int = 8
    first_wait: float = 0.5
    longest_wait: float = 30.0

    def wait(self, failures: int, retry_after: float | None) -> float:
        backoff = min(self.first_wait * 2.0 ** min(failures - 1, 30), self.longest_wait)
        if retry_after is None:
            return backoff
        # No sooner than a 503 asks, nor than the backoff: a short Retry-After must not use
        # up the attempts in seconds while every export slot is taken.
        return max(min(max(retry_after, 0.0), self.longest_wait), backoff)


class Failures:
    """A run of failures of one thing, each answered with how long to wait, until there
    are ``Retry.attempts`` of them in a row: then GaveUp. ``progressed`` starts a new run."""

    def __init__(self, retry: Retry, what: str) -> None:
        self.retry, self.what, self.count = retry, what, 0

    def progressed(self) -> None:
        self.count = 0

    def wait(self, error: Exception, done: str = "") -> float:
        """Seconds to wait before trying again, or GaveUp."""
        self.count += 1
        if self.count >= self.retry.attempts:
            raise GaveUp(f"gave up on {self.what} after {self.count} failed attempts in a "
                         f"row{done}: {_describe(error)}") from error
        return self.retry.wait(self.count, getattr(error, "retry_after", None))


class _Retryable(Exception):
    """A response worth asking again for: 5xx, 429, 408."""

    def __init__(self, status: int, message: str, retry_after: float | None) -> None:
        super().__init__(f"{status}: {message}")
        self.retry_after = retry_after


def _message(response: httpx.Response) -> str:
    try:
        body = json.loads(response.read())
        return str(body.get("message") or body.get("detail") or body)
    except (ValueError, AttributeError):
        return response.reason_phrase


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def check(response: httpx.Response) -> None:
    """Raise ``Refused`` for a 4xx, ``_Retryable`` for a status worth asking again for."""
    status = response.status_code
    if status < 400:
        return
    if status in (408, 429) or status >= 500:
        retry_after = _retry_after(response.headers.get("retry-after"))
        raise _Retryable(status, _message(response), retry_after)
    raise Refused(status, _message(response))


class Records:
    """Complete records out of a body that arrives in pieces, kept as the bytes received.

    NDJSON: a record is a line. CSV (RFC 4180): a record ends at a line break outside
    quotes; a quoted field may hold line breaks, and inside one every quote is doubled, so
    an odd count of quotes since the record began means a field is still open."""

    def __init__(self, csv_records: bool) -> None:
        self.csv = csv_records
        self.tail = b""  # the record being received
        self.open_quote = 0  # CSV: 1 while the tail is inside a quoted field
        self.last = b""  # the last complete record

    def feed(self, data: bytes) -> tuple[bytes, int]:
        """The complete records this piece ends, as one block, and how many they are."""
        if self.csv:
            ends, last_end, before_last = self._csv_ends(data)
        else:
            last_end = data.rfind(b"\n")
            ends = data.count(b"\n") if last_end >= 0 else 0
            before_last = data.rfind(b"\n", 0, last_end) if last_end > 0 else -1
        if last_end < 0:
            self.tail += data
            return b"", 0
        block = self.tail + data[:last_end + 1]
        # The last record: after the one before it, or the whole block if it is the only one
        # (then it may have begun in the tail).
        self.last = data[before_last + 1:last_end + 1] if ends > 1 else block
        self.tail = data[last_end + 1:]
        return block, ends

    def _csv_ends(self, data: bytes) -> tuple[int, int, int]:
        quote_open, ends, last_end, before_last, position = self.open_quote, 0, -1, -1, 0
        while (newline := data.find(b"\n", position)) >= 0:
            quote_open ^= data.count(b'"', position, newline) & 1
            if not quote_open:
                ends, before_last, last_end = ends + 1, last_end, newline
            position = newline + 1
        self.open_quote = quote_open ^ (data.count(b'"', position) & 1)
        return ends, last_end, before_last


def first_record(block: bytes, csv_records: bool) -> tuple[bytes, bytes]:
    """A block's first record and the rest."""
    records = Records(csv_records)
    position = 0
    while True:
        newline = block.find(b"\n", position)
        if newline < 0:
            return block, b""
        if records.feed(block[position:newline + 1])[1]:
            return block[:newline + 1], block[newline + 1:]
        position = newline + 1


def csv_values(record: bytes) -> list[str]:
    return next(csv.reader(io.StringIO(record.decode("utf-8"), newline="")))


class _Export:
    """One export being read, over as many responses as it takes: what to ask for next,
    which bytes are rows, how long to wait after a failure. No I/O."""

    def __init__(self, described: Mapping[str, Any], fmt: str, params: Params, retry: Retry,
                 count: bool) -> None:
        """``described``: the table as ``GET /tables/{table}`` describes it."""
        table, key = str(described["name"]), tuple(described["primary_key"])
        if fmt not in RESUMABLE:
            raise ValueError(f"format {fmt!r} cannot be resumed; use one of {RESUMABLE}")
        if not key:
            raise ExportError(f"table {table!r} has no primary key: an interrupted export "
                              "of it could not be resumed")
        pairs = [(str(k), str(v)) for k, v in (
            params.items() if isinstance(params, Mapping) else (params or ()))]
        fields = next(([f.strip() for f in v.split(",")] for k, v in pairs if k == "fields"),
                      None)
        if fields is not None and not set(key) <= set(fields):
            raise ValueError(f"fields must include the key ({', '.join(key)}) to resume")
        kinds = {column["name"]: column["kind"] for column in described["columns"]}
        # after_id is the demo's name for after, unless the table has a column of that name.
        self.resume_names = ("after",) if "after_id" in kinds else ("after", "after_id")
        self.inexact = [name for name in key if kinds.get(name) in INEXACT_KEYS]
        # SQLite lets a key not declared NOT NULL hold NULL: such rows come first, and no
        # after= comes after one of them (CSV cannot even tell it from an empty text).
        self.nullable = [column["name"] for column in described["columns"]
                         if column["name"] in key and column.get("nullable")]
        self.fields = fields
        self.table, self.fmt, self.key, self.retry = table, fmt, key, retry
        self.path = f"/exports/{quote(table, safe='')}.{fmt}"
        self.limit = next((int(v) for k, v in pairs if k == "limit"), None)
        self.params = [(k, v) for k, v in pairs if k not in (*self.resume_names, "limit")]
        # An after= given is asked as given, until a row arrives; then after the last row.
        self.params += [(k, v) for k, v in pairs if k in self.resume_names]
        self.count = count
        self.asked = False  # one request at least, even for limit=0: its header, its 422
        self.rows = 0  # handed out
        self.bytes = 0
        self.total: int | None = None
        self.failures = Failures(retry, self.path)
        self.header: bytes | None = None
        self.last = b""  # the last row handed out: resumed after
        self.records = Records(self.csv)
        self.expect_header = False

    @property
    def csv(self) -> bool:
        return self.fmt == "csv"

    @property
    def done(self) -> bool:
        return self.asked and self.limit is not None and self.rows >= self.limit

    def request(self) -> tuple[str, httpx.QueryParams, dict[str, str]]:
        """Path, query and headers of the next request."""
        params = list(self.params)
        if self.rows:
            params = [(k, v) for k, v in params if k not in self.resume_names]
            params.append(("after", self._last_key()))
        if self.limit is not None:
            params.append(("limit", str(self.limit - self.rows)))
        headers = {"Accept-Encoding": "identity"}
        if self.count and self.total is None:  # once: each count is a full count(*)
            headers["Prefer"] = "count=exact"
        return self.path, httpx.QueryParams(tuple(params)), headers

    def opened(self, response: httpx.Response) -> None:
        check(response)
        if response.status_code != 200:  # a redirect's body is not the export
            raise ExportError(f"{self.path} answered {response.status_code} "
                              f"{response.reason_phrase}, not 200 and the export")
        self.asked = True
        if self.count and self.total is None and "x-total-count" in response.headers:
            self.total = self.rows + int(response.headers["x-total-count"])
        self._body()

    def _body(self) -> None:
        """A body begins: no record received yet, a CSV header first."""
        self.records = Records(self.csv)
        self.expect_header = self.csv

    def take(self, data: bytes) -> tuple[bytes, int]:
        """The rows these bytes complete (a CSV header, the same on every response, is
        kept as ``header`` and not counted)."""
        block, rows = self.records.feed(data)
        if rows and self.expect_header:
            header, block = first_record(block, csv_records=True)
            rows -= 1
            self.expect_header = False
            if self.header is not None and header != self.header:
                raise ExportError(f"the table's columns changed while it was exported: "
                                  f"header {self.header!r}, then {header!r}")
            self.header = header
        if rows:
            self.rows += rows
            self.bytes += len(block)
            self.last = self.records.last
            self.failures.progressed()
        return block, rows

    def resume(self, stored: Iterable[bytes]) -> int:
        """Go on after the rows of a body stored elsewhere (a partial file, in pieces), read
        as a response's body is; how many of its bytes are whole rows (and the header)."""
        self._body()
        kept = 0
        for data in stored:
            block, _rows = self.take(data)
            kept += len(block)
        return kept + len(self.header or b"")

    def ended(self) -> None:
        """The body ended as a complete response does: it must end with a whole record."""
        if self.records.tail:
            raise ExportError("the export's body ended inside a record: "
                              f"{self.records.tail[:80]!r}")

    def failed(self, error: Exception) -> float:
        """Seconds to wait before asking again, or GaveUp."""
        return self.failures.wait(error, f", {self.rows} rows in")

    def _last_key(self) -> str:
        if self.inexact:
            raise ExportError(
                f"cannot resume {self.path} exactly: its key ({', '.join(self.inexact)}) is "
                "exported to the second, so after= would give that second's rows again; "
                f"{self.rows} rows were handed out")
        record = self.last
        if self.csv:
            values = dict(zip(csv_values(self.header or b""), csv_values(record), strict=False))
            missing = [name for name in self.key if name not in values]
            if missing:
                raise ExportError(f"the rows have no {', '.join(missing)}: not an export of "
                                  f"{self.table!r} with its key")
            parts = [values[name] for name in self.key]
            held = [name for name in self.nullable if values[name] == ""]
        else:
            # Numbers as their exported text: a float would come back as 5e-05, or rounded.
            row = json.loads(record, parse_float=str)
            if not isinstance(row, dict) or any(name not in row for name in self.key):
                raise ExportError(f"the last row has no key ({', '.join(self.key)}): not an "
                                  f"export of {self.table!r}: {record[:80]!r}")
            parts = [_key_text(row[name]) for name in self.key]
            held = [name for name in self.key if row[name] is None]
        if held:
            raise ExportError(
                f"cannot resume {self.path} after its row {self.rows}: its key holds NULL "
                f"(or, in CSV, an empty text) in {', '.join(held)}; such rows come first and "
                "no after= comes after them: export again from the start")
        if any("," in part for part in parts[:-1]):
            raise ExportError(f"cannot resume after key {parts}: a value of a key column "
                              "other than the last holds a comma, which after= cannot carry")
        return ",".join(parts)

    def parse(self, block: bytes) -> Iterator[dict[str, Any]]:
        if self.csv:
            names = csv_values(self.header or b"")
            for values in csv.reader(io.StringIO(block.decode("utf-8"), newline="")):
                yield dict(zip(names, values, strict=True))
        else:
            for line in block.split(b"\n")[:-1]:
                yield json.loads(line)


def _key_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


RETRYABLE = (httpx.TransportError, _Retryable)


async def _sleep(seconds: float) -> None:
    # asyncio is imported when an async client first waits: its import is a third of the
    # start of `exporter pull`, which never needs it.
    import asyncio

    await asyncio.sleep(seconds)


def _verifies(base_url: str) -> bool:
    """Certificates are checked for https; for http, no TLS context is made at all (loading
    the CA bundle was 16 ms of `exporter pull`'s start)."""
    return not base_url.lower().startswith("http:")


def _headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get(API_KEY_VARIABLE)
    return {"Authorization": f"Bearer {key}"} if key else {}


class Client:
    """A blocking client; ``AsyncClient`` is its twin for asyncio programs."""

    def __init__(self, base_url: str, *, api_key: str | None = None, retry: Retry = Retry(),
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.retry = retry
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=_headers(api_key),
                                 timeout=timeout, transport=transport,
                                 verify=_verifies(base_url))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def get_json(self, path: str) -> Any:
        """``GET path`` as JSON, retried as exports are."""
        failures = Failures(self.retry, path)
        while True:
            try:
                response = self.http.get(path)
                check(response)
                return response.json()
            except RETRYABLE as error:
                time.sleep(failures.wait(error))

    def table(self, name: str) -> dict[str, Any]:
        """``GET /tables/{name}``: the table's columns and primary key."""
        table: dict[str, Any] = self.get_json(f"/tables/{quote(name, safe='')}")
        return table

    def rows(self, table: str, format: str = "ndjson", params: Params = None
             ) -> Iterator[dict[str, Any]]:
        """The export's rows, in key order, each once: NDJSON rows as JSON objects, CSV rows
        as ``{column: text}``."""
        export = self.export(table, format, params)
        for block, _rows in self.blocks(export):
            yield from export.parse(block)

    def export(self, table: str, format: str = "ndjson", params: Params = None, *,
               count: bool = False) -> _Export:
        return _Export(self.table(table), format, params, self.retry, count)

    def blocks(self, export: _Export, progress: Progress | None = None
               ) -> Iterator[tuple[bytes, int]]:
        """Whole rows as they arrive, ``(bytes, rows)``, resumed after every failure."""
        while not export.done:
            path, params, headers = export.request()
            try:
                with self.http.stream("GET", path, params=params, headers=headers) as response:
                    export.opened(response)
                    for data in response.iter_raw():
                        block, rows = export.take(data)
                        if rows:
                            yield block, rows
                            if progress:
                                progress(export.rows, export.bytes, export.total)
                    export.ended()
                    return
            except RETRYABLE as error:
                time.sleep(export.failed(error))


class AsyncClient:
    """``Client`` for asyncio: ``async for row in client.rows(...)``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, retry: Retry = Retry(),
                 timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.retry = retry
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"),
                                      headers=_headers(api_key), timeout=timeout,
                                      transport=transport, verify=_verifies(base_url))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def get_json(self, path: str) -> Any:
        failures = Failures(self.retry, path)
        while True:
            try:
                response = await self.http.get(path)
                check(response)
                return response.json()
            except RETRYABLE as error:
                await _sleep(failures.wait(error))

    async def table(self, name: str) -> dict[str, Any]:
        table: dict[str, Any] = await self.get_json(f"/tables/{quote(name, safe='')}")
        return table

    async def rows(self, table: str, format: str = "ndjson", params: Params = None
                   ) -> AsyncIterator[dict[str, Any]]:
        export = await self.export(table, format, params)
        async for block, _rows in self.blocks(export):
            for row in export.parse(block):
                yield row

    async def export(self, table: str, format: str = "ndjson", params: Params = None, *,
                     count: bool = False) -> _Export:
        return _Export(await self.table(table), format, params, self.retry, count)

    async def blocks(self, export: _Export, progress: Progress | None = None
                     ) -> AsyncIterator[tuple[bytes, int]]:
        while not export.done:
            path, params, headers = export.request()
            try:
                async with self.http.stream("GET", path, params=params,
                                            headers=headers) as response:
                    if response.status_code >= 400:
                        await response.aread()  # the error's message, for Refused
                    export.opened(response)
                    async for data in response.aiter_raw():
                        block, rows = export.take(data)
                        if rows:
                            yield block, rows
                            if progress:
                                progress(export.rows, export.bytes, export.total)
                    export.ended()
                    return
            except RETRYABLE as error:
                await _sleep(export.failed(error))
