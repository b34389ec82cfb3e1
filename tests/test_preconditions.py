"""Conditional requests: entity-tag comparison, HTTP dates, and RFC 9110's evaluation order."""

from __future__ import annotations

import time

import pytest
from starlette.datastructures import Headers

from exporter.errors import PreconditionFailed
from exporter.preconditions import (
    Conditions,
    Validators,
    etag_matches,
    http_date,
    not_modified,
    parse_http_date,
    range_applies,
)

ETAG = '"abc123"'
MODIFIED = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
VALIDATORS = Validators(ETAG, MODIFIED)
AT_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
BEFORE = "Sun, 06 Nov 1994 08:49:36 GMT"
AFTER = "Sun, 06 Nov 1994 08:49:38 GMT"
NOW = MODIFIED + 3600


def evaluate(method: str = "GET", **headers: str) -> bool:
    return not_modified(method, Conditions(**headers), VALIDATORS)


@pytest.mark.parametrize(
    ("header", "weak", "expected"),
    [
        ('"abc123"', False, True),
        ('W/"abc123"', False, False),
        ('W/"abc123"', True, True),
        ('"other", "abc123"', False, True),
        ('"other",W/"abc123"', True, True),
        ("*", False, True),
        (" * ", True, True),
        ("abc123", True, False),  # unquoted: not an entity tag
        ('"abc"', True, False),
        ('"abc123', True, False),
        ("", True, False),
        ('"ab c123"', True, False),
    ],
)
def test_entity_tags_compare_strongly_or_weakly(header: str, weak: bool, expected: bool) -> None:
    assert etag_matches(header, ETAG, weak=weak) is expected


def test_http_dates_parse_in_all_three_formats() -> None:
    for text in (AT_MODIFIED, "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"):
        assert parse_http_date(text) == MODIFIED
    assert http_date(MODIFIED) == AT_MODIFIED


@pytest.mark.parametrize(
    "text", [None, "", "garbage", "99999999", "Sun, 06 Nov 99999999 08:49:37 GMT", "\x00"]
)
def test_anything_else_is_not_a_date(text: str | None) -> None:
    assert parse_http_date(text) is None


def test_no_conditions_means_go_on() -> None:
    assert evaluate() is False


def test_if_none_match_with_our_etag_is_not_modified() -> None:
    assert evaluate(if_none_match=ETAG) is True
    assert evaluate(if_none_match=f'W/{ETAG}') is True  # weak comparison
    assert evaluate(if_none_match="*") is True
    assert evaluate(if_none_match='"stale"') is False


def test_http_dates_are_gmt_whatever_the_hosts_time_zone(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:  # an asctime date names no zone: HTTP's are all GMT, never the host's
        assert parse_http_date("Sun Nov  6 08:49:37 1994") == MODIFIED
    finally:
        monkeypatch.undo()
        time.tzset()


def test_if_none_match_on_an_unsafe_method_fails_the_precondition() -> None:
    with pytest.raises(PreconditionFailed) as raised:
        evaluate("POST", if_none_match=ETAG)
    assert raised.value.details == {"header": "If-None-Match", "value": ETAG, "etag": ETAG}


def test_head_is_as_safe_as_get() -> None:
    assert evaluate("HEAD", if_none_match=ETAG) is True
    assert evaluate("HEAD", if_modified_since=AT_MODIFIED) is True


def test_if_modified_since_compares_whole_seconds() -> None:
    assert evaluate(if_modified_since=AT_MODIFIED) is True
    assert evaluate(if_modified_since=AFTER) is True
    assert evaluate(if_modified_since=BEFORE) is False
    assert evaluate(if_modified_since="not a date") is False
    assert evaluate("POST", if_modified_since=AFTER) is False


def test_if_none_match_overrides_if_modified_since() -> None:
    assert evaluate(if_none_match='"stale"', if_modified_since=AFTER) is False


def test_if_match_comes_first_and_compares_strongly() -> None:
    with pytest.raises(PreconditionFailed) as raised:
        evaluate(if_match='"stale"', if_none_match=ETAG)
    assert raised.value.status == 412
    assert raised.value.details["header"] == "If-Match"
    with pytest.raises(PreconditionFailed):
        evaluate(if_match=f"W/{ETAG}")
    assert evaluate(if_match=ETAG) is False
    assert evaluate(if_match="*") is False
    assert evaluate(if_match=ETAG, if_none_match=ETAG) is True


def test_if_unmodified_since_fails_for_a_newer_file_unless_if_match_is_there() -> None:
    with pytest.raises(PreconditionFailed) as raised:
        evaluate(if_unmodified_since=BEFORE)
    assert raised.value.details == {"header": "If-Unmodified-Since", "value": BEFORE,
                                    "etag": ETAG}
    assert evaluate(if_unmodified_since=AT_MODIFIED) is False
    assert evaluate(if_unmodified_since="garbage") is False
    assert evaluate(if_match=ETAG, if_unmodified_since=BEFORE) is False


@pytest.mark.parametrize(
    ("if_range", "expected"),
    [
        (None, True),
        (ETAG, True),
        (f" {ETAG} ", True),
        (f"W/{ETAG}", False),
        ('"stale"', False),
        (AT_MODIFIED, True),
        (BEFORE, False),
        (AFTER, False),
        ("garbage", False),
        ("", False),
    ],
)
def test_if_range_needs_the_strong_etag_or_the_exact_date(
    if_range: str | None, expected: bool
) -> None:
    assert range_applies(if_range, VALIDATORS, NOW) is expected


def test_if_range_distrusts_a_date_from_the_current_second() -> None:
    assert range_applies(AT_MODIFIED, VALIDATORS, MODIFIED + 0.5) is False
    assert range_applies(ETAG, VALIDATORS, MODIFIED + 0.5) is True
    # RFC 9110 8.8.2.2: strong once the date is at least one second old
    assert range_applies(AT_MODIFIED, VALIDATORS, MODIFIED + 1) is True


def test_conditions_join_lists_and_drop_repeated_dates() -> None:
    headers = Headers(raw=[
        (b"if-none-match", b'"a"'), (b"if-none-match", b'"b"'),
        (b"if-modified-since", AT_MODIFIED.encode()), (b"if-modified-since", BEFORE.encode()),
        (b"range", b"bytes=0-1"),
    ])
    conditions = Conditions.from_headers(headers)
    assert conditions.if_none_match == '"a", "b"'
    assert conditions.if_modified_since is None
    assert conditions.range == "bytes=0-1"
    assert conditions.if_match is None
