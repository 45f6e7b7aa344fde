"""Honest listener counting with fake time: one session id is one listener."""

from __future__ import annotations

import random

import pytest

from townhall.errors import BadRequest, Unavailable
from townhall.room.counting import CounterConfig, ListenerCounter
from townhall.sessions import anonymous_session

TIMEOUT_S = 30.0


def counter(max_sessions: int = 1_000) -> ListenerCounter:
    return ListenerCounter(CounterConfig(session_timeout_s=TIMEOUT_S, max_sessions=max_sessions))


# -- deduplication -----------------------------------------------------------


def test_repeated_heartbeats_count_once() -> None:
    listeners = counter()
    for second in range(10):
        listeners.heartbeat("s1", float(second))
    assert listeners.listening_now(10.0) == 1
    assert listeners.total_tuned_in() == 1


def test_parallel_connections_of_one_player_count_once() -> None:
    listeners = counter()
    for conn in ("playlist", "part-1", "part-2", "ws"):
        listeners.connection_opened("s1", conn, 0.0)
    assert listeners.listening_now(0.0) == 1
    assert listeners.total_tuned_in() == 1


def test_second_tab_with_the_same_session_counts_once() -> None:
    listeners = counter()
    listeners.connection_opened("s1", "tab-1", 0.0)
    listeners.connection_opened("s1", "tab-2", 1.0)
    listeners.connection_closed("s1", "tab-1", 2.0)
    assert listeners.listening_now(100.0) == 1  # tab 2 still holds the session


def test_reconnect_within_the_grace_period_is_the_same_listener() -> None:
    listeners = counter()
    listeners.connection_opened("s1", "c1", 0.0)
    listeners.connection_closed("s1", "c1", 10.0)
    assert listeners.listening_now(20.0) == 1
    listeners.connection_opened("s1", "c2", 25.0)
    assert listeners.listening_now(1000.0) == 1
    assert listeners.total_tuned_in() == 1


def test_retried_close_is_harmless() -> None:
    listeners = counter()
    listeners.connection_opened("s1", "c1", 0.0)
    listeners.connection_opened("s1", "c2", 0.0)
    listeners.connection_closed("s1", "c1", 1.0)
    listeners.connection_closed("s1", "c1", 1.0)
    listeners.connection_closed("unknown", "c9", 1.0)
    assert listeners.listening_now(500.0) == 1  # c2 is still open


def test_known_sessions_with_duplicates_and_reconnects_are_counted_exactly() -> None:
    rng = random.Random(20240601)
    sessions = [f"session-{n}" for n in range(500)]
    signals: list[tuple[str, str, str]] = []
    for session in sessions:
        signals.append(("heartbeat", session, ""))
        for attempt in range(rng.randint(0, 6)):
            conn = f"{session}/conn-{attempt % 2}"  # some ids reused, as after a retry
            signals += [
                ("open", session, conn),
                ("heartbeat", session, ""),
                ("close", session, conn),
            ]
    rng.shuffle(signals)
    listeners = counter()
    clock = 0.0
    for kind, session, conn in signals:
        clock += 0.001  # all well inside one timeout
        if kind == "heartbeat":
            listeners.heartbeat(session, clock)
        elif kind == "open":
            listeners.connection_opened(session, conn, clock)
        else:
            listeners.connection_closed(session, conn, clock)
    assert listeners.listening_now(clock) == len(sessions)
    assert listeners.total_tuned_in() == len(sessions)


# -- time --------------------------------------------------------------------


def test_heartbeat_session_expires_after_the_timeout() -> None:
    listeners = counter()
    listeners.heartbeat("s1", 0.0)
    assert listeners.listening_now(TIMEOUT_S) == 1  # "within" the timeout is inclusive
    assert listeners.is_listening("s1", TIMEOUT_S)
    assert listeners.listening_now(TIMEOUT_S + 0.001) == 0
    assert listeners.total_tuned_in() == 1


def test_fresh_heartbeat_keeps_a_session_alive() -> None:
    listeners = counter()
    for second in range(0, 300, 20):
        listeners.heartbeat("s1", float(second))
        assert listeners.listening_now(float(second) + 25.0) == 1


def test_open_connection_keeps_a_session_alive_without_heartbeats() -> None:
    listeners = counter()
    listeners.connection_opened("s1", "c1", 0.0)
    assert listeners.listening_now(3600.0) == 1
    listeners.connection_closed("s1", "c1", 3600.0)
    assert listeners.listening_now(3600.0 + TIMEOUT_S) == 1
    assert listeners.listening_now(3600.0 + TIMEOUT_S + 1) == 0


def test_expire_reports_how_many_went_and_spares_the_fresh() -> None:
    listeners = counter()
    listeners.heartbeat("old-1", 0.0)
    listeners.heartbeat("old-2", 1.0)
    listeners.heartbeat("fresh", 20.0)
    assert listeners.expire(40.0) == 2
    assert listeners.listening_now(40.0) == 1
    assert listeners.total_tuned_in() == 3


def test_a_refreshed_session_is_not_expired_behind_a_stale_one() -> None:
    listeners = counter()
    listeners.heartbeat("a", 0.0)
    listeners.heartbeat("b", 1.0)
    listeners.heartbeat("a", 25.0)  # "a" is now fresher than "b"
    assert listeners.expire(40.0) == 1
    assert listeners.is_listening("a", 40.0)
    assert not listeners.is_listening("b", 40.0)


