"""Counts across nodes: the sketches' wire form, the merge of the edges' reports into the
holding node's counter, the reports' signature, and an edge's tally (fake time)."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from townhall.cli import main
from townhall.cluster.config import ClusterConfig
from townhall.cluster.count_reports import CountFollower, CountReporter
from townhall.cluster.counts import (
    EdgeTally,
    NodeCounts,
    counts_subject,
    decode_counts,
    encode_counts,
)
from townhall.cluster.counts import report as report_of
from townhall.cluster.wire import WireError
from townhall.room.counting import CounterConfig, ListenerCounter
from townhall.room.elsewhere import CountedElsewhere, union_beyond
from townhall.room.sketch import EXACT_BELOW, MAX_COMPACT_BYTES, REGISTERS, DistinctSketch
from townhall.sessions import (
    SessionSigner,
    anonymous_session,
    node_session_key,
    read_session_key,
    report_key,
    session_key,
    write_session_key,
)

KEY = bytes(range(32))
TIMEOUT_S = 3.0
REPORT_S = 1.0
WALL_S = 1_700_000_000.0
BOUND = CounterConfig().max_anonymous_address_sessions


def sketch_of(ids: list[str]) -> DistinctSketch:
    s = DistinctSketch()
    for i in ids:
        s.add(i)
    return s


# -- the compact wire form ---------------------------------------------------------


def test_an_exact_sketch_travels_as_its_hashes() -> None:
    small = sketch_of([f"s{i}" for i in range(EXACT_BELOW - 1)])
    data = small.to_bytes()
    assert len(data) == 1 + 8 * (EXACT_BELOW - 1)
    back = DistinctSketch.from_bytes(data)
    assert back.estimate() == EXACT_BELOW - 1
    assert DistinctSketch.from_bytes(DistinctSketch().to_bytes()).estimate() == 0


def test_a_dense_sketch_travels_compressed_and_bounded() -> None:
    big = DistinctSketch()
    big.add_many(f"s{i}" for i in range(5_000))
    data = big.to_bytes()
    assert len(data) < 16_384  # registers mostly zero: a few KiB
    assert DistinctSketch.from_bytes(data).estimate() == big.estimate()
    full = DistinctSketch()
    full.add_many(f"s{i}" for i in range(2_000_000))
    assert len(full.to_bytes()) <= MAX_COMPACT_BYTES
    assert DistinctSketch.from_bytes(full.to_bytes()).registers() == full.registers()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"X123",
        b"E" + b"\0" * 7,  # not whole hashes
        b"E" + b"\0" * 8 * EXACT_BELOW,  # too many to be exact
        b"Z" + b"not zlib",
        b"Z" + zlib.compress(b"\0" * (REGISTERS - 1)),  # too few registers
        b"Z" + zlib.compress(b"\0" * (64 * REGISTERS)),  # a bomb: inflated only so far
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        DistinctSketch.from_bytes(data)


# -- the merge: a union, not a sum -------------------------------------------------


def elsewhere() -> CountedElsewhere:
    return CountedElsewhere(TIMEOUT_S, max_nodes=8, merge_every_s=REPORT_S)


def counter_with_elsewhere() -> ListenerCounter:
    counter = ListenerCounter(CounterConfig(session_timeout_s=30.0))
    counter.elsewhere = elsewhere()
    return counter


def test_a_listener_on_two_edges_and_the_origin_counts_once() -> None:
    origin = counter_with_elsewhere()
    origin.heartbeat("both", 0.0)
    origin.heartbeat("origin-only", 0.0)
    a = sketch_of(["both", "a-only"])
    b = sketch_of(["both", "b-only"])
    origin.counted_elsewhere("a", a, a, 0.0)
    origin.counted_elsewhere("b", b, b, 0.0)
    assert origin.listening_now(0.0) == 4  # a sum would say 2 + 2 + 2 = 6
    assert origin.total_tuned_in() == 4


def test_an_edge_that_stops_reporting_stops_counting_but_its_tuned_in_stays() -> None:
    origin = counter_with_elsewhere()
    a = sketch_of([f"a{i}" for i in range(5)])
    origin.counted_elsewhere("a", a, a, 0.0)
    assert origin.listening_now(0.5) == 5
    assert origin.listening_now(TIMEOUT_S) == 5
    assert origin.listening_now(TIMEOUT_S + 0.01) == 0
    assert origin.total_tuned_in() == 5


def test_the_union_is_merged_at_most_once_per_period() -> None:
    made = []
    seen = elsewhere()
    seen.put("a", sketch_of(["x", "y"]), 0.0)

    def here() -> DistinctSketch:
        made.append(1)
        return DistinctSketch()

    for t in (0.0, 0.2, 0.5, 0.9):
        assert seen.extra(here, t) == 2
    assert len(made) == 1
    seen.extra(here, 1.0)
    assert len(made) == 2
    seen.put("b", sketch_of(["z"]), 1.1)  # a new report: merged at the next read
    assert seen.extra(here, 1.1) == 3


def test_the_nodes_kept_are_bounded() -> None:
    seen = CountedElsewhere(TIMEOUT_S, max_nodes=3, merge_every_s=REPORT_S)
    for n in range(10):
        seen.put(f"edge{n}", sketch_of([f"s{n}"]), 0.0)
    assert seen.nodes(0.0) == 3
    assert seen.extra(DistinctSketch, 0.0) == 3


def test_others_inside_mine_add_exactly_nothing_even_past_the_exact_range() -> None:
    mine = DistinctSketch()
    mine.add_many(f"s{i}" for i in range(50_000))
    theirs = DistinctSketch()
    theirs.add_many(f"s{i}" for i in range(20_000))
    assert union_beyond(mine, [theirs]) == 0


def test_large_audiences_spread_over_edges_merge_within_two_percent() -> None:
    origin = counter_with_elsewhere()
    for i in range(10_000):
        origin.heartbeat(f"s{i}", 0.0)
    a, b = DistinctSketch(), DistinctSketch()
    a.add_many(f"s{i}" for i in range(5_000, 60_000))
    b.add_many(f"s{i}" for i in range(50_000, 100_000))
    origin.counted_elsewhere("a", a, a, 0.0)
    origin.counted_elsewhere("b", b, b, 0.0)
    assert abs(origin.listening_now(0.0) - 100_000) <= 2_000
    assert abs(origin.total_tuned_in() - 100_000) <= 2_000


# Who listens where: each listener on a non-empty subset of the nodes.
NODES = ("origin", "a", "b")
placements = st.lists(st.sets(st.sampled_from(NODES), min_size=1), min_size=0, max_size=60).map(
    lambda sets: {f"l{i}": s for i, s in enumerate(sets)}
)


@settings(max_examples=60, deadline=None)
@given(placements)
def test_the_cluster_count_is_the_truth_wherever_listeners_are(
    where: dict[str, set[str]],
) -> None:
    signer = SessionSigner(KEY)
    sids = {name: signer.issue("space") for name in where}
    origin = counter_with_elsewhere()
    edges = {n: ListenerCounter() for n in ("a", "b")}
    for name, nodes in where.items():
        for node in nodes:
            target = origin if node == "origin" else edges[node]
            target.connection_opened(sids[name], f"{name}@{node}", 0.0)
    for node, counter in edges.items():
        origin.counted_elsewhere(
            node, counter.listening_sketch(0.0), counter.tuned_in_sketch(), 0.0
        )
    assert origin.listening_now(0.0) == len(where)
    assert origin.total_tuned_in() == len(where)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 40))))
def test_an_address_counts_as_its_busiest_node_and_never_past_the_bound(
    anonymous: list[tuple[int, int, int]],
) -> None:
    """Made-up ids from an address on any nodes count as that address's anonymous slots:
    at most the bound, however many nodes the address reaches."""
    origin = counter_with_elsewhere()
    nodes = [origin, ListenerCounter(), ListenerCounter()]
    per_node: dict[tuple[int, int], set[str]] = {}
    for node, address, detail in anonymous:
        key = anonymous_session(KEY, f"10.0.0.{address}", f"agent-{detail}")
        try:
            nodes[node].heartbeat(key, 0.0)
        except Exception:  # past the bound: served, not counted
            continue
        per_node.setdefault((node, address), set()).add(key)
    for n, counter in enumerate(nodes[1:], start=1):
        origin.counted_elsewhere(
            f"edge{n}", counter.listening_sketch(0.0), counter.tuned_in_sketch(), 0.0
        )
    busiest: dict[int, int] = {}
    for (_, address), keys in per_node.items():
        busiest[address] = max(busiest.get(address, 0), len(keys))
    assert all(v <= BOUND for v in busiest.values())
    assert origin.listening_now(0.0) == sum(busiest.values())
    assert origin.total_tuned_in() == sum(busiest.values())


# -- the reports on the wire -------------------------------------------------------


def report(space_id: str = "sp1", node: str = "edge-a", at_unix_s: float = WALL_S) -> NodeCounts:
    now = sketch_of(["x", "y"])
    return NodeCounts(space_id, node, now, sketch_of(["x", "y", "z"]), at_unix_s)


def test_a_report_round_trips() -> None:
    back = decode_counts(encode_counts(report(), KEY), KEY, 1 << 20)
    assert (back.space_id, back.node, back.at_unix_s) == ("sp1", "edge-a", WALL_S)
    assert (back.listening.estimate(), back.tuned_in.estimate()) == (2, 3)


def test_a_report_signed_with_another_key_or_altered_is_not_believed() -> None:
    data = encode_counts(report(), KEY)
    with pytest.raises(WireError, match="key"):
        decode_counts(data, bytes(32), 1 << 20)
    altered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(WireError):
        decode_counts(altered, KEY, 1 << 20)
    with pytest.raises(WireError, match="at most"):
        decode_counts(data, KEY, len(data) - 1)


class FakeService:
    def __init__(self, held: str) -> None:
        self.counters = {held: ListenerCounter()}

    def counter_of(self, space_id: str) -> ListenerCounter | None:
        return self.counters.get(space_id)


def follower(service: FakeService) -> CountFollower:
    config = ClusterConfig(counts_timeout_s=TIMEOUT_S, counts_report_s=REPORT_S)
    return CountFollower(
        config, service.counter_of, KEY, clock=lambda: 0.0, wall_clock=lambda: WALL_S
    )


def test_the_follower_merges_signed_reports_of_held_spaces_only() -> None:
    service = FakeService("sp1")
    f = follower(service)
    key = report_key(KEY)
    f.take(counts_subject("sp1"), encode_counts(report("sp1"), key))
    f.take(counts_subject("sp2"), encode_counts(report("sp2"), key))  # held elsewhere
    f.take(counts_subject("sp1"), encode_counts(report("sp1", "liar"), report_key(b"other")))
    # Signed, but put on another Space's subject: not believed either.
    f.take(counts_subject("sp1"), encode_counts(report("sp9"), key))
    counter = service.counters["sp1"]
    assert counter.listening_now(0.0) == 2
    assert counter.total_tuned_in() == 3
    assert (f.received, f.rejected) == (4, 2)


def test_a_report_carries_what_the_follower_reads_and_nothing_more() -> None:
    data = encode_counts(report(), KEY)[16:]  # past the MAC
    (head_len,) = struct.unpack_from(">H", data)
    assert set(json.loads(data[2 : 2 + head_len])) == {"space", "node", "at", "listening"}


def test_an_old_or_future_report_is_not_believed() -> None:
    """A captured report replayed later (or sent from a clock far off) counts nothing."""
    service = FakeService("sp1")
    f = follower(service)
    key = report_key(KEY)
    f.take(counts_subject("sp1"), encode_counts(report(at_unix_s=WALL_S - TIMEOUT_S - 0.1), key))
    f.take(counts_subject("sp1"), encode_counts(report(at_unix_s=WALL_S + TIMEOUT_S + 0.1), key))
    counter = service.counters["sp1"]
    assert (counter.listening_now(0.0), counter.total_tuned_in()) == (0, 0)
    assert f.rejected == 2
    f.take(counts_subject("sp1"), encode_counts(report(at_unix_s=WALL_S - TIMEOUT_S + 0.1), key))
    assert (counter.listening_now(0.0), f.rejected) == (2, 2)


def test_a_replayed_report_cannot_keep_a_dead_edge_counted() -> None:
    """The same report again, or an older one, is not believed: not while the node's last
    report is held, and not after it lapsed either."""
    service = FakeService("sp1")
    config = ClusterConfig(counts_timeout_s=TIMEOUT_S, counts_report_s=REPORT_S)
    clock, wall = Clock(), Clock()
    wall.now = WALL_S
    f = CountFollower(config, service.counter_of, KEY, clock=clock, wall_clock=wall)
    key = report_key(KEY)
    first = encode_counts(report(at_unix_s=WALL_S - 1.0), key)
    last = encode_counts(report(at_unix_s=WALL_S), key)
    f.take(counts_subject("sp1"), first)
    f.take(counts_subject("sp1"), last)
    f.take(counts_subject("sp1"), first)  # older than the last believed
    assert f.rejected == 1
    counter = service.counters["sp1"]
    clock.now, wall.now = TIMEOUT_S + 0.5, WALL_S + 2.0  # the edge died; its report lapsed
    f.take(counts_subject("sp1"), last)  # captured 2 s ago: fresh enough, but seen
    assert f.rejected == 2
    assert counter.listening_now(clock.now) == 0


class FakeNats:
    """The NATS client's side the reporter uses: the payload bound, ``publish``."""

    max_payload = 1 << 20

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        self.published.append((subject, payload))


