"""The fan-out engine in memory: fake time, fake subscribers implementing ``Sink``."""

from __future__ import annotations

import itertools
import random

import pytest

from townhall.audience.fanout import Fanout, FanoutConfig
from townhall.errors import Unavailable


class FakeSink:
    """A subscriber's transport: records writes; its buffer level is set by the test."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    @property
    def received(self) -> bytes:
        return b"".join(self.writes)


class FakeCpu:
    """The engine's CPU clock: each reading advances it by ``step_s``."""

    def __init__(self, step_s: float = 0.0) -> None:
        self.now_s = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now_s += self.step_s
        return self.now_s


def make(**overrides: float) -> Fanout:
    fanout = Fanout(FanoutConfig(**overrides), cpu_clock=FakeCpu())
    fanout.header = b"HEAD"
    return fanout


def subscribe(fanout: Fanout, n: int, now: float = 0.0) -> list[FakeSink]:
    sinks = [FakeSink() for _ in range(n)]
    for key, sink in enumerate(sinks, start=len(fanout.subscribers)):
        fanout.subscribe(key, sink, now)
    return sinks


# -- shared bytes ------------------------------------------------------------------------
def test_every_subscriber_gets_the_identical_chunk_object() -> None:
    fanout = make()
    sinks = subscribe(fanout, 50)
    fanout.publish(b"page-1", 0.1)
    fanout.publish(b"page-2", 0.2)
    report = fanout.flush(0.2)
    chunks = [s.writes[-1] for s in sinks]
    assert all(c is chunks[0] for c in chunks)
    assert chunks[0] == b"page-1page-2"
    assert report.written == 50 and report.chunk_bytes == len(b"page-1page-2")


def test_join_bytes_are_built_once_per_chunk_and_shared() -> None:
    fanout = make()
    fanout.publish(b"p1", 0.0)
    fanout.flush(0.0)
    sinks = subscribe(fanout, 3)
    assert sinks[0].writes[0] is sinks[1].writes[0] is sinks[2].writes[0]
    assert sinks[0].writes[0] == b"HEADp1"


def test_nothing_pending_means_no_write() -> None:
    fanout = make()
    sinks = subscribe(fanout, 2)
    assert fanout.flush(1.0).written == 0
    assert [len(s.writes) for s in sinks] == [1, 1]  # only the join burst


# -- coalescing --------------------------------------------------------------------------
def test_slow_passes_grow_the_interval_at_once() -> None:
    fanout = make(flush_interval_s=0.2, max_flush_interval_s=2.0, max_pass_fraction=0.5)
    fanout.pass_took(0.3)
    assert fanout.interval_s == pytest.approx(0.6)
    fanout.pass_took(5.0)
    assert fanout.interval_s == pytest.approx(2.0)  # capped


def test_interval_shrinks_back_slowly() -> None:
    fanout = make(flush_interval_s=0.2, max_flush_interval_s=2.0, max_pass_fraction=0.5)
    fanout.pass_took(1.0)
    assert fanout.interval_s == pytest.approx(2.0)
    fanout.pass_took(0.001)
    assert 1.5 < fanout.interval_s < 2.0  # one quiet pass does not undo coalescing
    for _ in range(60):
        fanout.pass_took(0.001)
    assert fanout.interval_s == pytest.approx(0.2, abs=1e-3)


def test_coalesced_pages_become_one_chunk_and_one_write() -> None:
    fanout = make(flush_interval_s=0.2)
    sinks = subscribe(fanout, 3)
    fanout.publish(b"page0;", 0.0)
    fanout.flush(0.0)
    fanout.pass_took(0.5)  # a slow pass: the next interval is 1 s
    for i in range(1, 6):
        now = 0.2 * i
        fanout.publish(f"page{i};".encode(), now)
        assert (fanout.next_due(now) is not None) == (i == 5)
    fanout.flush(1.0)
    assert sinks[0].writes[1:] == [b"page0;", b"page1;page2;page3;page4;page5;"]


