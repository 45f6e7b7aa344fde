"""The LL-HLS packager in memory (RFC 8216bis low-latency mode), with fake time."""

from __future__ import annotations

import re

import pytest

from townhall.errors import BadRequest
from townhall.media.hls import (
    HlsConfig,
    HlsPackager,
    PartAdded,
    SegmentCompleted,
    part_uri,
    segment_uri,
    vod_playlist,
)

T0 = 1_700_000_000.0  # wall clock, for EXT-X-PROGRAM-DATE-TIME


def packager(parts: int = 0, **overrides: float) -> HlsPackager:
    hls = HlsPackager(HlsConfig(**overrides))
    hls.init_segment = b"INIT"
    add(hls, parts)
    return hls


def add(hls: HlsPackager, n: int) -> None:
    for _ in range(n):
        msn, index = hls.next_part
        hls.add_part(f"[{msn}.{index}]".encode(), 0.5, T0 + 0.5 * (4 * msn + index))


def lines(hls: HlsPackager) -> list[str]:
    text = hls.playlist().decode()
    assert text.endswith("\n")
    return text.splitlines()


def tag(hls: HlsPackager, name: str) -> str:
    (value,) = [ln.split(":", 1)[1] for ln in lines(hls) if ln.startswith(f"#{name}:")]
    return value


# -- playlist tags -------------------------------------------------------------------------
def test_header_tags_for_low_latency() -> None:
    hls = packager(3)
    assert lines(hls)[0] == "#EXTM3U"
    assert int(tag(hls, "EXT-X-VERSION")) >= 9
    assert tag(hls, "EXT-X-TARGETDURATION") == "2"  # 4 parts x 0.5 s
    assert tag(hls, "EXT-X-PART-INF") == "PART-TARGET=0.500"
    assert tag(hls, "EXT-X-MAP") == 'URI="init.mp4"'


def test_server_control_allows_blocking_reload_with_enough_hold_back() -> None:
    hls = packager(1, part_target_s=0.4)
    control = dict(kv.split("=") for kv in tag(hls, "EXT-X-SERVER-CONTROL").split(","))
    assert control["CAN-BLOCK-RELOAD"] == "YES"
    # 8216bis 4.4.3.8: PART-HOLD-BACK at least twice, and SHOULD be three times, PART-TARGET.
    assert float(control["PART-HOLD-BACK"]) >= 3 * 0.4 - 1e-9


def test_target_duration_covers_the_longest_segment() -> None:
    hls = packager()
    for _ in range(4):
        hls.add_part(b"x", 0.7, T0)  # longer than the part target
    assert tag(hls, "EXT-X-TARGETDURATION") == "3"  # ceil(2.8)
    assert "#EXTINF:2.800," in lines(hls)


# -- parts and segments --------------------------------------------------------------------
def test_parts_and_segments_are_numbered_in_order() -> None:
    hls = packager(6)
    playlist = lines(hls)
    uris = re.findall(r'URI="(p\d+\.\d+\.m4s)"', "\n".join(playlist))
    assert uris[:6] == [part_uri(0, i) for i in range(4)] + [part_uri(1, 0), part_uri(1, 1)]
    assert playlist.count(segment_uri(0)) == 1 and segment_uri(1) not in playlist
    assert all("INDEPENDENT=YES" in ln for ln in playlist if ln.startswith("#EXT-X-PART:"))


def test_a_segment_is_its_parts_joined() -> None:
    hls = packager(4)
    seg = hls.segment(0)
    assert seg is not None and seg.data == b"[0.0][0.1][0.2][0.3]"
    assert hls.segment(1) is None  # not complete yet


def test_add_part_reports_what_happened() -> None:
    hls = packager(3)
    events = hls.add_part(b"x", 0.5, T0)
    assert isinstance(events[0], PartAdded) and events[0].part.index == 3
    assert isinstance(events[1], SegmentCompleted) and events[1].segment.msn == 0


def test_preload_hint_names_the_next_part() -> None:
    hls = packager(5)
    assert lines(hls)[-1] == f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part_uri(1, 1)}"'
    add(hls, 3)
    assert hls.next_part == (2, 0)
    assert lines(hls)[-1] == f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part_uri(2, 0)}"'