def test_leave_stops_counting_at_once_but_not_the_total() -> None:
    listeners = counter()
    listeners.connection_opened("s1", "c1", 0.0)
    listeners.heartbeat("s2", 0.0)
    listeners.leave("s1", 1.0)
    listeners.leave("s1", 1.0)
    listeners.connection_closed("s1", "c1", 2.0)  # the close arrives after the goodbye
    assert listeners.listening_now(2.0) == 1
    assert listeners.total_tuned_in() == 2


def test_coming_back_after_expiry_is_not_a_new_unique_listener() -> None:
    listeners = counter()
    listeners.heartbeat("s1", 0.0)
    assert listeners.listening_now(100.0) == 0
    listeners.heartbeat("s1", 100.0)
    assert listeners.listening_now(100.0) == 1
    assert listeners.total_tuned_in() == 1


# -- bounds ------------------------------------------------------------------


def test_sessions_beyond_the_cap_are_refused() -> None:
    listeners = counter(max_sessions=2)
    listeners.connection_opened("a", "c", 0.0)
    listeners.connection_opened("b", "c", 0.0)
    with pytest.raises(Unavailable) as full:
        listeners.heartbeat("c", 1.0)
    assert full.value.status == 503
    assert full.value.retry_after_s == CounterConfig().full_retry_after_s
    assert listeners.total_tuned_in() == 2  # the refused session never tuned in
    listeners.heartbeat("a", 2.0)  # known sessions still get through when full


def test_retry_after_says_when_the_oldest_idle_session_frees_its_slot() -> None:
    listeners = counter(max_sessions=2)
    listeners.heartbeat("a", 0.0)
    listeners.heartbeat("b", 5.0)
    with pytest.raises(Unavailable) as full:
        listeners.heartbeat("c", 10.0)
    assert full.value.retry_after_s == pytest.approx(20.0)


def test_a_full_counter_makes_room_by_expiring_stale_sessions() -> None:
    listeners = counter(max_sessions=2)
    listeners.heartbeat("a", 0.0)
    listeners.heartbeat("b", 0.0)
    listeners.heartbeat("c", TIMEOUT_S + 1)
    assert listeners.listening_now(TIMEOUT_S + 1) == 1
    assert listeners.total_tuned_in() == 3


@pytest.mark.parametrize("session_id", ["", "x" * 129])
def test_bad_session_ids_are_rejected(session_id: str) -> None:
    listeners = counter()
    with pytest.raises(BadRequest):
        listeners.heartbeat(session_id, 0.0)
    assert listeners.total_tuned_in() == 0


# -- anonymous sessions: bounded per address, forgotten ---------------------------------

KEY = b"k" * 32


def anon(address: str, detail: str) -> str:
    return anonymous_session(KEY, address, detail)


def test_one_address_holds_at_most_the_anonymous_bound_however_many_ids_it_makes() -> None:
    listeners = counter(max_sessions=100_000)
    bound = CounterConfig().max_anonymous_address_sessions
    refused = 0
    for i in range(5_000):  # random user agents (or forged ids) from one address
        try:
            listeners.heartbeat(anon("203.0.113.7", f"agent-{i}"), i * 0.001)
        except Unavailable:
            refused += 1
    assert listeners.listening_now(5.0) == bound
    assert refused == 5_000 - bound
    assert listeners.total_tuned_in() == bound  # remembered by slot, not by made-up id
    listeners.heartbeat(anon("198.51.100.1", "VLC"), 5.0)  # another address is not held up
    assert listeners.listening_now(5.0) == bound + 1


def test_anonymous_sessions_expire_and_free_their_slots() -> None:
    listeners = counter()
    bound = CounterConfig().max_anonymous_address_sessions
    for i in range(bound):
        listeners.heartbeat(anon("203.0.113.7", f"a{i}"), 0.0)
    assert listeners.anonymous_addresses() == 1
    assert listeners.listening_now(TIMEOUT_S + 1) == 0
    assert listeners.anonymous_addresses() == 0  # nothing kept of an address that left
    for i in range(bound):
        listeners.heartbeat(anon("203.0.113.7", f"b{i}"), TIMEOUT_S + 2)
    assert listeners.listening_now(TIMEOUT_S + 2) == bound
    # The same slots came back: the address still adds only ``bound`` to the total.
    assert listeners.total_tuned_in() == bound


def test_an_anonymous_stream_is_its_own_session_and_ends_with_its_connection() -> None:
    listeners = counter()
    one, two = anon("203.0.113.7", "ogg-1"), anon("203.0.113.7", "ogg-2")
    listeners.connection_opened(one, "c1", 0.0)
    listeners.connection_opened(two, "c2", 0.0)
    assert listeners.listening_now(0.0) == 2  # two players behind one address
    listeners.connection_closed(one, "c1", 1.0)
    listeners.leave_if_unconnected(one, 1.0)
    assert listeners.listening_now(1.0) == 1
    assert listeners.anonymous_addresses() == 1


def test_signed_sessions_are_not_held_to_the_anonymous_bound() -> None:
    listeners = counter()
    for i in range(50):
        listeners.heartbeat(f"signed{i:06d}.{'m' * 16}", 0.0)
    assert listeners.listening_now(0.0) == 50
    assert listeners.anonymous_addresses() == 0
