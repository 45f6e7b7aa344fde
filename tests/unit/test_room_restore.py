"""A Room rebuilt from a record: the same Space, going on where it was, with no events."""

from __future__ import annotations

import dataclasses

import pytest

from townhall.errors import Conflict, Forbidden
from townhall.room.events import InvitationAccepted, SpeakerAdded
from townhall.room.record import ParticipantRecord, RoomRecord
from townhall.room.roles import Role, SpaceState
from townhall.room.state import Room, RoomConfig

T = 100.0


def busy_room() -> Room:
    """A live Space with every kind of state the rules depend on."""
    room = Room("sp1", "h", "Town hall", description="about", scheduled_at=50.0)
    room.join("h", "Hana", Role.HOST, T)
    room.start("h", T + 1)
    room.mic_check_passed("h", T + 2)
    for pid in ("a", "b", "c", "d", "e", "troll"):
        room.join(pid, pid.upper(), Role.LISTENER, T + 3)
    for pid in ("b", "a"):  # seated in this order: the stage keeps it
        room.invite("h", pid, T + 4)
        room.accept_invitation(pid, T + 5)
    room.mic_check_passed("a", T + 6)
    room.mute("h", "b", T + 6)
    room.add_cohost("h", "c", T + 7)
    room.raise_hand("e", T + 8)
    room.raise_hand("d", T + 9)  # raised after e: the queue keeps that order
    room.invite("h", "d", T + 10)
    room.remove("h", "troll", T + 11)
    room.react("d", "👏", T + 12)
    room.react("e", "❤", T + 12)
    return room


def test_a_record_round_trips_to_the_same_room() -> None:
    room = busy_room()
    record = room.record()
    again = Room.restore(record)
    assert again.record() == record
    assert again.snapshot() == room.snapshot()
    assert (again.state, again.started_at) == (SpaceState.LIVE, T + 1)
    assert again.hand_queue() == ["e", "d"]
    assert again.pending_invitations() == ["d"]
    assert again.program() == room.program() == ["h", "a"]  # b is muted, c not mic-checked


def test_a_restored_room_goes_on_exactly_like_the_original() -> None:
    room, again = busy_room(), Room.restore(busy_room().record())
    accepted = again.accept_invitation("d", T + 20)
    assert accepted == room.accept_invitation("d", T + 20)
    assert isinstance(accepted[0], InvitationAccepted)
    assert again.snapshot() == room.snapshot()
    # d got the next seat after everyone already seated, in both.
    assert [s["id"] for s in again.snapshot()["stage"]] == ["h", "c", "b", "a", "d"]
    with pytest.raises(Forbidden, match="removed"):
        again.join("troll", "Troll", Role.LISTENER, T + 21)


def test_an_ended_space_is_built_in_its_ended_state() -> None:
    record = RoomRecord(
        "sp1",
        "h",
        "Over",
        state=SpaceState.ENDED,
        started_at=T,
        participants=(ParticipantRecord("h", "Host", Role.HOST, stage_seq=1),),
    )
    room = Room.restore(record)
    assert room.state is SpaceState.ENDED and room.started_at == T
    assert room.snapshot()["stage"] == [
        {"id": "h", "name": "Host", "role": "host", "muted": False, "live": False}
    ]
    with pytest.raises(Conflict, match="space is ended"):
        room.start("h", T + 1)
    with pytest.raises(Conflict, match="space is ended; cannot join"):
        room.join("x", "X", Role.LISTENER, T + 1)


def test_a_cancelled_space_never_started() -> None:
    room = Room.restore(RoomRecord("sp1", "h", "Cancelled", state=SpaceState.ENDED))
    assert (room.state, room.started_at, room.participant_count()) == (
        SpaceState.ENDED,
        None,
        0,
    )


def test_restoring_a_seat_continues_the_stage_order() -> None:
    record = RoomRecord(
        "sp1",
        "h",
        "t",
        state=SpaceState.LIVE,
        started_at=T,
        participants=(
            ParticipantRecord("h", "H", Role.HOST, live=True, stage_seq=1),
            ParticipantRecord("s2", "S2", Role.SPEAKER, stage_seq=7),
            ParticipantRecord("s1", "S1", Role.SPEAKER, stage_seq=3),
            ParticipantRecord("l", "L", Role.LISTENER),
        ),
        invitations=(("l", "h"),),
    )
    room = Room.restore(record)
    events = room.accept_invitation("l", T + 1)
    seated = [e for e in events if isinstance(e, SpeakerAdded)]
    assert [e.participant_id for e in seated] == ["l"]
    assert [s["id"] for s in room.snapshot()["stage"]] == ["h", "s1", "s2", "l"]
    assert room.record().participants[-1].stage_seq == 8


LIVE = RoomRecord(
    "sp1",
    "h",
    "t",
    state=SpaceState.LIVE,
    started_at=T,
    participants=(
        ParticipantRecord("h", "H", Role.HOST, stage_seq=1),
        ParticipantRecord("s", "S", Role.SPEAKER, stage_seq=2),
        ParticipantRecord("l", "L", Role.LISTENER),
    ),
)

INCONSISTENT = {
    "two hosts": dataclasses.replace(
        LIVE, participants=(*LIVE.participants, ParticipantRecord("x", "X", Role.HOST))
    ),
    "listed twice": dataclasses.replace(
        LIVE, participants=(*LIVE.participants, ParticipantRecord("l", "L", Role.LISTENER))
    ),
    "removed yet present": dataclasses.replace(LIVE, removed=frozenset({"l"})),
    "a muted listener": dataclasses.replace(
        LIVE,
        participants=(*LIVE.participants[:2], ParticipantRecord("l", "L", Role.LISTENER, True)),
    ),
    "a speaker's hand": dataclasses.replace(LIVE, hands=(("s", T),)),
    "a stranger invited": dataclasses.replace(LIVE, invitations=(("nobody", "h"),)),
    "hands before the start": dataclasses.replace(
        LIVE, state=SpaceState.SCHEDULED, started_at=None, hands=(("l", T),)
    ),
    "scheduled yet started": dataclasses.replace(LIVE, state=SpaceState.SCHEDULED),
    "live yet never started": dataclasses.replace(LIVE, started_at=None),
    "an unknown reaction": dataclasses.replace(LIVE, reaction_tallies=(("🍕", 1),)),
}


@pytest.mark.parametrize("record", list(INCONSISTENT.values()), ids=list(INCONSISTENT))
def test_an_inconsistent_record_is_refused(record: RoomRecord) -> None:
    with pytest.raises(ValueError, match="inconsistent record of space sp1"):
        Room.restore(record)


def test_a_record_past_the_stage_seats_is_refused() -> None:
    with pytest.raises(ValueError, match="stage is full"):
        Room.restore(LIVE, RoomConfig(max_stage_seats=1))
    assert Room.restore(LIVE, RoomConfig(max_stage_seats=2)).record() == LIVE