def test_an_empty_playlist_hints_the_first_part() -> None:
    hls = packager(0)
    assert tag(hls, "EXT-X-MEDIA-SEQUENCE") == "0"
    assert lines(hls)[-1].endswith(f'URI="{part_uri(0, 0)}"')


def test_program_date_time_per_segment() -> None:
    hls = packager(5)
    stamps = [ln for ln in lines(hls) if ln.startswith("#EXT-X-PROGRAM-DATE-TIME:")]
    assert stamps == [
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z",
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:22.000Z",
    ]


def test_playlist_bytes_are_rebuilt_only_when_something_changes() -> None:
    hls = packager(1)
    first = hls.playlist()
    assert hls.playlist() is first
    add(hls, 1)
    assert hls.playlist() is not first


# -- blocking reload (8216bis 6.2.5.2) --------------------------------------------------
def test_ready_for_a_part_once_it_is_in_the_playlist() -> None:
    hls = packager(2)  # 0.0 and 0.1 exist
    assert hls.ready(0, 1)
    assert not hls.ready(0, 2)
    add(hls, 1)
    assert hls.ready(0, 2)


def test_ready_for_a_segment_once_it_is_complete() -> None:
    hls = packager(3)
    assert not hls.ready(0, None)
    add(hls, 1)
    assert hls.ready(0, None)
    assert not hls.ready(1, None)
    assert not hls.ready(1, 0)


def test_everything_is_ready_after_the_end() -> None:
    hls = packager(2)
    hls.end()
    assert hls.ready(5, 3) and hls.ready(1, None)


@pytest.mark.parametrize(
    ("msn", "part"),
    [(None, 0), (3, None), (3, 2)],
    ids=["part-without-msn", "msn-too-far", "msn-and-part-too-far"],
)
def test_bad_blocking_requests_are_400(msn: int | None, part: int | None) -> None:
    hls = packager(2)  # live edge in segment 0
    with pytest.raises(BadRequest):
        hls.check_blocking_request(msn, part)


@pytest.mark.parametrize(("msn", "part"), [(None, None), (0, 3), (1, 0), (2, None), (2, 3)])
def test_reasonable_blocking_requests_pass(msn: int | None, part: int | None) -> None:
    packager(2).check_blocking_request(msn, part)


def test_part_is_future_only_for_parts_still_to_come() -> None:
    hls = packager(2)
    assert hls.part_is_future(0, 2) and hls.part_is_future(1, 0)
    assert not hls.part_is_future(0, 1)  # already produced
    assert not hls.part_is_future(2, 0)  # too far ahead to hold a request for
    hls.end()
    assert not hls.part_is_future(0, 2)


# -- window and end --------------------------------------------------------------------------
def test_window_keeps_the_last_segments_and_recent_parts() -> None:
    hls = packager(4 * 10 + 1, window_segments=3, parts_window_segments=2)
    assert [s.msn for s in hls.segments] == [8, 9, 10]
    assert tag(hls, "EXT-X-MEDIA-SEQUENCE") == "8"
    text = hls.playlist().decode()
    assert part_uri(8, 0) not in text and part_uri(9, 0) in text and part_uri(10, 0) in text
    assert hls.part(7, 0) is None and hls.segment(7) is None
    assert hls.segment(8) is not None


def test_end_closes_the_short_segment_and_adds_endlist() -> None:
    hls = packager(6)
    events = hls.end()
    assert isinstance(events[0], SegmentCompleted) and events[0].segment.duration_s == 1.0
    playlist = lines(hls)
    assert playlist[-1] == "#EXT-X-ENDLIST"
    assert not any(ln.startswith("#EXT-X-PRELOAD-HINT") for ln in playlist)
    assert "#EXTINF:1.000," in playlist and segment_uri(1) in playlist
    with pytest.raises(RuntimeError):
        hls.add_part(b"x", 0.5, T0)


def test_end_on_a_segment_boundary_leaves_no_empty_segment() -> None:
    hls = packager(8)
    hls.end()
    assert [s.msn for s in hls.segments] == [0, 1]
    assert hls.next_part == (2, 0)


