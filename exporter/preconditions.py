"""Conditional requests (RFC 9110 section 13): validators, and the order they run in.

13.2.2 fixes the order: If-Match (else If-Unmodified-Since) may fail with 412, then
If-None-Match (else If-Modified-Since) may answer 304, and only then does If-Range decide
whether Range applies. Entity tags compare strongly for If-Match and If-Range, weakly for
If-None-Match. Dates that do not parse, and date headers sent twice, are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from typing import NamedTuple

from starlette.datastructures import Headers

from exporter.errors import PreconditionFailed

ENTITY_TAG = re.compile(r'(W/)?("[\x21\x23-\x7e\x80-\xff]*")')
# 8.8.2.2: a modification date is a strong validator only once that second is over, as
# the file could change again within it. If-Range dates newer than this send the whole file.
STRONG_DATE_AGE = 1


class Validators(NamedTuple):
    etag: str  # a strong entity tag, quoted: '"<sha256 hex>"'
    last_modified: int  # whole seconds since the epoch: HTTP dates are no finer

    @property
    def http_last_modified(self) -> str:
        return http_date(self.last_modified)


@dataclass(frozen=True)
class Conditions:
    """The request headers that make a GET conditional or partial."""

    if_match: str | None = None
    if_unmodified_since: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_range: str | None = None
    range: str | None = None

    @classmethod
    def from_headers(cls, headers: Headers) -> Conditions:
        def joined(name: str) -> str | None:  # lists may come split over several lines
            values = headers.getlist(name)
            return ", ".join(values) if values else None

        def single(name: str) -> str | None:  # a date has commas: two lines mean ignore it
            values = headers.getlist(name)
            return values[0] if len(values) == 1 else None

        return cls(
            if_match=joined("if-match"),
            if_unmodified_since=single("if-unmodified-since"),
            if_none_match=joined("if-none-match"),
            if_modified_since=single("if-modified-since"),
            if_range=single("if-range"),
            range=single("range"),
        )


def not_modified(method: str, conditions: Conditions, validators: Validators) -> bool:
    """True: answer 304. Raises ``PreconditionFailed``: answer 412. False: go on."""
    if conditions.if_match is not None:
        if not etag_matches(conditions.if_match, validators.etag, weak=False):
            raise PreconditionFailed("If-Match", conditions.if_match, validators.etag)
    elif (since := parse_http_date(conditions.if_unmodified_since)) is not None:
        if validators.last_modified > since:
            raise PreconditionFailed(
                "If-Unmodified-Since", conditions.if_unmodified_since or "", validators.etag
            )
    safe = method in ("GET", "HEAD")
    if conditions.if_none_match is not None:
        if etag_matches(conditions.if_none_match, validators.etag, weak=True):
            if not safe:
                raise PreconditionFailed("If-None-Match", conditions.if_none_match, validators.etag)
            return True
        return False
    since = parse_http_date(conditions.if_modified_since)
    return safe and since is not None and validators.last_modified <= since


def range_applies(if_range: str | None, validators: Validators, now: float) -> bool:
    """If-Range (13.1.5): the Range header counts only if the client's copy is current."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(("W/", '"')):
        return value == validators.etag  # strong comparison: a weak tag never matches
    date = parse_http_date(value)
    return (
        date == validators.last_modified
        and validators.last_modified <= now - STRONG_DATE_AGE
    )


def etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """Does a list of entity tags (or ``*``) match our strong ``etag``?"""
    if header.strip() == "*":
        return True
    for weak_prefix, opaque in ENTITY_TAG.findall(header):
        if opaque == etag and (weak or not weak_prefix):
            return True
    return False


def http_date(seconds: float) -> str:
    return formatdate(seconds, usegmt=True)


def parse_http_date(value: str | None) -> int | None:
    """Seconds since the epoch, or None for anything that is not an HTTP date."""
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value)
        if parsed.tzinfo is None:  # asctime dates carry no zone; HTTP dates are all GMT
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
