"""The load generator's pure core: schedules, percentiles, lateness, stalls, wire bits."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable

import numpy as np
import pytest

from townhall.loadtest import listeners
from townhall.loadtest.arrivals import Arrival, deal, schedule
from townhall.loadtest.client import ConnectionDropped, ServiceUnavailable
from townhall.loadtest.listeners import ListenerPlan, OggPageClock, newest_granule, newest_page
from townhall.loadtest.report import Report, summarise
from townhall.loadtest.stats import (
    Histogram,
    ListenerRecord,
    Tally,
    after_join_burst,
    lateness,
    merge_tallies,
    stalls,
)
from townhall.loadtest.wire import (
    Target,
    all_loopback,
    decode_time,
    get_request,
    parse_target,
    playlist_url,
    timescale,
)
from townhall.media.hls import HlsConfig, HlsPackager, part_uri, segment_uri
from townhall.media.mixer import FRAME_SAMPLES
from townhall.media.program import ProgramEncoder
from townhall.peers.backoff import Backoff


# -- arrivals ------------------------------------------------------------------------------
def test_ramp_is_evenly_spaced() -> None:
    assert schedule(Arrival.RAMP, 4, 2.0) == [0.0, 0.5, 1.0, 1.5]


@pytest.mark.parametrize("shape", list(Arrival))
def test_every_shape_is_sorted_within_the_window_and_deterministic(shape: Arrival) -> None:
    offsets = schedule(shape, 1000, 10.0, seed=7)
    assert offsets == sorted(offsets)
    assert all(0.0 <= o <= 10.0 for o in offsets)
    assert offsets == schedule(shape, 1000, 10.0, seed=7)


def test_burst_front_loads_and_flash_does_not() -> None:
    burst = schedule(Arrival.BURST, 10_000, 10.0, seed=1)
    flash = schedule(Arrival.FLASH, 10_000, 10.0, seed=1)
    first_two_s = lambda offsets: sum(o < 2.0 for o in offsets) / len(offsets)  # noqa: E731
    assert first_two_s(burst) > 0.6  # 1 - e^-1 ~ 0.63 of a decay with tau = 2 s
    assert 0.17 < first_two_s(flash) < 0.23


def test_deal_keeps_each_listener_once_and_the_shape_in_every_hand() -> None:
    hands = deal([0.0, 1.0, 2.0, 3.0, 4.0], 2)
    assert hands == [[(0, 0.0), (2, 2.0), (4, 4.0)], [(1, 1.0), (3, 3.0)]]


# -- percentiles -----------------------------------------------------------------------------
def test_percentiles_by_nearest_rank_in_milliseconds() -> None:
    h = Histogram()
    h.extend(i / 1000 for i in range(1, 101))  # 1 ms .. 100 ms
    assert h.percentile(50) == 0.050
    assert h.percentile(99) == 0.099
    assert h.percentile(100) == h.max() == 0.100
    assert Histogram().percentile(50) is None


def test_histograms_merge_exactly() -> None:
    a, b = Histogram(), Histogram()
    a.extend([0.001, 0.002])
    b.extend([0.003, 0.004])
    a.merge(b)
    assert a.total == 4 and a.percentile(50) == 0.002


# -- lateness and stalls ----------------------------------------------------------------------
def test_lateness_is_relative_to_the_best_delivered_unit() -> None:
    # Pages of 0.2 s; the third arrives 150 ms later than the others' pace.
    arrivals = [(10.0, 0.2), (10.2, 0.4), (10.55, 0.6), (10.6, 0.8)]
    assert lateness(arrivals) == pytest.approx([0.0, 0.0, 0.15, 0.0])


def test_lateness_ignores_a_constant_clock_offset() -> None:
    base = [(1.0, 0.0), (1.25, 0.2)]
    shifted = [(a + 1234.5, m + 99.0) for a, m in base]
    assert lateness(base) == pytest.approx(lateness(shifted))


def test_the_join_burst_is_not_counted_as_late() -> None:
    arrivals = [(5.0, 0.0), (5.0, 0.2), (5.0, 0.4), (5.2, 0.6)]
    assert after_join_burst(arrivals) == [(5.2, 0.6)]


def test_a_join_burst_split_over_two_reads_is_still_pre_roll() -> None:
    arrivals = [(5.0, 0.0), (5.01, 0.4), (5.9, 1.4), (6.9, 2.4)]
    assert after_join_burst(arrivals) == [(5.9, 1.4), (6.9, 2.4)]


def test_stalls_count_long_gaps_including_a_silent_end() -> None:
    assert stalls([0.0, 0.2, 2.0, 2.2], end_s=2.4, gap_s=1.5) == 1
    assert stalls([0.0, 0.2], end_s=5.0, gap_s=1.5) == 1
    assert stalls([0.0, 1.0, 2.0], end_s=2.1, gap_s=1.5) == 0
    assert stalls([], end_s=5.0, gap_s=1.5) == 0


def test_a_tally_reduces_records_and_merges() -> None:
    ok = ListenerRecord(
        "ogg",
        started_at=0.0,
        connected=True,
        first_media_at=0.3,
        ended_at=1.0,
        bytes_received=100,
        arrivals=[(0.3, 0.2), (0.5, 0.4), (0.8, 0.6)],
    )
    refused = ListenerRecord("ogg", started_at=0.0, failure="refused", retries=3, ended_at=1.0)
    t = Tally()
    t.add(ok, stall_gap_s=1.5)
    t.add(refused, stall_gap_s=1.5)
    merged = merge_tallies([{"ogg": t}, {"ogg": t}])["ogg"]
    assert (merged.listeners, merged.connected, merged.failed, merged.retries) == (4, 2, 2, 6)
    assert merged.failures == {"refused": 2}
    assert merged.first_audio.percentile(50) == 0.3
    assert merged.lateness.max() == 0.1


def test_steady_lateness_keeps_only_units_after_the_crowd_is_in() -> None:
    rec = ListenerRecord(
        "ogg",
        started_at=0.0,
        connected=True,
        first_media_at=1.0,
        ended_at=4.0,
        arrivals=[(1.0, 0.0), (2.6, 1.0), (3.0, 2.0), (4.0, 3.0)],  # late, then on time
    )
    t = Tally()
    t.add(rec, stall_gap_s=1.5, steady_from=2.9)
    assert t.lateness.max() == 0.6  # the storm's late unit counts overall
    assert t.steady_lateness.total == 2 and t.steady_lateness.max() == 0.0


# -- wire ---------------------------------------------------------------------------------------
def test_target_and_playlist_url() -> None:
    url = "http://127.0.0.1:8001/live/abc.ogg"
    assert parse_target(url).port == 8001
    assert playlist_url(url) == "http://127.0.0.1:8001/live/abc/index.m3u8"
    with pytest.raises(ValueError):
        parse_target("https://example.com/live/abc.ogg")


def test_get_request_is_minimal_http11() -> None:
    target = parse_target("http://localhost:81/x")
    assert get_request(target, "/x") == (
        b"GET /x HTTP/1.1\r\nHost: localhost:81\r\nUser-Agent: townhall-loadtest\r\n"
        b"Accept: */*\r\n\r\n"
    )


def test_only_loopback_targets_pass() -> None:
    assert all_loopback(["127.0.0.1", "127.9.9.9", "::1"])
    assert not all_loopback(["127.0.0.1", "10.0.0.1"])
    assert not all_loopback([])


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def test_decode_time_reads_tfdt_v0_and_v1() -> None:
    v0 = _box(b"tfdt", b"\x00\x00\x00\x00" + struct.pack(">I", 96_000))
    v1 = _box(b"tfdt", b"\x01\x00\x00\x00" + struct.pack(">Q", 2**33))
    for tfdt, expected in ((v0, 96_000), (v1, 2**33)):
        part = _box(b"moof", _box(b"mfhd", b"\0" * 8) + _box(b"traf", tfdt)) + _box(b"mdat", b"x")
        assert decode_time(part) == expected
    assert decode_time(_box(b"mdat", b"x")) is None


def test_timescale_reads_mdhd() -> None:
    mdhd = _box(b"mdhd", b"\x00\x00\x00\x00" + b"\0" * 8 + struct.pack(">I", 48_000) + b"\0" * 8)
    init = _box(b"ftyp", b"iso6") + _box(b"moov", _box(b"trak", _box(b"mdia", mdhd)))
    assert timescale(init) == 48_000


def test_newest_granule_dates_a_chunk_by_its_freshest_page() -> None:
    encoder = ProgramEncoder()
    pages = []
    for i in range(60):
        t = (np.arange(FRAME_SAMPLES) + i * FRAME_SAMPLES) / 48_000
        pages += encoder.encode((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)).ogg_pages
    chunk = b"".join(p.data for p in pages)
    assert newest_granule(chunk) == pages[-1].granule > 0
    assert newest_granule(encoder.ogg_header) == 0  # header pages carry granule 0
    assert newest_granule(chunk[5:40]) is None  # no header starts in this slice
    # A header cut before its granule is complete is skipped for the previous one.
    cut = len(chunk) - len(pages[-1].data) + 10
    assert newest_granule(chunk[:cut]) == pages[-2].granule


def _page(granule: int, serial: int) -> bytes:
    # RFC 3533 page header up to the serial; the rest does not matter to the clock.
    return b"OggS\x00\x00" + struct.pack("<qI", granule, serial) + bytes(12)


def test_newest_page_reads_granule_and_serial() -> None:
    chunk = _page(960, 7) + b"audio" + _page(1920, 7) + b"more"
    assert newest_page(chunk) == (1920, 7)
    assert newest_page(chunk[:16]) is None  # the header is cut before its serial ends


def test_a_chained_ogg_link_is_a_stall_not_a_drop_nor_absurd_lateness() -> None:
    """A restarted stage on the same connection: new serial, header pages, granules
    far ahead (media time continued through a 2 s gap) or back to a small number."""
    for resumed_at_s in (3.0, 1_000.0, 0.02):
        rec = ListenerRecord("ogg", started_at=0.0)
        clock = OggPageClock(rec)
        now = 1.0
        for i in range(1, 11):  # 0.2 s chunks of serial 1
            clock.feed(_page(i * 9600, 1), 32, now)
            now += 0.2
        now += 2.0  # the stage restarts: silence on an open connection
        clock.feed(_page(0, 2) + _page(0, 2), 64, now)  # BOS OpusHead + OpusTags
        for i in range(10):
            clock.feed(_page(round(resumed_at_s * 48_000) + i * 9600, 2), 32, now)
            now += 0.2
        rec.ended_at = now
        tally = Tally()
        tally.add(rec, stall_gap_s=1.0)
        assert tally.stalls == 1
        assert tally.drops == tally.reconnects == 0
        assert tally.lateness.max() == 0.0  # each link anchored on its own
        assert tally.with_media == 1 and tally.failed == 0


def test_a_reconnect_gap_is_reported_apart_from_lateness_and_stalls() -> None:
    rec = ListenerRecord("ogg", started_at=0.0)
    clock = OggPageClock(rec)
    for i in range(5):
        clock.feed(_page(48_000 + i * 9600, 1), 32, 1.0 + i * 0.2)
    rec.dropped(2.0)  # the audience worker died
    clock.reconnected()
    rec.reconnects += 1
    # The new connection's pre-roll (older pages) then the live edge, same serial.
    clock.feed(_page(48_000 + 7 * 9600, 1), 32, 4.5)
    for i in range(8, 12):
        clock.feed(_page(48_000 + i * 9600, 1), 32, 4.5 + (i - 7) * 0.2)
    rec.ended_at = 5.5
    tally = Tally()
    tally.add(rec, stall_gap_s=1.0)
    assert (tally.drops, tally.reconnects, tally.stalls) == (1, 1, 0)
    assert tally.reconnect_gap.max() == 2.5
    assert (tally.lateness.max() or 0.0) < 0.01
    row = summarise(tally)
    assert row["reconnect_gap_p50_s"] == row["reconnect_gap_max_s"] == 2.5
    assert row["drops"] == row["reconnects"] == 1
    # Dropped again near the end, still reconnecting when the run ends: not a stall.
    rec.dropped(5.5)
    rec.ended_at = 9.0
    again = Tally()
    again.add(rec, stall_gap_s=1.0)
    assert (again.drops, again.stalls, again.reconnect_gap.total) == (2, 0, 1)


def test_media_time_going_back_starts_a_new_epoch() -> None:
    rec = ListenerRecord("hls", started_at=0.0)
    for i in range(5):
        rec.media_arrived(1.0 + i * 0.2, 100.0 + i * 0.2)
    for i in range(5):
        rec.media_arrived(3.0 + i * 0.2, i * 0.2)  # a restarted program clock
    rec.ended_at = 4.0
    tally = Tally()
    tally.add(rec, stall_gap_s=1.0)
    assert tally.lateness.max() == 0.0 and tally.stalls == 1


def test_the_report_keeps_every_field_and_adds_the_reconnect_ones() -> None:
    tally = Tally()
    tally.add(ListenerRecord("ogg", started_at=0.0), stall_gap_s=1.0)
    report = Report("http://x/live/1.ogg", 1, "ramp", 1.0, 1.0, "ogg", 1, {"ogg": tally})
    row = report.to_json()["results"]["ogg"]
    for name in ("failed", "retries", "stalls", "lateness_p99_s", "steady_lateness_p99_s"):
        assert name in row
    for name in ("drops", "reconnects", "reconnect_gap_p50_s", "reconnect_gap_p99_s"):
        assert name in row and name in report.table()
    assert row["reconnect_gap_max_s"] is None


class _FakeTime:
    """Stands in for the listener's sleep and clock: sleeping moves time, instantly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_reconnect_follows_the_schedule_and_honours_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FakeTime()
    monkeypatch.setattr(listeners.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(listeners.asyncio, "sleep", fake.sleep)
    outcomes: list[Exception | None] = [
        ConnectionDropped("refused"),
        ServiceUnavailable(5.0),
        ConnectionDropped("reset"),
        None,
    ]

    async def attempt() -> str:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return "stream"

    plan = ListenerPlan(Target("127.0.0.1", 1, "/live/1.ogg"), end_at=60.0, backoff=Backoff())
    rec = ListenerRecord("ogg", started_at=0.0)
    got = asyncio.run(listeners._reconnect(plan, random.Random(1), rec, attempt))
    assert got == "stream" and rec.reconnects == 1 and rec.retries == 3
    steps = [0.0, 0.3, 1.2, 2.7]
    assert all(s <= d <= s + 1.0 for d, s in zip(fake.slept, steps, strict=True) if s != 1.2)
    assert fake.slept[2] >= 5.0  # the server's Retry-After wins over 1.2 s + jitter


def test_reconnect_stops_when_the_run_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeTime()
    monkeypatch.setattr(listeners.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(listeners.asyncio, "sleep", fake.sleep)

    async def attempt() -> str:
        raise ConnectionDropped("refused")

    plan = ListenerPlan(Target("127.0.0.1", 1, "/live/1.ogg"), end_at=5.0, backoff=Backoff())
    rec = ListenerRecord("ogg", started_at=0.0)
    with pytest.raises(TimeoutError):
        asyncio.run(listeners._reconnect(plan, random.Random(1), rec, attempt))
    assert fake.now < 5.0 and rec.reconnects == 0


# -- LL-HLS across a stage restart ----------------------------------------------------------
def _fragments(start_samples: int, frames: int) -> tuple[bytes, list[bytes]]:
    encoder = ProgramEncoder(start_samples=start_samples)
    out = []
    for i in range(frames):
        t = (np.arange(FRAME_SAMPLES) + i * FRAME_SAMPLES) / 48_000
        out += encoder.encode((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)).fragments
    out += encoder.close().fragments
    init = encoder.init_segment
    assert init is not None
    return init, [f.data for f in out]


class _PackagerSession:
    """Serves a packager's playlists and parts as the audience plane does; each reload
    first lets ``between`` add what the stage made meanwhile."""

    def __init__(
        self, hls: HlsPackager, init: bytes, between: list[Callable[[], None]], clock: _FakeTime
    ) -> None:
        self.hls, self.init, self.between, self.clock = hls, init, between, clock
        self.base = "/live/1/"
        self.fetched: list[str] = []

    async def get(self, path: str) -> bytes:
        self.fetched.append(path)
        name = path.removeprefix(self.base).split("?", 1)[0]
        if name == "index.m3u8":
            if "_HLS_msn" in path and self.between:
                self.between.pop(0)()
            return self.hls.playlist()
        if name == "init.mp4":
            return self.init
        parts = {part_uri(p.msn, p.index): p.data for seg in self.hls.segments for p in seg.parts}
        assert name in parts, f"fetched a part the packager does not have: {name}"
        self.clock.now += 0.5  # a live part arrives as it is made
        return parts[name]


def test_hls_follows_a_discontinuity_and_never_fetches_a_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FakeTime()
    monkeypatch.setattr(listeners.time, "monotonic", fake.monotonic)
    init, before = _fragments(0, 150)  # 3 s of parts
    _, after = _fragments(20 * 48_000, 150)  # the restarted stage, 20 s of media later
    hls = HlsPackager(HlsConfig(part_target_s=0.5, parts_per_segment=4))
    for seq, data in enumerate(before[:6]):
        hls.add_part(data, 0.5, 0.0, seq)

    def restart() -> None:
        fake.now += 3.0  # the stage was down
        for i, data in enumerate(after[:5]):
            hls.add_part(data, 0.5, 0.0, 16 + i, discontinuity=i == 0)
        hls.end()

    playlist = hls.playlist().decode()
    assert "#EXT-X-GAP" not in playlist  # not yet: the stage has not restarted
    session = _PackagerSession(hls, init, [restart], fake)
    plan = ListenerPlan(Target("127.0.0.1", 1, "/live/1/index.m3u8"), 1e12, Backoff())
    rec = ListenerRecord("hls", started_at=0.0)
    asyncio.run(listeners._follow_playlist(session, plan, rec))  # type: ignore[arg-type]
    playlist = hls.playlist().decode()
    assert "#EXT-X-GAP" in playlist and "#EXT-X-DISCONTINUITY\n" in playlist
    parts = [p.removeprefix(session.base) for p in session.fetched if "/p" in p]
    expected = [(1, 1), (4, 0), (4, 1), (4, 2), (4, 3), (5, 0)]  # join at the live edge
    assert parts == [part_uri(msn, index) for msn, index in expected]
    assert not any(segment_uri(msn) in p for p in session.fetched for msn in (2, 3))
    assert len(rec.arrivals) == 6 and rec.arrivals[1][1] - rec.arrivals[0][1] > 15.0
    tally = Tally()
    rec.ended_at = rec.arrivals[-1][0]
    tally.add(rec, stall_gap_s=1.5)
    assert (tally.failed, tally.drops) == (0, 0)
    assert tally.lateness.max() == 0.0  # the 20 s jump in media time is not lateness
    assert tally.stalls == 1  # the 3 s outage is
