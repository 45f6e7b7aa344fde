"""The room journal's pieces: a record as JSON and back, the store's table, and the
fresh mic checks a restarted stage calls for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_room_restore import T, busy_room
from townhall.room.events import MicCheckPassed, MicCheckReset
from townhall.room.record import RoomRecord, record_from_json, record_to_json
from townhall.room.roles import Role, SpaceState
from townhall.room.state import Room
from townhall.store import Store


def test_a_busy_room_round_trips_through_json() -> None:
    room = busy_room()
    record = room.record()
    text = record_to_json(record)
    assert record_from_json(text) == record
    again = Room.restore(record_from_json(text))
    assert again.snapshot() == room.snapshot()
    assert again.is_removed("troll") and again.hand_queue() == ["e", "d"]
    assert again.reaction_tallies() == {"👏": 1, "❤️": 1}


@pytest.mark.parametrize(
    "record",
    [
        RoomRecord("sp", "h", "Scheduled", scheduled_at=None),
        RoomRecord("sp", "h", "Ended", "d", 5.0, SpaceState.ENDED, 7.5, removed=frozenset("xy")),
    ],
)
def test_quiet_records_round_trip_too(record: RoomRecord) -> None:
    assert record_from_json(record_to_json(record)) == record


@pytest.mark.parametrize(
    "text", ["", "[]", "{}", '{"space_id": "s"}', record_to_json(busy_room().record())[:-9]]
)
def test_text_that_is_no_record_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        record_from_json(text)


def test_an_unknown_role_in_the_journal_is_a_value_error() -> None:
    raw = json.loads(record_to_json(busy_room().record()))
    raw["participants"][0][2] = "emperor"
    with pytest.raises(ValueError):
        record_from_json(json.dumps(raw))


def test_the_store_keeps_the_latest_record_of_each_space(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    a, b = store.create_space("a", "", None), store.create_space("b", "", None)
    assert store.journaled_room(a.id) is None
    store.journal_room(a.id, "one", 1.0)
    store.journal_room(a.id, "two", 2.0)
    store.journal_room(b.id, "other", 2.0)
    again = Store(tmp_path / "db.sqlite3")  # another process opening the same file
    assert (again.journaled_room(a.id), again.journaled_room(b.id)) == ("two", "other")


def test_the_store_lists_its_live_spaces_in_start_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    a, b, c = (store.create_space(t, "", None) for t in "abc")
    store.set_state(b.id, "live", 2.0)
    store.set_state(a.id, "live", 3.0)
    store.set_state(c.id, "live", 1.0)
    store.set_state(c.id, "ended", 4.0)
    assert [s.id for s in store.live_spaces()] == [b.id, a.id]


def test_a_restarted_stage_resets_the_mic_check_of_whoever_was_heard() -> None:
    room = busy_room()  # h and a are heard; b is muted (checked? no); c never checked
    assert room.program() == ["h", "a"]
    events = room.reset_mic_checks(T + 30)
    assert events == [
        MicCheckReset(space_id="sp1", at=T + 30, participant_id="h"),
        MicCheckReset(space_id="sp1", at=T + 30, participant_id="a"),
    ]
    assert room.program() == []
    assert [s["live"] for s in room.snapshot()["stage"]] == [False] * 4  # type: ignore[index]
    # Roles, mutes, removals and hands are untouched.
    assert [(s["id"], s["role"], s["muted"]) for s in room.snapshot()["stage"]] == [  # type: ignore[index]
        ("h", "host", False),
        ("c", "cohost", False),
        ("b", "speaker", True),
        ("a", "speaker", False),
    ]
    assert room.is_removed("troll") and room.hand_queue() == ["e", "d"]
    assert room.reset_mic_checks(T + 31) == []  # nothing left to reset
    assert room.mic_check_passed("a", T + 32) == [
        MicCheckPassed(space_id="sp1", at=T + 32, participant_id="a")
    ]
    assert room.program() == ["a"]


def test_mic_checks_are_only_reset_in_a_live_space() -> None:
    room = Room("sp", "h", "t")
    room.join("h", "H", Role.HOST, T)
    assert room.reset_mic_checks(T) == []
    room.start("h", T)
    room.mic_check_passed("h", T)
    room.end("h", T + 1)
    assert room.reset_mic_checks(T + 2) == []