def test_due_only_with_pages_not_yet_sent() -> None:
    fanout = make(flush_interval_s=0.2, fresh_page_wait_s=0.0)
    assert fanout.next_due(10.0) is None
    fanout.publish(b"x", 10.0)
    assert fanout.next_due(10.0) is not None
    fanout.flush(10.0)
    assert fanout.next_due(10.5) is None
    fanout.publish(b"y", 10.1)
    assert fanout.next_due(10.1) is None  # its turn is at 10.2
    assert fanout.next_due(10.2) is not None


def test_a_due_turn_waits_for_a_fresh_page_but_not_for_ever() -> None:
    fanout = make(flush_interval_s=0.2, fresh_page_age_s=0.1, fresh_page_wait_s=0.25)
    sinks = subscribe(fanout, 1)
    fanout.publish(b"a;", 0.0)
    fanout.flush(0.0)
    fanout.publish(b"b;", 0.05)  # completed well before the next turn (0.2) is due
    assert fanout.next_due(0.2) is None  # b is 150 ms old: wait for the next page
    fanout.publish(b"c;", 0.25)
    assert fanout.flush(0.25).written == 1
    assert sinks[0].writes[-1] == b"b;c;"  # the chunk ends with the page just completed
    fanout.publish(b"d;", 0.44)  # 10 ms before its turn (0.45): fresh enough, no wait
    assert fanout.flush(0.45).written == 1
    fanout.publish(b"e;", 0.5)  # then the program stops
    assert fanout.next_due(0.85) is None  # due at 0.65, e is stale, still within the wait
    assert fanout.next_due(0.9) is not None  # 0.65 + 0.25: no fresh page came


# -- staggered cohorts ---------------------------------------------------------------------
def test_cohorts_split_the_crowd_evenly() -> None:
    fanout = make(flush_interval_s=1.0, cohort_spacing_s=0.2)
    subscribe(fanout, 1003)
    assert [len(c.members) for c in fanout.cohorts] == [201, 201, 201, 200, 200]


def test_each_cohort_gets_one_write_per_interval_at_its_own_phase() -> None:
    fanout = make(flush_interval_s=1.0, cohort_spacing_s=0.2)
    sinks = subscribe(fanout, 10)
    writes_at: dict[int, list[float]] = {i: [] for i in range(10)}
    for tick in range(150):  # 3 s of 20 ms ticks, a page every tick
        now = tick * 0.02
        fanout.publish(f"{tick};".encode(), now)
        before = [len(s.writes) for s in sinks]
        fanout.flush(now)
        for key, sink in enumerate(sinks):
            writes_at[key] += [now] * (len(sink.writes) - before[key])
    for key, times in writes_at.items():
        assert len(times) == 3, key
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps == pytest.approx([1.0, 1.0], abs=0.021)  # to the 20 ms tick
    phases = sorted({round(times[0], 2) for times in writes_at.values()})
    assert phases == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8], abs=0.021)  # spread evenly
    for sink in sinks:  # every page exactly once, in order, after the header
        pages = sink.received.removeprefix(b"HEAD").split(b";")[:-1]
        assert pages == [str(i).encode() for i in range(len(pages))]
        assert len(pages) >= 101  # through its last turn (at 2.0 s or later)


def test_a_chunk_ends_at_the_newest_page_for_every_cohort() -> None:
    fanout = make(flush_interval_s=1.0, cohort_spacing_s=0.2)
    sinks = subscribe(fanout, 5)
    for tick in range(100):
        now = tick * 0.1
        fanout.publish(f"{tick};".encode(), now)
        before = [len(s.writes) for s in sinks]
        fanout.flush(now)
        for sink, had in zip(sinks, before, strict=True):
            if len(sink.writes) > had:  # its cohort's turn came
                assert sink.writes[-1].endswith(f"{tick};".encode())
    assert all(len(s.writes) >= 9 for s in sinks)