def test_vod_playlist_lists_every_segment_and_ends() -> None:
    text = vod_playlist([2.0, 2.0, 1.2], 2.0)
    playlist = text.splitlines()
    assert playlist[0] == "#EXTM3U"
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist
    assert "#EXT-X-TARGETDURATION:2" in playlist
    assert [ln for ln in playlist if ln.endswith(".m4s")] == [segment_uri(i) for i in range(3)]
    assert "#EXTINF:1.200," in playlist and playlist[-1] == "#EXT-X-ENDLIST"


# -- a packager that joins mid-stream (a replacement audience worker) ------------------
def test_a_late_packager_numbers_parts_as_one_that_saw_the_whole_stream() -> None:
    whole = packager(parts=0)
    late = packager(parts=0)
    for seq in range(23):
        msn, index = whole.next_part
        data, at = f"[{msn}.{index}]".encode(), T0 + 0.5 * seq
        whole.add_part(data, 0.5, at, seq)
        if seq >= 9:  # joins at part 9: mid-segment 2, so it starts with segment 3
            late.add_part(data, 0.5, at, seq)
    assert late.next_part == whole.next_part == (5, 3)
    assert late.segments[0].msn == 3
    for msn in (3, 4):  # the complete ones
        assert late.segment(msn) is not None
        assert late.segment(msn).data == whole.segment(msn).data  # type: ignore[union-attr]
    assert late.playlist().split(b"#EXT-X-MEDIA-SEQUENCE:")[1].startswith(b"3\n")
    assert late.part(5, 2) == whole.part(5, 2)
    assert late.ready(5, 2) and not late.ready(5, 3)


def test_parts_without_numbers_start_at_segment_zero() -> None:
    hls = packager(parts=0)
    hls.add_part(b"x", 0.5, T0)
    assert hls.next_part == (0, 1)


# -- discontinuities (a restarted stage) ---------------------------------------------------
def feed_seqs(hls: HlsPackager, seqs: range, discontinuity_at: int | None = None) -> None:
    for seq in seqs:
        data = f"[{seq}]".encode()
        hls.add_part(data, 0.5, T0 + 0.5 * seq, seq, discontinuity=seq == discontinuity_at)


def test_a_jump_ahead_closes_the_segment_short_and_marks_a_discontinuity() -> None:
    hls = packager()
    feed_seqs(hls, range(0, 6))  # segment 0 full, segment 1 has parts 4 and 5
    feed_seqs(hls, range(16, 18), discontinuity_at=16)  # the stage restarted at part 16
    playlist = lines(hls)
    assert hls.segment(1) is not None and len(hls.segment(1).parts) == 2  # type: ignore[union-attr]
    assert hls.next_part == (4, 2)  # segment 16 // 4 = 4
    i = playlist.index("#EXT-X-DISCONTINUITY")
    assert playlist[i + 1].startswith("#EXT-X-PROGRAM-DATE-TIME:")
    assert part_uri(4, 0) in playlist[i + 2]
    assert playlist.count("#EXT-X-DISCONTINUITY") == 1
    assert tag(hls, "EXT-X-DISCONTINUITY-SEQUENCE") == "0"
    # Media sequence numbers stay consecutive: 2 and 3 are listed as gaps, as long as
    # the media time they stand for, and are never served.
    media = [ln for ln in playlist if ln.startswith(("#EXTINF", "#EXT-X-GAP", "s"))]
    assert media == [
        "#EXTINF:2.000,", segment_uri(0),
        "#EXTINF:1.000,", segment_uri(1),
        "#EXT-X-GAP", "#EXTINF:2.000,", segment_uri(2),
        "#EXT-X-GAP", "#EXTINF:2.000,", segment_uri(3),
    ]  # fmt: skip
    assert hls.segment(2) is None and hls.segment(3) is None
    assert hls.ready(3, None) and hls.ready(4, 1) and not hls.ready(4, 2)


