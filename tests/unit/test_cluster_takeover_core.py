"""A Space taken over by another node: the decision, the copy, the numbering, and the
adapters' loop against fake key-value buckets that behave as JetStream's do."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from townhall.cluster.config import ClusterConfig
from townhall.cluster.jetstream import JetStreamPublisher, LeaseKeeper
from townhall.cluster.leases import Lease, LeaseTable, encode_lease
from townhall.cluster.rooms import RoomCopier, TakeoverWatch
from townhall.cluster.takeover import (
    CopyConflict,
    Resume,
    SpaceCopy,
    Verdict,
    after_copy_conflict,
    continued_part_seq,
    copy_verdict,
    decode_copy,
    encode_copy,
    lease_verdict,
    resume_verdict,
)
from townhall.cluster.wire import WireError
from townhall.config import ServerConfig
from townhall.room.record import ParticipantRecord, RoomRecord, record_to_json
from townhall.room.roles import Role, SpaceState
from townhall.store import SpaceRecord

NOW = 1_000_000.0
LEASE_S = 3.0
GRACE_S = 1.0


def space(space_id: str = "sp") -> SpaceRecord:
    return SpaceRecord(space_id, "Town hall", "", "live", "h1", None, NOW - 100, NOW - 60, None)


def room_json(space_id: str = "sp", state: SpaceState = SpaceState.LIVE) -> str:
    host = ParticipantRecord("h1", "Host", Role.HOST, stage_seq=1)
    record = RoomRecord(space_id, "h1", "Town hall", state=state, started_at=NOW - 60,
                        participants=(host,), removed=frozenset({"troll"}))  # fmt: skip
    return record_to_json(record)


def copy_of(space_id: str = "sp", state: SpaceState = SpaceState.LIVE) -> SpaceCopy:
    return SpaceCopy(space(space_id), room_json(space_id, state), "node-a", NOW - 5)


def lease(node: str = "node-a", at: float = NOW - 10) -> Lease:
    return Lease("sp", node, f"http://{node}", at)


def by_lease(holder: Lease | None, lapsed: Lease | None, knows: bool = False) -> Verdict:
    return lease_verdict("sp", holder, lapsed, "node-b", knows, NOW, LEASE_S, GRACE_S).verdict


# -- the decision ------------------------------------------------------------------------


def test_a_lease_lapsed_past_the_grace_is_taken() -> None:
    assert by_lease(None, lease(at=NOW - LEASE_S - GRACE_S - 0.1)) is Verdict.TAKE


def test_a_lease_lapsed_within_the_grace_waits() -> None:
    # A holder whose renewal is only late (a stalled cluster) keeps its Space.
    assert by_lease(None, lease(at=NOW - LEASE_S - 0.5)) is Verdict.WAIT


def test_a_held_lease_waits() -> None:
    assert by_lease(lease(at=NOW - 1), None) is Verdict.WAIT


def test_nothing_is_taken_that_this_node_holds_or_never_saw() -> None:
    assert by_lease(None, lease(), knows=True) is Verdict.LEAVE
    assert by_lease(None, None) is Verdict.LEAVE
    assert by_lease(None, lease(node="node-b")) is Verdict.LEAVE  # its own, lapsed


def test_only_a_live_rooms_copy_is_taken() -> None:
    assert copy_verdict("sp", copy_of()).verdict is Verdict.TAKE
    assert copy_verdict("sp", None).verdict is Verdict.LEAVE
    assert copy_verdict("sp", copy_of(state=SpaceState.ENDED)).verdict is Verdict.LEAVE
    assert copy_verdict("other", copy_of()).verdict is Verdict.LEAVE


# -- the copy and the numbering ----------------------------------------------------------


def test_a_copy_round_trips() -> None:
    copy = copy_of()
    assert decode_copy(encode_copy(copy)) == copy


@pytest.mark.parametrize(
    "data",
    [b"", b"{}", b"[1]", b'{"space": {}, "room": "x", "node": "a", "at_unix_s": 1}'],
)
def test_what_is_no_copy_is_a_wire_error(data: bytes) -> None:
    import zlib

    for given in (data, zlib.compress(data)):
        with pytest.raises(WireError):
            decode_copy(given)


def test_a_copy_is_compressed_and_a_bomb_is_refused() -> None:
    import zlib

    big = replace(copy_of(), room_json=room_json().replace('"Town hall"', '"' + "x" * 50_000 + '"'))
    assert len(encode_copy(big)) < 2_000
    bomb = zlib.compress(b"{" + b" " * (65 * 1024 * 1024))
    with pytest.raises(WireError, match="inflates past"):
        decode_copy(bomb)


def test_a_copy_whose_room_is_another_spaces_is_refused() -> None:
    mixed = SpaceCopy(space("sp"), room_json("other"), "node-a", NOW)
    with pytest.raises(WireError, match="another Space"):
        decode_copy(encode_copy(mixed))


def test_numbering_goes_on_past_the_last_published_part() -> None:
    assert continued_part_seq(None) is None
    assert continued_part_seq(41) == 42


def test_lapsed_leases_are_listed() -> None:
    table = LeaseTable(LEASE_S, 10)
    table.put(Lease("old", "a", "u", NOW - 10))
    table.put(Lease("new", "a", "u", NOW - 1))
    assert [x.space_id for x in table.lapsed_leases(NOW)] == ["old"]


# -- the adapters, against fakes ---------------------------------------------------------


class FakeEntry:
    def __init__(self, value: bytes, revision: int) -> None:
        self.value = value
        self.revision = revision


class FakeBucket:
    """A key-value bucket as JetStream keeps one: ``create`` is atomic (only while the
    key is absent), ``update`` and ``delete`` are conditional on the key's revision,
    ``fail`` makes the next writes raise as an unreachable cluster does, and a key in
    ``refused`` is never written (a value over the bucket's max_value_size)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.revisions: dict[str, int] = {}
        self.puts = 0
        self.fail = 0
        self.refused: set[str] = set()

    def _unreachable(self, key: str) -> None:
        if key in self.refused:
            raise TimeoutError
        if self.fail:
            self.fail -= 1
            raise TimeoutError

    def _write(self, key: str, value: bytes) -> int:
        self.puts += 1
        self.values[key], self.revisions[key] = value, self.puts
        return self.puts

    async def put(self, key: str, value: bytes) -> int:
        await asyncio.sleep(0)
        self._unreachable(key)
        return self._write(key, value)

    async def create(self, key: str, value: bytes) -> int:
        await asyncio.sleep(0)
        self._unreachable(key)
        if key in self.values:
            raise KeyWrongLastSequenceError
        return self._write(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        await asyncio.sleep(0)
        self._unreachable(key)
        if self.revisions.get(key, 0) != last:
            raise KeyWrongLastSequenceError
        return self._write(key, value)

    async def get(self, key: str) -> FakeEntry:
        await asyncio.sleep(0)
        if key not in self.values:
            raise KeyNotFoundError
        return FakeEntry(self.values[key], self.revisions[key])

    async def delete(self, key: str, last: int | None = None) -> None:
        if last is not None and self.revisions.get(key, 0) != last:
            raise KeyWrongLastSequenceError
        self.values.pop(key, None)
        self.revisions.pop(key, None)


def test_the_copier_writes_the_newest_copy_of_each_space_and_retries() -> None:
    async def scenario() -> FakeBucket:
        bucket = FakeBucket()
        bucket.fail = 2
        copier = RoomCopier(ClusterConfig(max_pending_copy_spaces=2))
        for space_id in ("a", "b", "c"):  # "a" is dropped: two Spaces may wait
            copier.copy(copy_of(space_id))
        newer = replace(copy_of("c"), at_unix_s=NOW)
        copier.copy(newer)
        copier.start(bucket)  # type: ignore[arg-type]
        for _ in range(100):
            if len(bucket.values) == 2:
                break
            await asyncio.sleep(0.05)
        await copier.close()
        assert copier.dropped == 1 and copier.failures == 2
        assert decode_copy(bucket.values["space.c"]) == newer
        return bucket

    bucket = asyncio.run(scenario())
    assert set(bucket.values) == {"space.b", "space.c"}


def test_of_two_nodes_looking_at_once_one_takes_the_space() -> None:
    """Both see the same lapsed lease and the same copy; the lease's atomic create lets
    one adopt the Space, and the other leaves it."""

    async def scenario() -> tuple[list[str], list[str], FakeBucket]:
        leases, rooms = FakeBucket(), FakeBucket()
        rooms._write("space.sp", encode_copy(copy_of()))
        adopted: dict[str, list[str]] = {"b": [], "c": []}
        watches = []
        for name in ("b", "c"):
            config = ServerConfig(
                cluster=ClusterConfig(node_name=name, takeover_check_s=0.01, lease_s=LEASE_S)
            )
            table = LeaseTable(LEASE_S, 10)
            table.put(lease(at=NOW - 100))  # far in the past: lapsed, past the grace

            def adopt(copy: SpaceCopy, name: str = name) -> bool:
                adopted[name].append(copy.space.id)
                return True

            watch = TakeoverWatch(config, table, lambda _id: False, adopt)
            watch.start(leases, rooms)  # type: ignore[arg-type]
            watches.append(watch)
        await asyncio.sleep(0.3)
        for watch in watches:
            await watch.close()
        return adopted["b"], adopted["c"], leases

    b, c, leases = asyncio.run(scenario())
    assert sorted(b + c) == ["sp"]
    winner = "b" if b else "c"
    assert f'"node": "{winner}"' in leases.values["space.sp"].decode()


def test_a_lapsed_lease_of_an_ended_space_is_left_and_read_once() -> None:
    async def scenario() -> tuple[list[str], FakeBucket]:
        leases, rooms = FakeBucket(), FakeBucket()
        rooms._write("space.sp", encode_copy(copy_of(state=SpaceState.ENDED)))
        reads: list[str] = []
        original = rooms.get

        async def counted(key: str) -> FakeEntry:
            reads.append(key)
            return await original(key)

        rooms.get = counted  # type: ignore[method-assign]
        config = ServerConfig(cluster=ClusterConfig(node_name="b", takeover_check_s=0.01))
        table = LeaseTable(LEASE_S, 10)
        table.put(lease(at=NOW - 100))
        watch = TakeoverWatch(config, table, lambda _id: False, lambda _c: True)
        watch.start(leases, rooms)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        await watch.close()
        return reads, leases

    reads, leases = asyncio.run(scenario())
    assert reads == ["space.sp"]
    assert leases.values == {}


def test_an_adoption_refused_gives_the_lease_back() -> None:
    async def scenario() -> FakeBucket:
        leases, rooms = FakeBucket(), FakeBucket()
        rooms._write("space.sp", encode_copy(copy_of()))
        config = ServerConfig(cluster=ClusterConfig(node_name="b", takeover_check_s=0.01))
        table = LeaseTable(LEASE_S, 10)
        table.put(lease(at=NOW - 100))
        watch = TakeoverWatch(config, table, lambda _id: False, lambda _c: False)
        watch.start(leases, rooms)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        await watch.close()
        return leases

    assert asyncio.run(scenario()).values == {}


async def keep(bucket: FakeBucket, node: str, holding: set[str], lost: list[str]) -> LeaseKeeper:
    keeper = LeaseKeeper(
        None,  # type: ignore[arg-type]
        ClusterConfig(lease_s=0.03),
        node,
        f"http://{node}",
        lambda: set(holding),
        lost=lambda space_id, holder: lost.append(f"{space_id}:{holder.node}"),
    )
    keeper._task = asyncio.get_running_loop().create_task(keeper._renew(bucket))  # type: ignore[arg-type]
    return keeper


def test_a_keeper_that_finds_another_nodes_lease_stops_and_says_so() -> None:
    async def scenario() -> tuple[list[str], FakeBucket]:
        bucket, lost = FakeBucket(), []
        a = await keep(bucket, "a", {"sp"}, lost)
        await asyncio.sleep(0.05)
        assert b'"node": "a"' in bucket.values["space.sp"]
        # A stalls; its lease ages out; B takes the Space over (the atomic create).
        await bucket.delete("space.sp")
        await bucket.create("space.sp", encode_lease(Lease("sp", "b", "http://b", NOW)))
        await asyncio.sleep(0.1)
        await a.close()
        return lost, bucket

    lost, bucket = asyncio.run(scenario())
    assert lost == ["sp:b"]
    assert b'"node": "b"' in bucket.values["space.sp"]  # never overwritten by A


def test_a_keeper_renews_the_lease_its_node_took_over() -> None:
    async def scenario() -> tuple[list[str], FakeBucket, int]:
        bucket, lost = FakeBucket(), []
        # The takeover watch created it; then the node's keeper renews it.
        first = await bucket.create("space.sp", encode_lease(Lease("sp", "b", "http://b", NOW)))
        b = await keep(bucket, "b", {"sp"}, lost)
        await asyncio.sleep(0.1)
        await b.close()
        return lost, bucket, first

    lost, bucket, first = asyncio.run(scenario())
    assert lost == [] and bucket.revisions["space.sp"] > first + 1


def test_a_keeper_deletes_only_its_own_lease_when_the_stage_closes() -> None:
    async def scenario() -> FakeBucket:
        bucket, lost, holding = FakeBucket(), [], {"sp"}
        a = await keep(bucket, "a", holding, lost)
        await asyncio.sleep(0.05)
        holding.clear()
        await asyncio.sleep(0.05)
        await a.close()
        return bucket

    assert asyncio.run(scenario()).values == {}


# -- a node coming back with its own journal ---------------------------------------------


def on_return(
    holder: Lease | None = None, lapsed: Lease | None = None, copy: SpaceCopy | None = None
) -> Resume:
    """What node-a, restarting with "sp" live in its journal, does with it."""
    return resume_verdict("sp", holder, lapsed, copy, "node-a").verdict


def test_a_node_coming_back_leaves_a_space_another_node_holds() -> None:
    b_copy = replace(copy_of(), node="node-b")
    assert on_return(holder=lease("node-b", at=NOW - 1), copy=b_copy) is Resume.HAND_OVER
    # Even if its copy never reached the cluster: the lease alone says it.
    assert on_return(holder=lease("node-b", at=NOW - 1)) is Resume.HAND_OVER
    # Its holder stopped renewing: the takeover decides, not this node's older journal.
    assert on_return(lapsed=lease("node-b"), copy=b_copy) is Resume.HAND_OVER


def test_a_node_coming_back_resumes_what_nobody_took_over() -> None:
    assert on_return() is Resume.RESUME
    assert on_return(copy=copy_of()) is Resume.RESUME  # its own copy
    assert on_return(holder=lease("node-a", at=NOW - 1), copy=copy_of()) is Resume.RESUME
    assert on_return(lapsed=lease("node-a"), copy=copy_of()) is Resume.RESUME


def test_a_node_coming_back_resumes_what_it_holds_whoever_wrote_the_copy() -> None:
    """Only its control process restarted (its stage and lease ran on), after it took the
    Space over from node-b: the copy names node-b, but the Space is this node's."""
    b_copy = replace(copy_of(), node="node-b")
    assert on_return(holder=lease("node-a", at=NOW - 1), copy=b_copy) is Resume.RESUME


def test_a_node_coming_back_takes_up_a_newer_copy_nobody_holds() -> None:
    assert on_return(copy=replace(copy_of(), node="node-b")) is Resume.ADOPT


def test_a_node_coming_back_ends_what_ended_elsewhere() -> None:
    ended = replace(copy_of(state=SpaceState.ENDED), node="node-b")
    assert on_return(holder=lease("node-b", at=NOW - 1), copy=ended) is Resume.END
    assert on_return(copy=ended) is Resume.END


# -- an ended Space is never taken over --------------------------------------------------


def test_an_ended_rooms_copy_is_never_taken_even_with_its_lease_lapsed() -> None:
    lapsed = lease(at=NOW - LEASE_S - GRACE_S - 10)
    assert by_lease(None, lapsed) is Verdict.TAKE
    assert copy_verdict("sp", copy_of(state=SpaceState.ENDED)).verdict is Verdict.LEAVE


def test_settled_waits_for_the_copy_in_the_cluster() -> None:
    """The end is answered only once the ended room's copy is written: after the
    cluster's failures, as soon as it took it; not at all within the bound while it
    takes none."""

    async def scenario() -> None:
        bucket = FakeBucket()
        bucket.fail = 3
        copier = RoomCopier(ClusterConfig())
        copier.start(bucket)  # type: ignore[arg-type]
        copier.copy(copy_of(state=SpaceState.ENDED))
        assert await copier.settled("sp", timeout_s=5.0)
        assert decode_copy(bucket.values["space.sp"]).room_state is SpaceState.ENDED
        assert await copier.settled("other", timeout_s=0.0)  # nothing pending: at once
        bucket.fail = 10_000
        copier.copy(copy_of())
        assert not await copier.settled("sp", timeout_s=0.3)
        await copier.close()

    asyncio.run(scenario())


# -- the copies are written conditionally, fairly, and within the servers' bound ---------


def test_a_copy_conflict_is_decided_by_who_wrote_it_and_who_holds() -> None:
    assert after_copy_conflict(None, "a", holds=False) is CopyConflict.CREATE
    assert after_copy_conflict("a", "a", holds=False) is CopyConflict.OVERWRITE
    assert after_copy_conflict("b", "a", holds=True) is CopyConflict.OVERWRITE
    assert after_copy_conflict("b", "a", holds=False) is CopyConflict.DROP


def copy_by(node: str, space_id: str = "sp", at: float = NOW) -> SpaceCopy:
    return replace(copy_of(space_id), node=node, at_unix_s=at)


def test_a_node_that_stalled_does_not_overwrite_the_new_holders_copy() -> None:
    """A writes its copy; it stalls and B takes the Space over (B holds the lease) and
    writes over A's copy; A, going on, finds B's copy and drops its older room."""

    async def scenario() -> tuple[FakeBucket, RoomCopier]:
        bucket = FakeBucket()
        a = RoomCopier(ClusterConfig(), "node-a", holds=lambda _space: False)
        b = RoomCopier(ClusterConfig(), "node-b", holds=lambda _space: True)
        a.start(bucket)  # type: ignore[arg-type]
        b.start(bucket)  # type: ignore[arg-type]
        a.copy(copy_by("node-a", at=NOW - 10))
        assert await a.settled("sp", timeout_s=1.0)
        b.copy(copy_by("node-b", at=NOW - 5))  # B's adoption writes a fresh copy
        assert await b.settled("sp", timeout_s=1.0)
        a.copy(copy_by("node-a", at=NOW))  # A's stalled room change
        assert await a.settled("sp", timeout_s=1.0)
        await a.close()
        await b.close()
        return bucket, a

    bucket, a = asyncio.run(scenario())
    assert decode_copy(bucket.values["space.sp"]).node == "node-b"
    assert a.written == 1


def test_a_restarted_node_writes_over_its_own_copy() -> None:
    async def scenario() -> FakeBucket:
        bucket = FakeBucket()
        bucket._write("space.sp", encode_copy(copy_by("node-a", at=NOW - 10)))
        a = RoomCopier(ClusterConfig(), "node-a", holds=lambda _space: False)
        a.start(bucket)  # type: ignore[arg-type]
        a.copy(copy_by("node-a", at=NOW))
        assert await a.settled("sp", timeout_s=1.0)
        await a.close()
        return bucket

    assert decode_copy(asyncio.run(scenario()).values["space.sp"]).at_unix_s == NOW


def test_a_space_handed_over_has_nothing_more_copied() -> None:
    async def scenario() -> FakeBucket:
        bucket = FakeBucket()
        bucket.fail = 10_000
        a = RoomCopier(ClusterConfig(), "node-a")
        a.start(bucket)  # type: ignore[arg-type]
        a.copy(copy_by("node-a"))
        await asyncio.sleep(0.05)
        a.forget("sp")
        bucket.fail = 0
        await asyncio.sleep(0.6)  # past a retry
        await a.close()
        return bucket

    assert asyncio.run(scenario()).values == {}


def test_a_copy_never_taken_does_not_hold_up_the_others() -> None:
    """One Space's copy the cluster keeps refusing waits behind the others: theirs are
    written."""

    async def scenario() -> FakeBucket:
        bucket = FakeBucket()
        bucket.refused = {"space.a"}
        copier = RoomCopier(ClusterConfig(), "node-a")
        copier.start(bucket)  # type: ignore[arg-type]
        copier.copy(copy_by("node-a", "a"))
        copier.copy(copy_by("node-a", "b"))
        copier.copy(copy_by("node-a", "c"))
        assert await copier.settled("b", timeout_s=2.0)
        assert await copier.settled("c", timeout_s=2.0)
        assert not await copier.settled("a", timeout_s=0.0)
        await copier.close()
        return bucket

    bucket = asyncio.run(scenario())
    assert set(bucket.values) == {"space.b", "space.c"}


def test_a_copy_over_the_servers_max_payload_is_not_retried() -> None:
    async def scenario() -> tuple[FakeBucket, RoomCopier]:
        bucket = FakeBucket()
        small = copy_by("node-a", "b")
        big = replace(copy_by("node-a", "a"), space=replace(space("a"), description=NOISE))
        copier = RoomCopier(ClusterConfig(max_room_copy_bytes=1_000_000), "node-a")
        copier.start(bucket, max_payload_bytes=len(encode_copy(small)) + 100)  # type: ignore[arg-type]
        copier.copy(big)
        copier.copy(small)
        assert await copier.settled("b", timeout_s=1.0)
        assert await copier.settled("a", timeout_s=0.0)  # given up, not pending
        await copier.close()
        return bucket, copier

    bucket, copier = asyncio.run(scenario())
    assert set(bucket.values) == {"space.b"} and copier.failures == 0


NOISE = bytes(range(256)).hex() * 40  # a description that does not compress to nothing


class BrokenForOneSpace(FakeBucket):
    """A bucket whose writes of one Space's lease fail with an unexpected error."""

    async def create(self, key: str, value: bytes) -> int:
        if key == "space.x":
            raise RuntimeError("a fault nobody expected")
        return await super().create(key, value)


def test_a_keeper_keeps_renewing_the_others_when_one_space_fails() -> None:
    async def scenario() -> FakeBucket:
        bucket = BrokenForOneSpace()
        keeper = await keep(bucket, "a", {"x", "y"}, [])
        await asyncio.sleep(0.15)
        await keeper.close()
        return bucket

    bucket = asyncio.run(scenario())
    assert "space.x" not in bucket.values
    assert bucket.revisions["space.y"] >= 3  # renewed on and on, not once


def test_the_spaces_fenced_are_bounded() -> None:
    publisher = JetStreamPublisher(ClusterConfig(max_fenced_spaces=2), parts_per_segment=4)
    for space_id in ("a", "b", "c"):
        publisher.fence(space_id)
    assert list(publisher.fenced) == ["b", "c"]
    publisher.unfence("c")
    assert list(publisher.fenced) == ["b"]