def test_newcomer_burst_stops_where_its_cohort_stopped() -> None:
    fanout = make(
        flush_interval_s=1.0, cohort_spacing_s=0.5, join_burst_s=10.0, fresh_page_wait_s=0.0
    )
    fanout.publish(b"p0;", 0.0)
    fanout.flush(0.0)  # cohort 0 has had p0; cohort 1's turn is at 0.5
    fanout.publish(b"p1;", 0.3)
    subscribe(fanout, 1)  # to cohort 0 (both empty: the first)
    (late,) = subscribe(fanout, 1)  # to cohort 1, which has had nothing
    assert late.writes[0] == b"HEAD"
    fanout.flush(0.5)
    assert late.received == b"HEADp0;p1;"


def test_leaving_frees_a_place_in_its_cohort() -> None:
    fanout = make(flush_interval_s=1.0, cohort_spacing_s=0.5)
    subscribe(fanout, 4)
    fanout.unsubscribe(0)
    fanout.unsubscribe(2)
    assert [len(c.members) for c in fanout.cohorts] == [0, 2]
    subscribe(fanout, 1)
    assert [len(c.members) for c in fanout.cohorts] == [1, 2]


def test_a_cohort_pass_is_scaled_to_a_full_round() -> None:
    fanout = make(flush_interval_s=1.0, cohort_spacing_s=0.2, max_pass_fraction=0.5)
    subscribe(fanout, 1000)
    fanout.pass_took(0.15, covered=200)  # 0.75 s for everyone: more than half of 1 s
    assert fanout.last_pass_s == pytest.approx(0.75)
    assert fanout.interval_s == pytest.approx(1.5)


# -- slow and stalled subscribers -------------------------------------------------------------
def test_slow_subscriber_is_skipped_then_cut_off() -> None:
    fanout = make(max_listener_buffer_bytes=100, stall_cutoff_s=10.0)
    fast, slow = subscribe(fanout, 2)
    slow.buffered = 101
    fanout.publish(b"a", 1.0)
    report = fanout.flush(1.0)
    assert (report.written, report.skipped, report.cut_off) == (1, 1, 0)
    assert slow.writes == [b"HEAD"] and fast.writes[-1] == b"a"
    fanout.publish(b"b", 10.9)
    assert fanout.flush(10.9).cut_off == 0  # 9.9 s over the limit: still skipped
    fanout.publish(b"c", 11.0)
    report = fanout.flush(11.0)
    assert report.cut_off == 1 and slow.aborted and not slow.closed
    assert 1 not in fanout.subscribers and fast.writes[-1] == b"c"


def test_subscriber_that_recovers_is_not_cut_off() -> None:
    fanout = make(max_listener_buffer_bytes=100, stall_cutoff_s=10.0)
    (sink,) = subscribe(fanout, 1)
    sink.buffered = 500
    fanout.publish(b"a", 0.0)
    fanout.flush(0.0)
    sink.buffered = 0
    fanout.publish(b"b", 5.0)
    fanout.flush(5.0)  # drained: the stall clock resets
    sink.buffered = 500
    fanout.publish(b"c", 12.0)
    assert fanout.flush(12.0).cut_off == 0
    assert sink.writes[1:] == [b"b"]  # skipped to the live edge, never given "a"


def test_subscriber_leaving_mid_pass_is_not_written() -> None:
    fanout = make()
    a, b = subscribe(fanout, 2)
    fanout.publish(b"x", 0.0)
    turn = fanout.next_turn(0.0)
    assert turn is not None and len(turn.members) == 2
    slices = fanout.play(turn, slice_size=1)
    next(slices)  # the first slice is written; the loop runs, and b leaves
    fanout.unsubscribe(1)
    list(slices)
    assert a.writes[-1] == b"x" and b.writes == [b"HEAD"]
    assert (turn.written, turn.skipped) == (1, 0)


