"""The Range parser and the multipart framing, against well-formed and hostile headers."""

from __future__ import annotations

import random
import time

import pytest

from exporter.errors import RangeNotSatisfiable
from exporter.ranges import (
    ByteRange,
    body_length,
    coalesce,
    content_range,
    multipart_pieces,
    parse_range,
)

SIZE = 100
CAP = 16


def ranges(header: str, size: int = SIZE, cap: int = CAP) -> list[tuple[int, int]] | None:
    parsed = parse_range(header, size, cap)
    return None if parsed is None else [tuple(r) for r in parsed]  # type: ignore[misc]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", [(0, 10)]),
        ("bytes=10-10", [(10, 11)]),
        ("bytes=90-", [(90, 100)]),
        ("bytes=0-", [(0, 100)]),
        ("bytes=-10", [(90, 100)]),
        ("bytes=-1000", [(0, 100)]),
        ("bytes=95-200", [(95, 100)]),
        ("bytes=0-99999999999999999999999", [(0, 100)]),
        ("bytes=0-" + "9" * 5000, [(0, 100)]),
        ("bytes=-" + "9" * 5000, [(0, 100)]),
        ("Bytes=0-1", [(0, 2)]),
        (" bytes = 0-1 , 3-4 ", [(0, 2), (3, 5)]),
        ("bytes=0-1,,3-4,", [(0, 2), (3, 5)]),
        ("bytes=50-59,0-9", [(0, 10), (50, 60)]),
        ("bytes=0-1,500-600", [(0, 2)]),
    ],
)
def test_valid_ranges_are_clipped_to_the_file_and_sorted(
    header: str, expected: list[tuple[int, int]]
) -> None:
    assert ranges(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-10,5-20", [(0, 21)]),
        ("bytes=0-9,10-19", [(0, 20)]),
        ("bytes=0-,0-,0-,0-", [(0, 100)]),
        ("bytes=-5,90-", [(90, 100)]),
        ("bytes=0-0,2-2,1-1", [(0, 3)]),
    ],
)
def test_overlapping_and_adjacent_ranges_are_merged_into_one(
    header: str, expected: list[tuple[int, int]]
) -> None:
    assert ranges(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "", "bytes", "bytes=", "bytes=,", "bytes=-", "bytes=--", "bytes=abc", "bytes=1-2-3",
        "items=0-1", "bits=0-1", "bytes 0-1", "bytes:0-1", "bytes=0x10-", "bytes=+1-2",
        "bytes=1-+2", "bytes=-1-2", "bytes=1 - 2", "bytes=1_0-20", "bytes=\u0661-\u0662",
        "bytes=5-1", "bytes=0-1,5-1", "bytes=" + "9" * 30 + "-1", "bytes=1.5-2", "bytes=0-1;x",
        "bytes=\x00-1", "\u00ffbytes=0-1",
        # 18 digits each, the most converted exactly: the last still below the first
        "bytes=200000000000000000-100000000000000000",
    ],
)
def test_malformed_headers_are_ignored(header: str) -> None:
    assert ranges(header) is None


@pytest.mark.parametrize(
    "header",
    ["bytes=100-", "bytes=100-200", "bytes=" + "9" * 30 + "-", "bytes=-0", "bytes=100-,200-300"],
)
def test_ranges_that_miss_the_file_are_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        parse_range(header, SIZE, CAP)
    assert raised.value.status == 416
    assert raised.value.headers()["Content-Range"] == "bytes */100"


def test_no_range_is_satisfiable_in_an_empty_file() -> None:
    for header in ("bytes=0-", "bytes=-5", "bytes=0-0"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 0, CAP)


def test_more_ranges_than_the_cap_are_ignored_not_served() -> None:
    sixteen = "bytes=" + ",".join(f"{i * 2}-{i * 2}" for i in range(16))
    assert len(ranges(sixteen) or []) == 16
    seventeen = "bytes=" + ",".join(f"{i * 2}-{i * 2}" for i in range(17))
    assert ranges(seventeen) is None
    thousand = "bytes=" + ",".join(f"{i}-{i}" for i in range(1000))
    assert ranges(thousand, size=10_000) is None


def test_a_huge_header_is_rejected_quickly() -> None:
    header = "bytes=" + ",".join(["0-1"] * 20_000)  # bigger than servers let through
    started = time.perf_counter()
    assert ranges(header) is None
    assert time.perf_counter() - started < 0.5


def test_the_error_quotes_only_the_start_of_a_long_header() -> None:
    header = "bytes=" + "9" * 10_000 + "-"
    with pytest.raises(RangeNotSatisfiable) as raised:
        parse_range(header, SIZE, CAP)
    assert len(raised.value.message) < 400


def test_random_headers_only_ever_give_ranges_inside_the_file() -> None:
    rng = random.Random(4)
    alphabet = "bytes=0123456789-, \t"
    for _ in range(5000):
        header = "bytes=" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        size = rng.randrange(0, 50)
        try:
            parsed = parse_range(header, size, CAP)
        except RangeNotSatisfiable:
            continue
        if parsed is None:
            continue
        assert parsed, header
        for previous, current in zip(parsed, parsed[1:], strict=False):
            assert previous.end < current.start, header
        assert all(0 <= r.start < r.end <= size for r in parsed), header


def test_coalesce_keeps_gaps() -> None:
    assert coalesce([ByteRange(5, 6), ByteRange(0, 2), ByteRange(1, 3)]) == [
        ByteRange(0, 3), ByteRange(5, 6)
    ]


def test_content_range_names_first_and_last_byte_inclusive() -> None:
    assert content_range(ByteRange(0, 10), 100) == "bytes 0-9/100"
    assert content_range(ByteRange(99, 100), 100) == "bytes 99-99/100"


def test_multipart_framing_is_exact() -> None:
    pieces = multipart_pieces([ByteRange(0, 2), ByteRange(5, 6)], 10, "image/png", "B")
    assert pieces == [
        b"--B\r\nContent-Type: image/png\r\nContent-Range: bytes 0-1/10\r\n\r\n",
        ByteRange(0, 2),
        b"\r\n--B\r\nContent-Type: image/png\r\nContent-Range: bytes 5-5/10\r\n\r\n",
        ByteRange(5, 6),
        b"\r\n--B--\r\n",
    ]
    framing = sum(len(p) for p in pieces if isinstance(p, bytes))
    assert body_length(pieces) == framing + 3
