"""The Room state machine: lifecycle, joining, hands, invitations, the stage, the program."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest

from townhall.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from townhall.room import events as room_events
from townhall.room.events import (
    CohostAdded,
    HandLowered,
    HandRaised,
    InvitationAccepted,
    InvitationDeclined,
    InvitationWithdrawn,
    LateMessagePosted,
    MicCheckPassed,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantRemoved,
    ReactionSent,
    RoomEvent,
    SpaceEnded,
    SpaceScheduled,
    SpaceStarted,
    SpeakerAdded,
    SpeakerInvited,
    SpeakerMovedToAudience,
    SpeakerMuted,
    SpeakerUnmuted,
)
from townhall.room.record import record_from_json, record_to_json
from townhall.room.roles import Role, SpaceState
from townhall.room.state import Action, Room, RoomConfig

T = 100.0


def new_room(config: RoomConfig | None = None) -> Room:
    room = Room("sp1", "h", "Town hall", config=config)
    room.join("h", "Hana", Role.HOST, T)
    return room


def live_room(config: RoomConfig | None = None) -> Room:
    room = new_room(config)
    room.start("h", T)
    room.mic_check_passed("h", T)
    return room


def with_listeners(room: Room, *pids: str) -> Room:
    for pid in pids:
        room.join(pid, pid.upper(), Role.LISTENER, T)
    return room


def bring_up(room: Room, pid: str, now: float = T) -> None:
    """Join ``pid`` as a listener, invite, accept and pass the mic check."""
    with_listeners(room, pid)
    room.invite("h", pid, now)
    room.accept_invitation(pid, now)
    room.mic_check_passed(pid, now)


def room_in(state: SpaceState) -> Room:
    room = new_room()
    if state is not SpaceState.SCHEDULED:
        room.start("h", T)
    if state is SpaceState.ENDED:
        room.end("h", T)
    return room


def stage_ids(room: Room) -> list[str]:
    stage = room.snapshot()["stage"]
    assert isinstance(stage, list)
    return [seat["id"] for seat in stage]


def kinds(events: list[RoomEvent]) -> list[type[RoomEvent]]:
    return [type(event) for event in events]


# -- lifecycle ---------------------------------------------------------------

LIFECYCLE = {
    (SpaceState.SCHEDULED, "start"): SpaceState.LIVE,
    (SpaceState.SCHEDULED, "end"): SpaceState.ENDED,
    (SpaceState.LIVE, "start"): None,
    (SpaceState.LIVE, "end"): SpaceState.ENDED,
    (SpaceState.ENDED, "start"): None,
    (SpaceState.ENDED, "end"): None,
}


@pytest.mark.parametrize(("state", "command"), list(LIFECYCLE), ids=str)
def test_lifecycle_transition(state: SpaceState, command: str) -> None:
    room = room_in(state)
    expected = LIFECYCLE[(state, command)]
    perform = room.start if command == "start" else room.end
    if expected is None:
        with pytest.raises(Conflict, match=f"space is {state.value}; cannot {command}"):
            perform("h", T)
        assert room.state is state
        return
    [event] = perform("h", T + 1)
    assert isinstance(event, SpaceStarted if command == "start" else SpaceEnded)
    assert (event.space_id, event.by, event.at) == ("sp1", "h", T + 1)
    assert room.state is expected


def test_schedule_emits_space_scheduled() -> None:
    room, [event] = Room.schedule(
        "sp9", "h", "  AMA  ", 5.0, description="Ask me anything", scheduled_at=3600.0
    )
    assert event == SpaceScheduled(
        space_id="sp9",
        at=5.0,
        by="h",
        title="AMA",
        description="Ask me anything",
        scheduled_at=3600.0,
    )
    assert room.state is SpaceState.SCHEDULED
    assert (room.title, room.scheduled_at) == ("AMA", 3600.0)


def test_early_start_before_scheduled_time_is_allowed() -> None:
    room = Room("sp1", "h", "Town hall", scheduled_at=10_000.0)
    room.join("h", "Hana", Role.HOST, T)
    room.start("h", T)
    assert room.state is SpaceState.LIVE


def test_bad_space_fields_are_rejected() -> None:
    with pytest.raises(BadRequest):
        Room("sp1", "h", "   ")
    with pytest.raises(BadRequest):
        Room("sp1", "", "Town hall")
    with pytest.raises(BadRequest):
        Room("sp1", "h", "x" * 101)


def test_ending_clears_hands_and_invitations() -> None:
    room = with_listeners(live_room(), "a", "b")
    room.raise_hand("a", T)
    room.invite("h", "b", T)
    room.end("h", T)
    assert room.hand_queue() == []
    assert room.pending_invitations() == []


# Every action against every lifecycle state, performed by a role that is allowed
# to do it, so only the state decides: "ok", "409" (Conflict) or "403" (Forbidden
# for everyone, whatever the state).
EXPECTED_BY_STATE = """
                      scheduled  live  ended