def test_a_sliced_turn_yields_between_slices_and_its_cost_drives_coalescing() -> None:
    cpu = FakeCpu()
    fanout = Fanout(
        FanoutConfig(flush_interval_s=1.0, cohort_spacing_s=1.0, max_pass_fraction=0.5),
        cpu_clock=cpu,
    )
    sinks = subscribe(fanout, 200)
    fanout.publish(b"x", 0.0)
    turn = fanout.next_turn(0.0)
    assert turn is not None
    cpu.step_s = 0.05  # each slice's writes cost 0.05 s of CPU
    assert len(list(fanout.play(turn, slice_size=50))) == 3  # 4 slices: 3 pauses between
    assert turn.written == 200 and all(s.writes[-1] == b"x" for s in sinks)
    assert fanout.last_pass_s == pytest.approx(0.2)
    assert fanout.interval_s == pytest.approx(1.0)  # 0.2 s is within half of 1 s
    fanout.publish(b"y", 1.0)
    turn = fanout.next_turn(1.0)
    assert turn is not None
    cpu.step_s = 0.2
    list(fanout.play(turn, slice_size=50))
    assert fanout.last_pass_s == pytest.approx(0.8)
    assert fanout.interval_s == pytest.approx(1.6)  # coalescing: 0.8 s is half of 1.6 s


def test_close_all_flushes_the_healthy_and_aborts_the_stalled() -> None:
    fanout = make(max_listener_buffer_bytes=100)
    ok, stuck = subscribe(fanout, 2)
    stuck.buffered = 1000
    fanout.publish(b"last", 0.0)
    fanout.close_all()
    assert ok.writes[-1] == b"last" and ok.closed
    assert stuck.aborted and stuck.writes == [b"HEAD"]
    assert not fanout.subscribers


# -- admission ---------------------------------------------------------------------------
def test_capacity_cap_refuses_newcomers_with_jittered_retry_after() -> None:
    fanout = make(max_listeners=3, retry_after_s=5.0)
    sinks = subscribe(fanout, 3)
    rng = random.Random(7)
    waits = []
    for _ in range(200):
        with pytest.raises(Unavailable) as info:
            fanout.admit(rng)
        waits.append(info.value.retry_after_s)
    assert all(5.0 <= w <= 10.0 for w in waits)
    assert max(waits) - min(waits) > 3.0  # spread out, not synchronised
    fanout.publish(b"x", 0.0)
    fanout.flush(0.0)
    assert all(s.writes[-1] == b"x" for s in sinks)  # those inside are untouched


def test_overload_refuses_newcomers_only_past_the_longest_interval() -> None:
    fanout = make(flush_interval_s=0.2, max_flush_interval_s=2.0, max_pass_fraction=0.5)
    rng = random.Random(1)
    fanout.pass_took(0.9)  # coalescing absorbs this: newcomers still welcome
    fanout.admit(rng)
    fanout.pass_took(1.1)  # over half of the longest interval: out of headroom
    with pytest.raises(Unavailable):
        fanout.admit(rng)


def test_a_late_event_loop_refuses_newcomers_whatever_the_passes_cost() -> None:
    fanout = make(max_loop_lag_s=0.5)
    rng = random.Random(2)
    fanout.admit(rng, loop_lag_s=0.4)
    with pytest.raises(Unavailable) as info:
        fanout.admit(rng, loop_lag_s=0.6)  # sibling processes are taking the core
    assert "CPU headroom" in str(info.value) and info.value.retry_after_s >= 5.0


# -- join burst --------------------------------------------------------------------------
def test_join_burst_has_header_and_recent_pages() -> None:
    fanout = make(join_burst_s=0.75)
    for i in range(10):  # times exact in binary, so the edge case is exact
        fanout.publish(f"p{i};".encode(), 0.25 * i)
        fanout.flush(0.25 * i)
    (sink,) = subscribe(fanout, 1)
    assert sink.writes[0] == b"HEADp7;p8;p9;"  # 0.75 s of pages back from the edge


def test_join_burst_never_duplicates_a_page_the_next_flush_sends() -> None:
    fanout = make(join_burst_s=10.0)
    fanout.publish(b"p0;", 0.0)
    fanout.flush(0.0)
    fanout.publish(b"p1;", 0.2)  # pending, not flushed yet
    (sink,) = subscribe(fanout, 1)
    fanout.flush(0.2)
    assert sink.received == b"HEADp0;p1;"


def test_join_burst_follows_a_header_set_later() -> None:
    fanout = Fanout(FanoutConfig())
    (early,) = subscribe(fanout, 1)
    fanout.header = b"OPUSHEAD"
    (late,) = subscribe(fanout, 1)
    assert early.writes[0] == b"" and late.writes[0] == b"OPUSHEAD"


