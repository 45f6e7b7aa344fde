"""Who may do what in a Space: the full Action x role matrix, plus the target rules.

The expected matrix below is written out by hand from the product rules, not derived
from ``townhall.room.state.PERMISSIONS``; the tests drive the real Room methods and
compare what happens with it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from townhall.errors import BadRequest, Conflict, Forbidden, NotFound
from townhall.room.events import SpeakerMuted
from townhall.room.roles import Role, SpaceState
from townhall.room.state import PERMISSIONS, Action, Room

T = 100.0

# Columns: the four roles, plus a participant who was removed from the Space.
EXPECTED_MATRIX = """
                      host  cohost  speaker  listener  removed
start                 yes   no      no       no        no
end                   yes   no      no       no        no
add_cohost            yes   no      no       no        no
raise_hand            no    no      no       yes       no
lower_hand            no    no      no       yes       no
invite                yes   yes     no       no        no
withdraw_invitation   yes   yes     no       no        no
accept_invitation     no    no      no       yes       no
decline_invitation    no    no      no       yes       no
move_to_audience      yes   yes     no       no        no
step_down             no    yes     yes      no        no
mute_self             yes   yes     yes      no        no
mute_other            yes   yes     no       no        no
unmute_self           yes   yes     yes      no        no
unmute_other          no    no      no       no        no
remove                yes   yes     no       no        no
react                 yes   yes     yes      yes       no
publish_audio         yes   yes     yes      no        no
leave                 yes   yes     yes      yes       no
open_green_room       yes   no      no       no        no
issue_speaker_link    yes   yes     no       no        no
issue_cohost_link     yes   no      no       no        no
list_links            yes   yes     no       no        no
manage_links          yes   no      no       no        no
post_late_message     yes   yes     no       no        no
"""


def _parse_matrix(text: str) -> dict[tuple[str, str], bool]:
    header, *rows = [line.split() for line in text.strip().splitlines()]
    return {
        (row[0], column): cell == "yes"
        for row in rows
        for column, cell in zip(header, row[1:], strict=True)
    }


EXPECTED = _parse_matrix(EXPECTED_MATRIX)
COLUMNS = ["host", "cohost", "speaker", "listener", "removed"]

# One participant per column; "ts", "tl" and "ti" are targets (a speaker, a listener
# and a listener with a pending invitation) for actions aimed at someone else.
ACTOR_FOR_COLUMN = {"host": "h", "cohost": "c", "speaker": "s", "listener": "l", "removed": "x"}

Perform = Callable[[Room, str], object]

PERFORM: dict[Action, Perform] = {
    Action.START: lambda room, by: room.start(by, T),
    Action.END: lambda room, by: room.end(by, T),
    Action.ADD_COHOST: lambda room, by: room.add_cohost(by, "ts", T),
    Action.RAISE_HAND: lambda room, by: room.raise_hand(by, T),
    Action.LOWER_HAND: lambda room, by: room.lower_hand(by, T),
    Action.INVITE: lambda room, by: room.invite(by, "tl", T),
    Action.WITHDRAW_INVITATION: lambda room, by: room.withdraw_invitation(by, "ti", T),
    Action.ACCEPT_INVITATION: lambda room, by: room.accept_invitation(by, T),
    Action.DECLINE_INVITATION: lambda room, by: room.decline_invitation(by, T),
    Action.MOVE_TO_AUDIENCE: lambda room, by: room.move_to_audience(by, "ts", T),
    Action.STEP_DOWN: lambda room, by: room.move_to_audience(by, by, T),
    Action.MUTE_SELF: lambda room, by: room.mute(by, by, T),
    Action.MUTE_OTHER: lambda room, by: room.mute(by, "ts", T),
    Action.UNMUTE_SELF: lambda room, by: room.unmute(by, by, T),
    Action.UNMUTE_OTHER: lambda room, by: room.unmute(by, "ts", T),
    Action.REMOVE: lambda room, by: room.remove(by, "tl", T),
    Action.REACT: lambda room, by: room.react(by, "👏", T),
    Action.PUBLISH_AUDIO: lambda room, by: room.mic_check_passed(by, T),
    Action.LEAVE: lambda room, by: room.leave(by, T),
    Action.OPEN_GREEN_ROOM: lambda room, by: room.open_green_room(by, T),
    Action.ISSUE_SPEAKER_LINK: lambda room, by: room.issue_link(by, "new", Role.SPEAKER, "N", T),
    Action.ISSUE_COHOST_LINK: lambda room, by: room.issue_link(by, "new", Role.COHOST, "N", T),
    Action.LIST_LINKS: lambda room, by: room.links(by),
    Action.MANAGE_LINKS: lambda room, by: room.revoke_link(by, "tk", T),
    Action.POST_LATE_MESSAGE: lambda room, by: room.post_late_message(by, "ten minutes", T),
}


def cast_room(state: SpaceState = SpaceState.LIVE) -> Room:
    """A Space with one participant per column and the targets, in ``state``."""
    room = Room("sp1", "h", "Town hall")
    room.issue_link("h", "tk", Role.SPEAKER, "Tia", T)  # a link to revoke
    room.join("h", "Hana", Role.HOST, T)
    room.join("c", "Chidi", Role.COHOST, T)
    room.join("s", "Sam", Role.SPEAKER, T)
    room.join("ts", "Tara", Role.SPEAKER, T)
    for listener in ("l", "x", "tl", "ti"):
        room.join(listener, listener.upper(), Role.LISTENER, T)
    if state is SpaceState.LIVE:
        room.start("h", T)
        for speaker in ("h", "c", "s", "ts"):
            room.mic_check_passed(speaker, T)
        room.raise_hand("l", T)
        room.invite("h", "l", T)
        room.invite("h", "ti", T)
    room.remove("h", "x", T)
    return room


def _room_for(action: Action) -> Room:
    # START, the green room and the waiting room's message only make sense before the
    # Space is live; everything else is tried live.
    before = action in (Action.START, Action.OPEN_GREEN_ROOM, Action.POST_LATE_MESSAGE)
    return cast_room(SpaceState.SCHEDULED if before else SpaceState.LIVE)


# -- the matrix --------------------------------------------------------------


def test_expected_matrix_covers_every_action_and_column() -> None:
    assert {action for action, _ in EXPECTED} == {a.name.lower() for a in Action}
    assert {column for _, column in EXPECTED} == set(COLUMNS)
    assert set(PERFORM) == set(Action)


@pytest.mark.parametrize("column", COLUMNS)
@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.name.lower())
def test_permission_matrix(action: Action, column: str) -> None:
    room = _room_for(action)
    actor = ACTOR_FOR_COLUMN[column]
    if EXPECTED[(action.name.lower(), column)]:
        PERFORM[action](room, actor)
        return
    with pytest.raises(Forbidden) as refused:
        PERFORM[action](room, actor)
    assert refused.value.status == 403
    if column == "removed":
        assert "removed from this space" in refused.value.detail


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.name.lower())
def test_published_table_agrees_with_expected(action: Action, role: Role) -> None:
    assert PERMISSIONS[(action, role)] is EXPECTED[(action.name.lower(), role.value)]


def test_refusal_names_the_role_and_the_action() -> None:
    room = cast_room()
    with pytest.raises(Forbidden, match="a listener cannot end the space"):
        room.end("l", T)
    with pytest.raises(Forbidden, match="a speaker cannot invite a speaker"):
        room.invite("s", "tl", T)


def test_removed_participant_cannot_rejoin() -> None:
    room = cast_room()
    with pytest.raises(Forbidden, match="removed from this space"):
        room.join("x", "X again", Role.LISTENER, T)


def test_caller_who_never_joined_is_forbidden() -> None:
    room = cast_room()
    with pytest.raises(Forbidden, match="has not joined"):
        room.react("stranger", "👏", T)
    with pytest.raises(Forbidden, match="has not joined"):
        room.raise_hand("stranger", T)


# -- rules about the target --------------------------------------------------


def test_unknown_target_is_not_found() -> None:
    room = cast_room()
    for command in (
        lambda: room.invite("h", "ghost", T),
        lambda: room.mute("h", "ghost", T),
        lambda: room.move_to_audience("h", "ghost", T),
        lambda: room.remove("h", "ghost", T),
        lambda: room.add_cohost("h", "ghost", T),
    ):
        with pytest.raises(NotFound):
            command()


def test_nobody_but_the_host_mutes_the_host() -> None:
    room = cast_room()
    with pytest.raises(Forbidden, match="host"):
        room.mute("c", "h", T)
    [muted] = room.mute("h", "h", T)
    assert isinstance(muted, SpeakerMuted)
    assert muted.by == "h"


def test_cohost_may_mute_another_cohost() -> None:
    room = cast_room()
    room.add_cohost("h", "ts", T)
    [muted] = room.mute("c", "ts", T)
    assert isinstance(muted, SpeakerMuted)
    assert muted.by == "c"


def test_speaker_muted_by_host_unmutes_only_themselves() -> None:
    room = cast_room()
    room.mute("h", "s", T)
    with pytest.raises(Forbidden, match="unmute another speaker"):
        room.unmute("h", "s", T)
    with pytest.raises(Forbidden):
        room.unmute("c", "s", T)
    room.unmute("s", "s", T)
    assert room.in_program("s")


def test_speaker_cannot_mute_another_speaker() -> None:
    room = cast_room()
    with pytest.raises(Forbidden):
        room.mute("s", "ts", T)


def test_muting_a_listener_is_a_conflict() -> None:
    room = cast_room()
    with pytest.raises(Conflict, match="not on stage"):
        room.mute("h", "tl", T)


def test_only_the_host_demotes_a_cohost() -> None:
    room = cast_room()
    room.add_cohost("h", "ts", T)
    with pytest.raises(Forbidden, match="only the host"):
        room.move_to_audience("c", "ts", T)
    room.move_to_audience("h", "ts", T)
    assert room.role_of("ts") is Role.LISTENER


def test_cohost_may_step_down_themselves() -> None:
    room = cast_room()
    room.move_to_audience("c", "c", T)
    assert room.role_of("c") is Role.LISTENER


def test_nobody_moves_the_host_off_the_stage() -> None:
    room = cast_room()
    with pytest.raises(Forbidden):
        room.move_to_audience("c", "h", T)
    with pytest.raises(Forbidden):
        room.move_to_audience("h", "h", T)


def test_moving_a_listener_to_the_audience_is_a_conflict() -> None:
    room = cast_room()
    with pytest.raises(Conflict, match="not on stage"):
        room.move_to_audience("h", "tl", T)


def test_nobody_removes_the_host() -> None:
    room = cast_room()
    with pytest.raises(Forbidden, match="remove the host"):
        room.remove("c", "h", T)
    with pytest.raises(Forbidden, match="remove the host"):
        room.remove("h", "h", T)


def test_only_the_host_removes_a_cohost() -> None:
    room = cast_room()
    room.add_cohost("h", "ts", T)
    with pytest.raises(Forbidden, match="only the host"):
        room.remove("c", "ts", T)
    room.remove("h", "ts", T)
    assert room.is_removed("ts")


def test_cohost_may_remove_a_speaker() -> None:
    room = cast_room()
    room.remove("c", "s", T)
    assert room.is_removed("s")
    assert room.role_of("s") is None


def test_removing_yourself_is_a_bad_request() -> None:
    room = cast_room()
    with pytest.raises(BadRequest, match="leave instead"):
        room.remove("c", "c", T)


def test_only_the_host_adds_cohosts() -> None:
    room = cast_room()
    with pytest.raises(Forbidden, match="a cohost cannot add a cohost"):
        room.add_cohost("c", "s", T)


def test_listeners_never_publish() -> None:
    room = cast_room()
    assert not room.may_publish("l")
    with pytest.raises(Forbidden, match="a listener cannot publish audio"):
        room.mic_check_passed("l", T)