start                 ok         409   409
end                   ok         ok    409
add_cohost            ok         ok    409
raise_hand            409        ok    409
lower_hand            409        ok    409
invite                409        ok    409
withdraw_invitation   409        ok    409
accept_invitation     409        ok    409
decline_invitation    409        ok    409
move_to_audience      409        ok    409
step_down             409        ok    409
mute_self             409        ok    409
mute_other            409        ok    409
unmute_self           409        ok    409
unmute_other          403        403   403
remove                ok         ok    409
react                 409        ok    409
publish_audio         409        ok    409
leave                 ok         ok    ok
open_green_room       ok         409   409
issue_speaker_link    ok         ok    409
issue_cohost_link     ok         ok    409
list_links            ok         ok    ok
manage_links          ok         ok    409
post_late_message     ok         409   409
"""


def _parse(text: str) -> dict[tuple[str, str], str]:
    header, *rows = [line.split() for line in text.strip().splitlines()]
    return {
        (row[0], column): cell for row in rows for column, cell in zip(header, row[1:], strict=True)
    }


BY_STATE = _parse(EXPECTED_BY_STATE)

PERFORM_ALLOWED: dict[Action, Callable[[Room], object]] = {
    Action.START: lambda room: room.start("h", T),
    Action.END: lambda room: room.end("h", T),
    Action.ADD_COHOST: lambda room: room.add_cohost("h", "s", T),
    Action.RAISE_HAND: lambda room: room.raise_hand("l", T),
    Action.LOWER_HAND: lambda room: room.lower_hand("l", T),
    Action.INVITE: lambda room: room.invite("h", "l", T),
    Action.WITHDRAW_INVITATION: lambda room: room.withdraw_invitation("h", "i", T),
    Action.ACCEPT_INVITATION: lambda room: room.accept_invitation("i", T),
    Action.DECLINE_INVITATION: lambda room: room.decline_invitation("i", T),
    Action.MOVE_TO_AUDIENCE: lambda room: room.move_to_audience("h", "s", T),
    Action.STEP_DOWN: lambda room: room.move_to_audience("s", "s", T),
    Action.MUTE_SELF: lambda room: room.mute("s", "s", T),
    Action.MUTE_OTHER: lambda room: room.mute("h", "s", T),
    Action.UNMUTE_SELF: lambda room: room.unmute("s", "s", T),
    Action.UNMUTE_OTHER: lambda room: room.unmute("h", "s", T),
    Action.REMOVE: lambda room: room.remove("h", "l", T),
    Action.REACT: lambda room: room.react("l", "🔥", T),
    Action.PUBLISH_AUDIO: lambda room: room.mic_check_passed("s", T),
    Action.LEAVE: lambda room: room.leave("l", T),
    Action.OPEN_GREEN_ROOM: lambda room: room.open_green_room("h", T),
    Action.ISSUE_SPEAKER_LINK: lambda room: room.issue_link("h", "k2", Role.SPEAKER, "Kai", T),
    Action.ISSUE_COHOST_LINK: lambda room: room.issue_link("h", "k2", Role.COHOST, "Kai", T),
    Action.LIST_LINKS: lambda room: room.links("h"),
    Action.MANAGE_LINKS: lambda room: room.revoke_link("h", "k", T),
    Action.POST_LATE_MESSAGE: lambda room: room.post_late_message("h", "ten minutes", T),
}


def staged_room(state: SpaceState) -> Room:
    """Host, speaker "s", listener "l" and listener "i" (invited once live), and a
    speaker link "k" nobody opened yet."""
    room = new_room()
    room.issue_link("h", "k", Role.SPEAKER, "Kim", T)
    room.join("s", "Sam", Role.SPEAKER, T)
    with_listeners(room, "l", "i")
    if state is SpaceState.SCHEDULED:
        return room
    room.start("h", T)
    room.invite("h", "i", T)
    if state is SpaceState.ENDED:
        room.end("h", T)
    return room


def test_state_table_covers_every_action() -> None:
    assert {action for action, _ in BY_STATE} == {a.name.lower() for a in Action}
    assert set(PERFORM_ALLOWED) == set(Action)


@pytest.mark.parametrize("state", list(SpaceState), ids=lambda s: s.value)
@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.name.lower())
def test_action_legality_by_state(action: Action, state: SpaceState) -> None:
    room = staged_room(state)
    expected = BY_STATE[(action.name.lower(), state.value)]
    if expected == "ok":
        PERFORM_ALLOWED[action](room)
        return
    error = Conflict if expected == "409" else Forbidden
    with pytest.raises(error) as refused:
        PERFORM_ALLOWED[action](room)
    if error is Conflict:
        assert f"space is {state.value}" in refused.value.detail


@pytest.mark.parametrize(
    ("state", "joinable"),
    [(SpaceState.SCHEDULED, True), (SpaceState.LIVE, True), (SpaceState.ENDED, False)],
)
def test_join_by_state(state: SpaceState, joinable: bool) -> None:
    room = room_in(state)
    if joinable:
        assert kinds(room.join("a", "Ana", Role.LISTENER, T)) == [ParticipantJoined]
        return
    with pytest.raises(Conflict, match="space is ended; cannot join"):
        room.join("a", "Ana", Role.LISTENER, T)


# -- joining -----------------------------------------------------------------


def test_host_join_takes_the_stage() -> None:
    room = Room("sp1", "h", "Town hall")
    events = room.join("h", " Hana ", Role.HOST, T)
    assert events == [
        ParticipantJoined(space_id="sp1", at=T, participant_id="h", name="Hana", role=Role.HOST),
        SpeakerAdded(space_id="sp1", at=T, participant_id="h", role=Role.HOST),
    ]


def test_only_the_host_id_joins_as_host() -> None:
    room = new_room()
    with pytest.raises(Forbidden, match="host"):
        room.join("mallory", "Mallory", Role.HOST, T)
    other = Room("sp2", "h", "Town hall")
    with pytest.raises(Forbidden, match="host"):
        other.join("h", "Hana", Role.LISTENER, T)


def test_rejoin_is_a_reconnect_and_keeps_the_current_role() -> None:
    room = live_room()
    bring_up(room, "a")
    assert room.join("a", "Ana", Role.LISTENER, T + 5) == []
    assert room.role_of("a") is Role.SPEAKER
    assert room.participant_count() == 2


def test_join_as_speaker_needs_a_mic_check() -> None:
    room = live_room()
    events = room.join("s", "Sam", Role.SPEAKER, T)
    assert kinds(events) == [ParticipantJoined, SpeakerAdded]
    assert room.may_publish("s")
    assert not room.in_program("s")


def test_join_on_a_full_stage_is_a_conflict() -> None:
    room = live_room(RoomConfig(max_stage_seats=2))
    room.join("s", "Sam", Role.SPEAKER, T)
    with pytest.raises(Conflict, match="stage is full"):
        room.join("s2", "Sue", Role.SPEAKER, T)


def test_join_as_cohost_beyond_the_limit_is_a_conflict() -> None:
    room = live_room(RoomConfig(max_cohosts=1))
    room.join("c1", "Chidi", Role.COHOST, T)
    with pytest.raises(Conflict, match="cohosts"):
        room.join("c2", "Cleo", Role.COHOST, T)


def test_host_seat_is_kept_free_while_the_host_is_away() -> None:
    room = live_room(RoomConfig(max_stage_seats=2))
    room.leave("h", T)
    room.join("s", "Sam", Role.SPEAKER, T)
    with pytest.raises(Conflict, match="stage is full"):
        room.join("s2", "Sue", Role.SPEAKER, T)
    room.join("h", "Hana", Role.HOST, T)
    assert room.role_of("h") is Role.HOST


def test_a_full_space_is_unavailable_with_retry_after() -> None:
    room = live_room(RoomConfig(max_participants=2, full_retry_after_s=7.0))
    with_listeners(room, "a")
    with pytest.raises(Unavailable) as full:
        room.join("b", "Bo", Role.LISTENER, T)
    assert (full.value.status, full.value.retry_after_s) == (503, 7.0)


@pytest.mark.parametrize(("pid", "name"), [("", "Ana"), ("a", ""), ("a", "   "), ("a", "n" * 51)])
def test_bad_join_fields_are_rejected(pid: str, name: str) -> None:
    room = live_room()
    with pytest.raises(BadRequest):
        room.join(pid, name, Role.LISTENER, T)


def test_leave_drops_hand_and_invitation() -> None:
    room = with_listeners(live_room(), "a")
    room.raise_hand("a", T)
    room.invite("h", "a", T)
    assert room.leave("a", T + 1) == [ParticipantLeft(space_id="sp1", at=T + 1, participant_id="a")]
    assert room.hand_queue() == []
    assert room.pending_invitations() == []
    assert room.role_of("a") is None


# -- hands -------------------------------------------------------------------


def test_hand_queue_keeps_raise_order() -> None:
    room = with_listeners(live_room(), "a", "b", "c")
    for offset, pid in enumerate(["b", "c", "a"]):
        room.raise_hand(pid, T + offset)
    assert room.hand_queue() == ["b", "c", "a"]


def test_raising_twice_keeps_the_original_place() -> None:
    room = with_listeners(live_room(), "a", "b")
    assert room.raise_hand("a", T) == [HandRaised(space_id="sp1", at=T, participant_id="a")]
    room.raise_hand("b", T + 1)
    assert room.raise_hand("a", T + 2) == []
    assert room.hand_queue() == ["a", "b"]


def test_lowering_a_hand() -> None:
    room = with_listeners(live_room(), "a", "b")
    room.raise_hand("a", T)
    room.raise_hand("b", T)
    assert room.lower_hand("a", T) == [HandLowered(space_id="sp1", at=T, participant_id="a")]
    assert room.lower_hand("a", T) == []
    assert room.hand_queue() == ["b"]


def test_hand_can_be_raised_again_after_lowering_and_goes_last() -> None:
    room = with_listeners(live_room(), "a", "b")
    room.raise_hand("a", T)
    room.raise_hand("b", T)
    room.lower_hand("a", T)
    room.raise_hand("a", T)
    assert room.hand_queue() == ["b", "a"]


# -- invitations -------------------------------------------------------------


def test_invite_accept_brings_a_listener_on_stage() -> None:
    room = with_listeners(live_room(), "a")
    room.raise_hand("a", T)
    assert room.invite("h", "a", T) == [
        SpeakerInvited(space_id="sp1", at=T, participant_id="a", by="h")
    ]
    assert room.pending_invitations() == ["a"]
    events = room.accept_invitation("a", T + 1)
    assert kinds(events) == [InvitationAccepted, HandLowered, SpeakerAdded]
    assert events[-1] == SpeakerAdded(
        space_id="sp1", at=T + 1, participant_id="a", role=Role.SPEAKER
    )
    assert room.role_of("a") is Role.SPEAKER
    assert room.hand_queue() == []
    assert room.pending_invitations() == []


def test_accept_without_raised_hand_has_no_hand_lowered() -> None:
    room = with_listeners(live_room(), "a")
    room.invite("h", "a", T)
    assert kinds(room.accept_invitation("a", T)) == [InvitationAccepted, SpeakerAdded]


def test_cohost_can_invite_and_withdraw() -> None:
    room = with_listeners(live_room(), "a")
    room.join("c", "Chidi", Role.COHOST, T)
    room.invite("c", "a", T)
    assert room.withdraw_invitation("c", "a", T) == [
        InvitationWithdrawn(space_id="sp1", at=T, participant_id="a", by="c")
    ]
    with pytest.raises(Conflict, match="no pending invitation"):
        room.accept_invitation("a", T)


def test_inviting_twice_is_idempotent() -> None:
    room = with_listeners(live_room(), "a")
    room.invite("h", "a", T)
    assert room.invite("h", "a", T) == []
    assert room.pending_invitations() == ["a"]


def test_inviting_someone_on_stage_is_a_conflict() -> None:
    room = live_room()
    bring_up(room, "a")
    with pytest.raises(Conflict, match="already on stage"):
        room.invite("h", "a", T)


def test_decline_leaves_them_in_the_audience() -> None:
    room = with_listeners(live_room(), "a")
    room.invite("h", "a", T)
    assert room.decline_invitation("a", T) == [
        InvitationDeclined(space_id="sp1", at=T, participant_id="a")
    ]
    assert room.role_of("a") is Role.LISTENER
    with pytest.raises(Conflict, match="no pending invitation"):
        room.decline_invitation("a", T)


def test_withdrawing_a_missing_invitation_is_a_conflict() -> None:
    room = with_listeners(live_room(), "a")
    with pytest.raises(Conflict, match="no pending invitation"):
        room.withdraw_invitation("h", "a", T)


def test_accepting_on_a_full_stage_keeps_the_invitation() -> None:
    room = with_listeners(live_room(RoomConfig(max_stage_seats=2)), "a", "b")
    room.invite("h", "a", T)
    room.invite("h", "b", T)
    room.accept_invitation("a", T)
    with pytest.raises(Conflict, match="stage is full"):
        room.accept_invitation("b", T)
    assert room.pending_invitations() == ["b"]
    room.move_to_audience("a", "a", T)
    room.accept_invitation("b", T)
    assert room.role_of("b") is Role.SPEAKER


def test_stage_holds_exactly_max_stage_seats() -> None:
    room = live_room()
    for n in range(12):
        bring_up(room, f"p{n}")
    with_listeners(room, "late")
    room.invite("h", "late", T)
    with pytest.raises(Conflict, match=r"stage is full \(13 seats\)"):
        room.accept_invitation("late", T)
    assert len(stage_ids(room)) == 13


# -- the stage, mic check and program ----------------------------------------


def test_new_speaker_is_heard_only_after_the_mic_check() -> None:
    room = with_listeners(live_room(), "a")
    assert not room.may_publish("a")
    room.invite("h", "a", T)
    room.accept_invitation("a", T)
    assert room.may_publish("a")
    assert not room.in_program("a")
    assert room.mic_check_passed("a", T + 2) == [
        MicCheckPassed(space_id="sp1", at=T + 2, participant_id="a")
    ]
    assert room.in_program("a")
    assert room.mic_check_passed("a", T + 3) == []


def test_host_goes_through_the_same_mic_check() -> None:
    room = new_room()
    room.start("h", T)
    assert room.may_publish("h")
    assert not room.in_program("h")
    room.mic_check_passed("h", T)
    assert room.in_program("h")


def test_nobody_publishes_before_start_or_after_end() -> None:
    room = new_room()
    assert not room.may_publish("h")
    with pytest.raises(Conflict, match="space is scheduled"):
        room.mic_check_passed("h", T)
    room.start("h", T)
    room.mic_check_passed("h", T)
    room.end("h", T)
    assert not room.may_publish("h")
    assert not room.in_program("h")


def test_unknown_and_removed_participants_never_publish() -> None:
    room = live_room()
    bring_up(room, "a")
    room.remove("h", "a", T)
    assert not room.may_publish("a")
    assert not room.in_program("a")
    assert not room.may_publish("nobody")


def test_mute_takes_a_speaker_out_of_the_program() -> None:
    room = live_room()
    bring_up(room, "a")
    assert room.mute("h", "a", T) == [
        SpeakerMuted(space_id="sp1", at=T, participant_id="a", by="h")
    ]
    assert room.mute("h", "a", T) == []
    assert room.may_publish("a")
    assert not room.in_program("a")
    assert room.unmute("a", "a", T) == [SpeakerUnmuted(space_id="sp1", at=T, participant_id="a")]
    assert room.unmute("a", "a", T) == []
    assert room.in_program("a")


def test_speaker_mutes_themselves() -> None:
    room = live_room()
    bring_up(room, "a")
    [muted] = room.mute("a", "a", T)
    assert isinstance(muted, SpeakerMuted)
    assert muted.by == "a"
    assert room.program() == ["h"]


def test_moving_to_audience_resets_mic_check_and_mute() -> None:
    room = live_room()
    bring_up(room, "a")
    room.mute("a", "a", T)
    assert room.move_to_audience("h", "a", T) == [
        SpeakerMovedToAudience(space_id="sp1", at=T, participant_id="a", by="h")
    ]
    assert room.role_of("a") is Role.LISTENER
    assert not room.may_publish("a")
    room.invite("h", "a", T)
    room.accept_invitation("a", T)
    assert not room.in_program("a")  # a fresh mic check is needed
    room.mic_check_passed("a", T)
    assert room.in_program("a")  # and they come back unmuted


def test_speaker_steps_down_and_can_raise_a_hand_again() -> None:
    room = live_room()
    bring_up(room, "a")
    room.move_to_audience("a", "a", T)
    assert kinds(room.raise_hand("a", T)) == [HandRaised]


def test_speaker_cannot_raise_a_hand() -> None:
    room = live_room()
    bring_up(room, "a")
    with pytest.raises(Forbidden, match="a speaker cannot raise a hand"):
        room.raise_hand("a", T)


def test_program_lists_stage_members_being_heard_in_stage_order() -> None:
    room = live_room()
    bring_up(room, "a")
    bring_up(room, "b")
    room.join("c", "Chidi", Role.COHOST, T)
    room.mic_check_passed("c", T)
    room.mute("b", "b", T)
    assert room.program() == ["h", "c", "a"]


# -- co-hosts ----------------------------------------------------------------


def test_promote_speaker_to_cohost_keeps_their_mic() -> None:
    room = live_room()
    bring_up(room, "a")
    assert room.add_cohost("h", "a", T) == [
        CohostAdded(space_id="sp1", at=T, participant_id="a", by="h")
    ]
    assert room.role_of("a") is Role.COHOST
    assert room.in_program("a")
    assert room.add_cohost("h", "a", T) == []


def test_promote_listener_straight_to_cohost() -> None:
    room = with_listeners(live_room(), "a")
    room.raise_hand("a", T)
    room.invite("h", "a", T)
    events = room.add_cohost("h", "a", T)
    assert kinds(events) == [HandLowered, InvitationWithdrawn, CohostAdded, SpeakerAdded]
    assert events[-1] == SpeakerAdded(space_id="sp1", at=T, participant_id="a", role=Role.COHOST)
    assert room.hand_queue() == []
    assert room.pending_invitations() == []
    assert not room.in_program("a")


def test_cohost_limit() -> None:
    room = with_listeners(live_room(), "a", "b", "c")
    room.add_cohost("h", "a", T)
    room.add_cohost("h", "b", T)
    with pytest.raises(Conflict, match="already has 2 cohosts"):
        room.add_cohost("h", "c", T)
    room.move_to_audience("h", "b", T)
    room.add_cohost("h", "c", T)
    assert room.role_of("c") is Role.COHOST


def test_promoting_a_listener_needs_a_stage_seat() -> None:
    room = with_listeners(live_room(RoomConfig(max_stage_seats=2)), "a", "b")
    room.add_cohost("h", "a", T)
    with pytest.raises(Conflict, match="stage is full"):
        room.add_cohost("h", "b", T)


def test_host_cannot_be_made_cohost() -> None:
    room = live_room()
    with pytest.raises(Conflict, match="is the host"):
        room.add_cohost("h", "h", T)


def test_cohosts_can_be_arranged_before_the_start() -> None:
    room = with_listeners(new_room(), "a")
    room.add_cohost("h", "a", T)
    assert room.role_of("a") is Role.COHOST


# -- removal -----------------------------------------------------------------


def test_remove_blocks_and_clears_hand_and_invitation() -> None:
    room = with_listeners(live_room(), "a")
    room.raise_hand("a", T)
    room.invite("h", "a", T)
    assert room.remove("h", "a", T) == [
        ParticipantRemoved(space_id="sp1", at=T, participant_id="a", by="h")
    ]
    assert room.remove("h", "a", T) == []
    assert room.hand_queue() == []
    assert room.pending_invitations() == []
    with pytest.raises(Forbidden, match="removed from this space"):
        room.react("a", "👏", T)
    with pytest.raises(Forbidden, match="removed from this space"):
        room.join("a", "Ana", Role.LISTENER, T)


def test_removing_a_speaker_takes_them_off_stage() -> None:
    room = live_room()
    bring_up(room, "a")
    room.remove("h", "a", T)
    assert room.program() == ["h"]
    assert stage_ids(room) == ["h"]


def test_removing_someone_who_left_is_not_found() -> None:
    room = with_listeners(live_room(), "a")
    room.leave("a", T)
    with pytest.raises(NotFound):
        room.remove("h", "a", T)


# -- reactions ---------------------------------------------------------------


def test_reactions_are_tallied() -> None:
    room = with_listeners(live_room(), "a", "b")
    room.react("a", "👏", T)
    room.react("b", "👏", T)
    assert room.react("h", "🔥", T) == [
        ReactionSent(space_id="sp1", at=T, participant_id="h", emoji="🔥")
    ]
    assert room.reaction_tallies() == {"👏": 2, "🔥": 1}


def test_heart_with_and_without_variation_selector_is_one_reaction() -> None:
    room = with_listeners(live_room(), "a")
    room.react("a", "\u2764", T)
    room.react("a", "\u2764\ufe0f", T)
    assert room.reaction_tallies() == {"\u2764\ufe0f": 2}


@pytest.mark.parametrize("emoji", ["💩", "", "clap", "👏👏"])
def test_unknown_reaction_is_a_bad_request(emoji: str) -> None:
    room = with_listeners(live_room(), "a")
    with pytest.raises(BadRequest, match="unknown reaction"):
        room.react("a", emoji, T)
    assert room.reaction_tallies() == {}


# -- snapshot ----------------------------------------------------------------


def test_snapshot_is_json_and_complete() -> None:
    room = Room("sp1", "h", "Town hall", description="Weekly", scheduled_at=50.0)
    room.join("h", "Hana", Role.HOST, T)
    room.start("h", T)
    room.mic_check_passed("h", T)
    bring_up(room, "s")
    room.mute("s", "s", T)
    room.join("c", "Chidi", Role.COHOST, T)
    with_listeners(room, "a", "b")
    room.raise_hand("a", T)
    room.invite("h", "b", T)
    room.react("a", "💯", T)
    snapshot = json.loads(json.dumps(room.snapshot()))
    assert snapshot == {
        "space_id": "sp1",
        "state": "live",
        "title": "Town hall",
        "description": "Weekly",
        "scheduled_at": 50.0,
        "host_id": "h",
        "stage": [
            {"id": "h", "name": "Hana", "role": "host", "muted": False, "live": True},
            {"id": "c", "name": "Chidi", "role": "cohost", "muted": False, "live": False},
            {"id": "s", "name": "S", "role": "speaker", "muted": True, "live": True},
        ],
        "hand_queue": ["a"],
        "hand_count": 1,
        "pending_invitations": ["b"],
        "reaction_tallies": {"💯": 1},
        "participant_count": 5,
        "green_room": False,
        "late_message": "",
    }


def test_every_event_is_a_frozen_dataclass_with_space_and_time() -> None:
    event_classes = [
        obj
        for obj in vars(room_events).values()
        if isinstance(obj, type) and issubclass(obj, RoomEvent) and obj is not RoomEvent
    ]
    assert len(event_classes) == 26
    for event_class in event_classes:
        assert dataclasses.is_dataclass(event_class)
        assert event_class.__dataclass_params__.frozen, event_class  # type: ignore[attr-defined]
        names = {f.name for f in dataclasses.fields(event_class)}
        assert {"space_id", "at"} <= names, event_class


def test_the_host_posts_a_bounded_message_to_those_waiting() -> None:
    room = Room("sp1", "h", "Town hall")
    room.join("h", "Hana", Role.HOST, T)
    room.join("l", "Lee", Role.LISTENER, T)
    [posted] = room.post_late_message("h", "  Ten more minutes  ", T)
    assert posted == LateMessagePosted(space_id="sp1", at=T, by="h", message="Ten more minutes")
    assert room.snapshot()["late_message"] == "Ten more minutes"
    assert room.post_late_message("h", "Ten more minutes", T) == []  # a retry changes nothing
    with pytest.raises(BadRequest):
        room.post_late_message("h", "x" * 281, T)
    with pytest.raises(Forbidden):
        room.post_late_message("l", "hi", T)
    restored = Room.restore(record_from_json(record_to_json(room.record())))
    assert restored.late_message == "Ten more minutes"
    room.start("h", T)
    with pytest.raises(Conflict):
        room.post_late_message("h", "we are live", T)
