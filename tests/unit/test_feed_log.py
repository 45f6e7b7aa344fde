"""The feed log a replacement audience worker is brought up to date from (pure)."""

from __future__ import annotations

from townhall.audience.feed_log import FeedLog
from townhall.feed import (
    ChannelEnded,
    HlsInit,
    HlsPart,
    OggHeader,
    OggPages,
    RoomUpdate,
)


def live_channel(log: FeedLog, space: str, pages: int, parts: int) -> None:
    log.record(OggHeader(space, b"head"))
    log.record(HlsInit(space, b"init"))
    for i in range(pages):
        log.record(OggPages(space, f"page{i}".encode(), float(i)))
        if i % 3 == 0:
            log.record(RoomUpdate(space, f'{{"n": {i}}}', float(i)))
    for i in range(parts):
        log.record(HlsPart(space, f"part{i}".encode(), 0.5, float(i), i))


def test_replay_is_headers_then_the_newest_room_then_the_bounded_tails_in_order() -> None:
    log = FeedLog(keep_ogg_pages=3, keep_hls_parts=4)
    live_channel(log, "a", pages=10, parts=9)
    replay = log.replay()
    assert replay[:3] == [OggHeader("a", b"head"), HlsInit("a", b"init"),
                          RoomUpdate("a", '{"n": 9}', 9.0)]  # fmt: skip
    pages = [m.data for m in replay if isinstance(m, OggPages)]
    assert pages == [b"page7", b"page8", b"page9"]
    parts = [m.seq for m in replay if isinstance(m, HlsPart)]
    assert parts == [5, 6, 7, 8]
    assert len(replay) == 3 + 3 + 4


def test_every_channel_is_replayed_and_an_ended_one_keeps_its_end() -> None:
    log = FeedLog(keep_ogg_pages=2, keep_hls_parts=2)
    live_channel(log, "a", pages=2, parts=2)
    live_channel(log, "b", pages=2, parts=2)
    log.record(ChannelEnded("a", 5.0))
    log.record(OggPages("a", b"after the end", 6.0))  # never reaches listeners
    replay = log.replay()
    assert {m.space_id for m in replay} == {"a", "b"}
    of_a = [m for m in replay if m.space_id == "a"]
    assert of_a[-1] == ChannelEnded("a", 5.0)
    assert OggPages("a", b"after the end", 6.0) not in replay


def test_ended_channels_are_bounded() -> None:
    log = FeedLog(keep_ogg_pages=1, keep_hls_parts=1, keep_ended=2)
    for space in ("a", "b", "c"):
        live_channel(log, space, pages=1, parts=1)
        log.record(ChannelEnded(space, 1.0))
    assert len(log) == 2
    assert {m.space_id for m in log.replay()} == {"b", "c"}


def test_after_a_new_ogg_header_only_its_pages_are_replayed() -> None:
    log = FeedLog(keep_ogg_pages=10, keep_hls_parts=10)
    live_channel(log, "a", pages=4, parts=3)
    log.record(OggHeader("a", b"restarted head"))
    log.record(OggPages("a", b"new page", 9.0))
    log.record(HlsPart("a", b"new part", 0.5, 9.0, 8, discontinuity=True))
    replay = log.replay()
    assert replay[0] == OggHeader("a", b"restarted head")
    assert [m.data for m in replay if isinstance(m, OggPages)] == [b"new page"]
    parts = [m for m in replay if isinstance(m, HlsPart)]
    assert [p.seq for p in parts] == [0, 1, 2, 8] and parts[-1].discontinuity