def test_a_long_outage_lists_at_most_a_window_of_gaps() -> None:
    hls = packager(window_segments=4)
    feed_seqs(hls, range(0, 4))
    feed_seqs(hls, range(4000, 4001), discontinuity_at=4000)
    assert [s.msn for s in hls.segments] == [997, 998, 999, 1000]
    assert [s.gap for s in hls.segments] == [True, True, True, False]


def test_a_gap_in_numbers_is_a_discontinuity_even_unmarked() -> None:
    hls = packager()
    feed_seqs(hls, range(0, 4))
    feed_seqs(hls, range(12, 14))
    assert hls.next_part == (3, 2)
    assert lines(hls).count("#EXT-X-DISCONTINUITY") == 1
    assert lines(hls).count("#EXT-X-GAP") == 2


def test_a_marked_part_on_a_boundary_still_starts_a_new_segment() -> None:
    hls = packager()
    feed_seqs(hls, range(0, 4))
    feed_seqs(hls, range(4, 6), discontinuity_at=4)  # restarted with no gap in numbers
    playlist = lines(hls)
    assert playlist.count("#EXT-X-DISCONTINUITY") == 1
    assert hls.next_part == (1, 2)


def test_numbers_never_go_backwards() -> None:
    hls = packager()
    feed_seqs(hls, range(0, 10))
    assert hls.add_part(b"stale", 0.5, T0, 3) == []
    assert hls.add_part(b"dup", 0.5, T0, 9) == []
    assert hls.add_part(b"stale", 0.5, T0, 2, discontinuity=True) == []
    assert hls.next_part == (2, 2)
    assert b"stale" not in hls.playlist() and hls.part(0, 3) is not None
    assert hls.part(0, 3).data == b"[3]"  # type: ignore[union-attr]


def test_discontinuity_sequence_counts_the_tags_that_left_the_window() -> None:
    hls = packager(window_segments=3)
    feed_seqs(hls, range(0, 4))
    feed_seqs(hls, range(8, 12), discontinuity_at=8)  # segment 2 follows gap segment 1
    feed_seqs(hls, range(12, 16))  # segment 3
    assert tag(hls, "EXT-X-DISCONTINUITY-SEQUENCE") == "0"
    assert tag(hls, "EXT-X-MEDIA-SEQUENCE") == "1"
    feed_seqs(hls, range(16, 17))  # segment 4 opens: gap segment 1 leaves, no tag with it
    assert tag(hls, "EXT-X-DISCONTINUITY-SEQUENCE") == "0"
    feed_seqs(hls, range(17, 21))  # segment 5 opens: segment 2 and its tag leave
    assert tag(hls, "EXT-X-MEDIA-SEQUENCE") == "3"
    assert tag(hls, "EXT-X-DISCONTINUITY-SEQUENCE") == "1"
    assert "#EXT-X-DISCONTINUITY" not in lines(hls)


def test_a_late_packager_counts_discontinuities_as_one_that_saw_everything() -> None:
    whole, late = packager(window_segments=3), packager(window_segments=3)
    feed_seqs(whole, range(0, 6))
    for hls in (whole, late):  # the late one starts with the restarted stage's first part
        feed_seqs(hls, range(20, 30), discontinuity_at=20)
    for n in (30, 34, 38):
        for hls in (whole, late):
            feed_seqs(hls, range(n, n + 4))
            assert tag(hls, "EXT-X-MEDIA-SEQUENCE") == tag(whole, "EXT-X-MEDIA-SEQUENCE")
        assert tag(late, "EXT-X-DISCONTINUITY-SEQUENCE") == tag(
            whole, "EXT-X-DISCONTINUITY-SEQUENCE"
        )
        assert lines(late).count("#EXT-X-DISCONTINUITY") == lines(whole).count(
            "#EXT-X-DISCONTINUITY"
        )


def test_vod_playlist_marks_the_gaps() -> None:
    text = vod_playlist([2.0, 1.0, 2.0, 2.0], 2.0, discontinuities={2}).splitlines()
    i = text.index("#EXT-X-DISCONTINUITY")
    assert text[i + 1] == "#EXTINF:2.000," and text[i + 2] == segment_uri(2)
    assert text.count("#EXT-X-DISCONTINUITY") == 1
