"""Byte ranges of a replay file (RFC 9110 section 14): which bytes a Range header asks."""

from __future__ import annotations

import pytest

from townhall.audience.replay import ByteRange, RangeNotSatisfiable, parse_range


@pytest.mark.parametrize(
    ("header", "size", "wanted"),
    [
        ("bytes=0-99", 1000, ByteRange(0, 99)),
        ("bytes=10-10", 1000, ByteRange(10, 10)),
        ("bytes=900-", 1000, ByteRange(900, 999)),
        ("bytes=-100", 1000, ByteRange(900, 999)),
        ("bytes=-5000", 1000, ByteRange(0, 999)),  # more than the file: all of it
        ("bytes=990-5000", 1000, ByteRange(990, 999)),  # past the end: cut at it
        (" bytes=1-2 ", 1000, ByteRange(1, 2)),
    ],
)
def test_one_range_is_the_bytes_it_names(header: str, size: int, wanted: ByteRange) -> None:
    assert parse_range(header, size) == wanted


@pytest.mark.parametrize(
    "header",
    [None, "bytes=0-1,5-6", "items=0-5", "bytes=5-1", "bytes=-", "bytes=a-b", "0-5", ""],
)
def test_anything_else_is_the_whole_file(header: str | None) -> None:
    """Several ranges, another unit or a malformed one: a server may ignore Range."""
    assert parse_range(header, 1000) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=1000-", 1000),
        ("bytes=5000-6000", 1000),
        ("bytes=-0", 1000),
        ("bytes=0-", 0),
        ("bytes=-10", 0),
    ],
)
def test_a_range_past_the_end_is_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_a_range_gives_its_length() -> None:
    assert ByteRange(10, 19).length == 10
