"""Every error the service raises on purpose, and the HTTP answer each one becomes.

    ExporterError                 500  base: carries status, code, message and details
    ├── Unauthorized              401  API keys are set and the request lacks a valid
    │                                  Authorization: Bearer <key> (with WWW-Authenticate)
    ├── LoopbackOnly              403  no API keys, not told to be open, and the request
    │                                  came in on an address that is not loopback
    ├── InvalidParameter          422  a query parameter, body field or option is wrong;
    │                                  names the parameter, the bad value, what is valid
    ├── NotFound                  404  no such resource (also every name or id that
    │                                  would reach outside the served directories)
    ├── Unrepresentable           422  a value the asked format cannot hold (an
    │                                  infinite date in Parquet)
    ├── Conflict                  409  the resource is not in a state that allows it
    │                                  (a download of a job that has not succeeded,
    │                                  a cancel of a finished job)
    ├── Gone                      410  it existed but has expired (a job's file)
    ├── PreconditionFailed        412  If-Match / If-Unmodified-Since did not hold
    ├── RangeNotSatisfiable       416  no range of the Range header lies within the file
    │                                  (with Content-Range: bytes */<size>)
    ├── ExportsBusy               503  every export slot is taken (with Retry-After)
    │   └── FollowersBusy         503  every live-stream slot is taken (follow.py)
    ├── DatabaseUnavailable       503  the database could not be reached, was busy, or no
    │                                  pooled connection was free, before the first byte
    │                                  was sent (with Retry-After)
    ├── StorageUnavailable        503  the bucket that holds job files could not be
    │   │                              reached (a job that meets it runs again later)
    │   └── StorageRefused        503  the bucket answered no: credentials refused, no
    │                                  such bucket, access denied (a job that meets it
    │                                  fails: only an operator can cure it)
    └── BrokenExport              500  an export's reads disagree with their plan (a
        │                              batch gave other rows than planned, a row rendered
        │                              as nothing, readers not in one snapshot): a bug
        │                              or a damaged database, never the client's doing
        └── TornRow               500  a COPY chunk that does not end at a row end
    anything else                 500  a bug: JSON too, and logged

The body is always JSON: ``{"error": code, "message": ..., **details}``. A failure after
the first byte of a stream cannot change the status any more; ``streaming.py`` aborts
the connection instead, so that the client sees an incomplete body.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# SQLAlchemy's word for "the database cannot serve us now": 503 wherever it escapes to
# (app.py), and a schedule's tick that meets it waits for the next one (schedules.py).
DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeout)
# The same, raised before an export's first byte, where the driver is called directly
# (sqlite3's own: cursors.py, db.py) and a connection may fail below SQLAlchemy.
DATABASE_UNREACHABLE = (*DATABASE_DOWN, OSError, asyncio.TimeoutError, sqlite3.OperationalError)
DATABASE_RETRY_AFTER = 1  # seconds: a busy or restarting database is often back by then
STORAGE_RETRY_AFTER = 5  # seconds: a bucket that did not answer

# Errors that say the database went away for a moment, not that the job cannot work: a
# job whose run fails on one is run again (worker.py). By errno: a refused, reset or
# broken connection, a timeout; a full disk is not transient (it stays full until someone
# acts), nor is anything about the data or the query.
TRANSIENT_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
                              errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                              errno.ENETUNREACH})
# By PostgreSQL SQLSTATE class or code: 08 connection exceptions, 57P01-57P03 (the server
# shutting down, restarting or not yet accepting), 53300 (too many connections), 40001 and
# 40P01 (serialization failure, deadlock: retrying is what they ask for).
TRANSIENT_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300", "40001", "40P01")
# SQLite: busy or locked by another connection, beyond the busy timeout.
TRANSIENT_SQLITE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def is_transient(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, is one the database's coming
    back would cure (a job then runs again)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_itself(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _transient_itself(error: BaseException) -> bool:
    if isinstance(error, StorageUnavailable):
        return not isinstance(error, StorageRefused)
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, TimeoutError | asyncio.TimeoutError | PoolTimeout):
        return True
    if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
        return True
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) in TRANSIENT_SQLITE_CODES or \
            "database is locked" in str(error)
    sqlstate = getattr(error, "sqlstate", None)  # asyncpg's errors
    if isinstance(sqlstate, str):
        return sqlstate.startswith(TRANSIENT_SQLSTATES)
    # asyncpg's own, without a SQLSTATE: a connection found closed, or one left in a state it
    # cannot go on from when the server ended it mid-COPY ("cannot switch to state 12;
    # another operation is in progress"). A new run opens new connections; were it a bug
    # of ours, the job still fails after EXPORTER_JOB_MAX_ATTEMPTS runs, with this error.
    name, module = type(error).__name__, type(error).__module__
    if module.startswith("asyncpg") and name == "InternalClientError":
        return True
    return name in ("ConnectionDoesNotExistError", "InterfaceError") and \
        "connection" in str(error).lower() and "closed" in str(error).lower()


ECHO_LIMIT = 200  # characters of a client's value or header quoted back in an error


def echo(value: object) -> object:
    """A client's value made safe to quote back in a JSON error: short, encodable (no lone
    surrogates), and no NaN or giant number that JSON cannot carry."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) <= 2**63:
        return value
    text = value if isinstance(value, str) else repr(value)
    return text[:ECHO_LIMIT].encode("utf-8", "backslashreplace").decode("utf-8")


REPORTED_ERRORS = 20  # bad parameters named in one 422 (the rest are counted)