def test_zero_join_burst_keeps_nothing() -> None:
    fanout = make(join_burst_s=0.0)
    fanout.publish(b"event", 0.0)
    fanout.flush(0.0)
    (sink,) = subscribe(fanout, 1)
    assert sink.writes == [b"HEAD"]


# -- chained streams (a restarted source) ------------------------------------------------
def streams_in(received: bytes) -> list[str]:
    """The labels in a subscriber's bytes, e.g. ``HEAD a1 a2 NEW b1``."""
    return received.decode().split(";")[:-1]


def test_a_new_header_reaches_every_listener_in_line_with_the_pages() -> None:
    fanout = make(join_burst_s=10.0)
    fanout.header = b"HEAD;"
    sinks = subscribe(fanout, 6)
    fanout.publish(b"a1;", 0.0)
    fanout.flush(0.0)
    fanout.publish(b"a2;", 0.2)
    fanout.restart_stream(b"NEW;", 0.2)
    fanout.publish(b"b1;", 0.4)
    for t in (0.4, 0.6, 0.8, 1.0):
        fanout.flush(t)
    fanout.publish(b"b2;", 1.2)
    fanout.flush(1.2)
    for sink in sinks:
        assert streams_in(sink.received) == ["HEAD", "a1", "a2", "NEW", "b1", "b2"]
    assert fanout.header == b"NEW;"


def test_a_newcomer_after_the_restart_gets_only_the_new_stream() -> None:
    fanout = make(join_burst_s=10.0)
    fanout.header = b"HEAD;"
    subscribe(fanout, 1)
    fanout.publish(b"a1;", 0.0)
    fanout.restart_stream(b"NEW;", 0.1)
    fanout.publish(b"b1;", 0.2)
    fanout.flush(0.2)  # every cohort has had the new header and b1
    (late,) = subscribe(fanout, 1, 0.3)
    fanout.publish(b"b2;", 0.4)
    fanout.flush(0.4)
    assert streams_in(late.received) == ["NEW", "b1", "b2"]


def test_a_newcomer_in_a_cohort_behind_the_restart_follows_its_cohort() -> None:
    # Five cohorts, turns 0.2 s apart: cohort 4 is not due until 0.8 s.
    fanout = make(join_burst_s=10.0, flush_interval_s=1.0, cohort_spacing_s=0.2)
    fanout.header = b"HEAD;"
    fanout.publish(b"a1;", 0.0)
    fanout.flush(0.0)  # cohort 0 has had a1
    fanout.restart_stream(b"NEW;", 0.1)
    fanout.publish(b"b1;", 0.1)
    joined = subscribe(fanout, 5, 0.15)  # one per cohort; none has reached NEW yet
    fanout.publish(b"b2;", 0.5)
    for t in (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8):  # past every stale-page wait
        fanout.flush(t)
    for sink in joined:
        got = streams_in(sink.received)
        assert got[0] == "HEAD" and got.count("NEW") == 1 and got[-3:] == ["NEW", "b1", "b2"]
        assert set(got[1:-3]) <= {"a1"}  # only the old stream's pages before NEW


def test_the_same_header_again_is_not_a_new_stream() -> None:
    fanout = make()
    fanout.header = b"HEAD;"
    (sink,) = subscribe(fanout, 1)
    fanout.publish(b"a1;", 0.0)
    fanout.restart_stream(b"HEAD;", 0.1)
    fanout.flush(0.2)
    assert streams_in(sink.received) == ["HEAD", "a1"]


def test_headers_of_streams_no_cohort_is_in_are_forgotten() -> None:
    fanout = make(join_burst_s=0.0, max_flush_interval_s=0.2)
    fanout.header = b"H0;"
    for i in range(1, 4):
        fanout.restart_stream(f"H{i};".encode(), float(i))
        fanout.publish(b"p;", float(i))
        fanout.flush(float(i) + 0.5)
    assert fanout._old_headers == {}