def busy_tally(spaces: int, sessions: int) -> EdgeTally:
    tally = EdgeTally(CounterConfig(session_timeout_s=30.0), max_spaces=spaces, clock=Clock())
    for n in range(spaces):
        for i in range(sessions):
            tally.seen(f"sp{n}", f"s{i}")
    return tally


def test_the_reporter_lets_the_loop_run_between_two_spaces() -> None:
    """The edge's loop passes the program to the workers: it runs between two Spaces'
    reports, not only once all are encoded."""
    tally, nc = busy_tally(3, 10), FakeNats()
    reporter = CountReporter(ClusterConfig(), tally, KEY, "edge")
    seen: list[int] = []

    async def program() -> None:
        while True:
            seen.append(len(nc.published))
            await asyncio.sleep(0)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(program())
        await asyncio.sleep(0)
        await reporter._send(nc)  # type: ignore[arg-type]
        task.cancel()

    asyncio.run(main())
    assert len(nc.published) == 3
    assert {1, 2} <= set(seen), seen


def test_a_report_does_not_copy_the_tuned_in_sketch(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 KiB a Space a period: the report serialises the counter's own sketch."""
    tally, nc = busy_tally(1, 2 * EXACT_BELOW), FakeNats()
    reporter = CountReporter(ClusterConfig(), tally, KEY, "edge")

    def refused(_: DistinctSketch) -> DistinctSketch:
        raise AssertionError("the tuned-in sketch was copied")

    monkeypatch.setattr(DistinctSketch, "copy", refused)
    asyncio.run(reporter._send(nc))  # type: ignore[arg-type]
    [(_, payload)] = nc.published
    back = decode_counts(payload, report_key(KEY), 1 << 20)
    assert abs(back.tuned_in.estimate() - 2 * EXACT_BELOW) < 0.02 * 2 * EXACT_BELOW


# -- an edge's tally ---------------------------------------------------------------


def reports_of(tally: EdgeTally, now: float) -> list[NodeCounts]:
    return [report_of(s, counter, "edge", now, WALL_S) for s, counter in tally.due()]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_tally_counts_per_space_and_reports_each() -> None:
    clock = Clock()
    tally = EdgeTally(CounterConfig(session_timeout_s=30.0), max_spaces=10, clock=clock)
    tally.stream_opened("sp1", "s1", "c1")
    tally.seen("sp1", "s2")
    tally.seen("sp2", "s3")
    reports = {r.space_id: r for r in reports_of(tally, clock())}
    assert reports["sp1"].listening.estimate() == 2 and reports["sp2"].listening.estimate() == 1
    tally.stream_closed("sp1", "s1", "c1", session_ended=True)
    clock.now = 31.0  # s2's poll expired too
    [again] = [r for r in reports_of(tally, clock()) if r.space_id == "sp1"]
    assert again.listening.estimate() == 0 and again.tuned_in.estimate() == 2


def test_an_ended_space_is_reported_once_more_then_forgotten() -> None:
    tally = EdgeTally(CounterConfig(), max_spaces=10, clock=Clock())
    tally.seen("sp1", "s1")
    tally.ended("sp1")
    assert [r.space_id for r in reports_of(tally, 0.0)] == ["sp1"]
    assert reports_of(tally, 0.0) == []


def test_the_tally_counts_at_most_its_bound_of_spaces() -> None:
    clock = Clock()
    tally = EdgeTally(CounterConfig(session_timeout_s=30.0), max_spaces=2, clock=clock)
    tally.stream_opened("sp1", "s1", "c1")
    tally.stream_opened("sp2", "s2", "c2")
    tally.seen("sp3", "s3")  # both counted Spaces have listeners: served, not counted
    assert sorted(tally.spaces()) == ["sp1", "sp2"] and tally.uncounted == 1
    tally.stream_closed("sp1", "s1", "c1", session_ended=True)
    tally.seen("sp3", "s3")  # sp1 has nobody now: sp3 takes its place
    assert sorted(tally.spaces()) == ["sp2", "sp3"]


# -- the cluster's key -------------------------------------------------------------


def test_a_key_file_holds_32_bytes_in_hex_for_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_session_key(path, KEY)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_session_key(path) == KEY
    path.chmod(0o644)  # a key file left readable by everyone: written again, it is not
    write_session_key(path, KEY)
    assert path.stat().st_mode & 0o777 == 0o600
    assert node_session_key("secret", str(path)) == KEY
    assert node_session_key("secret", "") == session_key("secret")
    path.write_text("abcd\n")
    with pytest.raises(ValueError, match="32 bytes"):
        read_session_key(path)
    with pytest.raises(ValueError, match="not a session key"):
        read_session_key(tmp_path / "missing")


def test_a_bad_key_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "k").write_text("not hex")
    args = ["edge", "--nats", "nats://127.0.0.1:1", "--session-key-file", str(tmp_path / "k")]
    assert main(args) == 2
    assert "not a session key file" in capsys.readouterr().err