class ExporterError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}

    def headers(self) -> dict[str, str]:
        return {}


class Unauthorized(ExporterError):
    """The message says what was wrong (no header, another scheme, an unknown key) but never
    quotes the header back: whatever was sent there may be someone's key."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, oauth_error: str | None = None) -> None:
        super().__init__(message)
        self.oauth_error = oauth_error  # RFC 6750 3.1: absent when no credentials were sent

    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="exporter"'
        if self.oauth_error:
            challenge += f', error="{self.oauth_error}"'
        return {"WWW-Authenticate": challenge}


class LoopbackOnly(ExporterError):
    status = 403
    code = "loopback_only"

    def __init__(self, address: str) -> None:
        super().__init__(
            f"this service has no API keys (EXPORTER_API_KEYS) and is not meant to be open "
            f"(EXPORTER_ALLOW_OPEN), so it answers on loopback addresses only, not on "
            f"{echo(address)}",
            address=echo(address),
        )


class InvalidParameter(ExporterError):
    """One bad parameter, or several (``also``): the message then names each, so that a
    client fixes them all at once rather than one per try."""

    status = 422
    code = "invalid_parameter"

    def __init__(
        self, parameter: str, value: object, reason: str, valid: Sequence[str] | None = None,
        also: Sequence[InvalidParameter] = (),
    ) -> None:
        shown = echo(value)
        self.parameter: str = str(echo(parameter))  # a client's name may hold a lone surrogate
        self.value = value
        self.reason = reason
        self.valid = valid
        self.also = tuple(also)
        self.said: str = f"{self.parameter}={shown!r}: {reason}"  # without the valid values
        self.own = self.said
        if valid is not None:
            self.own += f"; valid values: {', '.join(valid)}"
        details: dict[str, Any] = {"parameter": self.parameter, "value": shown}
        if valid is not None:
            details["valid"] = list(valid)
        listed = self.also[:REPORTED_ERRORS - 1]  # a client's many bad names: a short 422
        if also:
            details["errors"] = [{"parameter": e.parameter, "value": echo(e.value),
                                  "message": e.said} for e in (self, *listed)]
        # The first in full (its valid values); the others without theirs, which may be a
        # table's every column each time; at most REPORTED_ERRORS of them.
        parts = [self.own, *(e.said for e in listed)]
        if len(self.also) > len(listed):
            parts.append(f"and {len(self.also) - len(listed)} more bad parameters")
        super().__init__("; ".join(parts), **details)

    def each(self) -> list[InvalidParameter]:
        """Every bad parameter, one error each."""
        return [InvalidParameter(self.parameter, self.value, self.reason, self.valid),
                *self.also]

    def within(self, prefix: str) -> InvalidParameter:
        """The same error for a parameter nested in a JSON body: ``filters.plan``."""
        return InvalidParameter(f"{prefix}.{self.parameter}", self.value, self.reason,
                                self.valid, [error.within(prefix) for error in self.also])

    @staticmethod
    def combined(errors: Sequence[InvalidParameter]) -> InvalidParameter:
        """One error naming every one of ``errors`` (the first is the ``parameter``)."""
        first, *rest = [single for error in errors for single in error.each()]
        return InvalidParameter(first.parameter, first.value, first.reason, first.valid, rest)


class NotFound(ExporterError):
    status = 404
    code = "not_found"


class Unrepresentable(ExporterError):
    """A value the asked format has no way to hold (an infinite date in Parquet)."""

    status = 422
    code = "unrepresentable"


class Conflict(ExporterError):
    status = 409
    code = "conflict"


class Gone(ExporterError):
    status = 410
    code = "gone"


class PreconditionFailed(ExporterError):
    status = 412
    code = "precondition_failed"

    def __init__(self, header: str, value: str, etag: str) -> None:
        shown = value[:ECHO_LIMIT]
        super().__init__(
            f"{header}: {shown!r} does not hold for the current file (ETag {etag}); "
            "fetch it again without the condition",
            header=header, value=shown, etag=etag,
        )


class RangeNotSatisfiable(ExporterError):
    status = 416
    code = "range_not_satisfiable"

    def __init__(self, range_header: str, size: int) -> None:
        shown = range_header[:ECHO_LIMIT]  # a header can be 64 KiB; the answer need not be
        super().__init__(
            f"Range: {shown!r} selects no byte of a {size}-byte file; "
            f"ranges must start below {size}",
            range=shown, size=size,
        )
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}", "Accept-Ranges": "bytes"}


class ExportsBusy(ExporterError):
    status = 503
    code = "exports_busy"
    slots = "export slots"
    setting = "EXPORTER_MAX_CONCURRENT_EXPORTS"

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(
            f"all {limit} {self.slots} are in use ({self.setting}); retry in {retry_after} s",
            limit=limit,
        )
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class FollowersBusy(ExportsBusy):
    code = "followers_busy"
    slots = "live streams"
    setting = "EXPORTER_MAX_FOLLOWERS"


class DatabaseUnavailable(ExporterError):
    status = 503
    code = "database_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(DATABASE_RETRY_AFTER)}


class StorageUnavailable(ExporterError):
    status = 503
    code = "storage_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(STORAGE_RETRY_AFTER)}


class StorageRefused(StorageUnavailable):
    code = "storage_refused"


class BrokenExport(ExporterError, RuntimeError):
    """Raised mid-export, almost always after the first byte (the body is then aborted)."""

    code = "broken_export"


class TornRow(BrokenExport):
    """A COPY chunk that does not end at a row end: the protocol promises it always does."""
