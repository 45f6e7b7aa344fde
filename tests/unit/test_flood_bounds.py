"""The pure parts of the flood limits: the hand bound, reactions that join nobody, the
coalescing stage-socket queue, the per-participant socket cap, and rate limiter keys."""

from __future__ import annotations

import asyncio

import pytest

from townhall.errors import Conflict, Forbidden
from townhall.feed import FeedSink
from townhall.live import LiveSpace, Watcher, WatcherEnd
from townhall.ratelimit import RateLimited, RateLimiter
from townhall.room.roles import Role
from townhall.room.state import Room, RoomConfig

T = 100.0


class NullFeed(FeedSink):
    def publish(self, msg: object) -> None:
        pass


def live_room(config: RoomConfig | None = None) -> Room:
    room = Room("sp1", "h", "Town hall", config=config)
    room.join("h", "Hana", Role.HOST, T)
    room.start("h", T)
    return room


# -- hands --------------------------------------------------------------------------------


def test_the_hand_queue_is_bounded_with_a_clear_409() -> None:
    room = live_room(RoomConfig(max_raised_hands=3, max_listed_hands=2))
    for i in range(4):
        room.join(f"l{i}", f"L{i}", Role.LISTENER, T)
    for i in range(3):
        room.raise_hand(f"l{i}", T)
    with pytest.raises(Conflict, match="hand queue is full"):
        room.raise_hand("l3", T)
    room.lower_hand("l0", T)
    room.raise_hand("l3", T)  # a lowered hand frees a place


def test_a_snapshot_lists_the_first_hands_and_counts_them_all() -> None:
    room = live_room(RoomConfig(max_listed_hands=2))
    for i in range(5):
        room.join(f"l{i}", f"L{i}", Role.LISTENER, T)
        room.raise_hand(f"l{i}", T)
    snapshot = room.snapshot()
    assert snapshot["hand_queue"] == ["l0", "l1"]
    assert snapshot["hand_count"] == 5
    assert room.record().hands[-1][0] == "l4"  # the journal keeps every hand


# -- reactions -----------------------------------------------------------------------------


def test_a_listener_reaction_is_tallied_without_joining() -> None:
    room = live_room()
    room.react_from_audience("x", "👏", T)
    assert room.reaction_tallies() == {"👏": 1}
    assert room.role_of("x") is None
    assert room.participant_count() == 1


def test_a_removed_listener_cannot_react_from_the_audience() -> None:
    room = live_room()
    room.join("x", "X", Role.LISTENER, T)
    room.remove("h", "x", T)
    with pytest.raises(Forbidden):
        room.react_from_audience("x", "👏", T)


def test_no_audience_reactions_before_the_space_is_live() -> None:
    room = Room("sp1", "h", "Town hall")
    with pytest.raises(Conflict):
        room.react_from_audience("x", "👏", T)


# -- the stage socket's queue ---------------------------------------------------------------


async def test_snapshots_are_coalesced_events_are_not() -> None:
    watcher = Watcher("sp1", "h", max_messages=4, push_interval_s=0.05)
    for n in range(1000):
        watcher.offer({"type": "room", "n": n})
    watcher.offer({"type": "event", "event": "HandRaised"})
    first = await watcher.next_batch()
    assert first == [{"type": "event", "event": "HandRaised"}, {"type": "room", "n": 999}]
    watcher.offer({"type": "room", "n": 1000})
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await watcher.next_batch() == [{"type": "room", "n": 1000}]
    assert loop.time() - started >= 0.04  # no sooner than the interval allows
    assert not watcher.dropped


def test_a_stuck_socket_is_ended_past_its_bound_of_events() -> None:
    watcher = Watcher("sp1", "h", max_messages=3)
    for _ in range(3):
        watcher.offer({"type": "event"})
    assert not watcher.dropped
    watcher.offer({"type": "event"})
    assert watcher.dropped and watcher.ending is WatcherEnd.TOO_SLOW


async def test_a_new_socket_closes_the_oldest_past_the_cap() -> None:
    live = LiveSpace(live_room(), NullFeed(), max_watcher_connections=2)
    sockets = [live.watch("h") for _ in range(3)]
    other = live.watch("s")
    assert sockets[0].ending is WatcherEnd.SUPERSEDED
    assert sockets[1].ending is None and sockets[2].ending is None
    assert live.watchers == {sockets[1], sockets[2], other}
    assert await sockets[0].next_batch() == []


async def test_reactions_reach_a_socket_as_tallies_in_one_snapshot() -> None:
    live = LiveSpace(live_room(), NullFeed(), watcher_push_interval_s=10.0)
    host = live.watch("h")
    assert [m["type"] for m in await host.next_batch()] == ["hello"]
    for i in range(500):
        live.react(f"x{i}", "👏", T)
    waiting = host.drain()
    assert [m["type"] for m in waiting] == ["room"]
    assert waiting[0]["room"]["reaction_tallies"] == {"👏": 500}
    assert live.room.participant_count() == 1


# -- the rate limiter ------------------------------------------------------------------------


def test_the_limiter_refuses_past_the_burst_and_forgets_old_keys() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst_actions=2, max_keys=3)
    limiter.take("a", 0.0, "reactions from this address")
    limiter.take("a", 0.0)
    with pytest.raises(RateLimited, match="reactions from this address") as refused:
        limiter.take("a", 0.0, "reactions from this address")
    assert refused.value.status == 429 and refused.value.retry_after_s == pytest.approx(1.0)
    for key in "bcde":
        limiter.take(key, 0.0)
    assert len(limiter._buckets) == 3  # bounded: the least recently used went
