"""The Room: who is in a Space, who is on stage, and what each of them may do.

Design
======

A Space is a small society with a strict order: one host, a few co-hosts, a stage of
speakers and an audience of listeners who raise hands. Every rule about that order
lives here, in one pure object that knows nothing of sockets, tokens or clocks.
Commands come in as method calls carrying who asks and ``now``; what happened comes
out as a list of frozen events (:mod:`townhall.room.events`). Refusals come out as
the errors of :mod:`townhall.errors`, which already know their HTTP status. This is
the sans-IO split of h11 and aioquic: the signalling adapter authenticates the caller,
calls one method, publishes the events and turns an error into a response; it never
decides anything itself.

Three tables
------------

The rules are three tables rather than branches scattered through the methods, so a
reviewer can read the whole policy in one screen and a test can walk every cell:

``PERMISSIONS``
    ``(Action, Role) -> bool``: may somebody holding this role attempt this action at
    all? "A listener cannot end the space" is a missing cell, not an ``if``.
``_LEGAL_IN``
    ``Action -> states``: in which lifecycle states the action makes sense. Hands,
    invitations, mutes and reactions only exist while the Space is LIVE; co-hosts can
    be arranged and trolls removed before it starts.
``_NEXT_STATE``
    where START and END take the lifecycle. SCHEDULED -> LIVE -> ENDED, with
    SCHEDULED -> ENDED meaning "cancelled". ENDED is terminal.

Every command checks in the same order, and the order matters because it decides
which error a confused client sees:

1. a removed participant gets ``Forbidden("... removed from this space")`` for
   everything, before anything else is revealed;
2. a caller who has not joined gets ``Forbidden``: the token was valid (checked
   upstream), but the caller is no participant;
3. the role table: ``Forbidden`` naming the role and the action;
4. the lifecycle table: ``Conflict`` naming the current state
   ("space is ended; cannot start the space");
5. rules about the *target*, which a two-dimensional table cannot express: nobody
   but the host mutes the host, only the host demotes or removes a co-host, an
   unknown target is ``NotFound``, a target in the wrong place is ``Conflict``.

Commands whose effect already holds (raising a raised hand, muting a muted speaker,
re-joining) return no events instead of failing: clients retry, and a retry must not
turn into an error or a duplicate.

The stage and the program
-------------------------

Being on the stage (host, co-host, speaker) gives the *right* to publish audio,
:meth:`Room.may_publish`. Being heard is stricter, :meth:`Room.in_program`: the media
layer must first report that the server really receives this participant's audio
(:meth:`Room.mic_check_passed`) and the speaker must not be muted. The host goes
through the same mic check as everyone else; one rule, no special case. Listeners
never publish: that is a missing cell in ``PERMISSIONS``.

The host's seat on the stage is always reserved, so a full stage can never lock out
a host who reconnects.

Time
----

``now`` is passed in (float seconds, monotonic or wall, the Room only records it),
which keeps every test deterministic and lets the hand queue keep raise order.

Identity: moderation binds the person
-------------------------------------

There are no accounts. A *person* is a participant id: the one their link carries (every
link issued to them, reissues included, carries the same id), or the one their listener
session carries. Moderation decisions are kept per id and outlive presence: a removed id
is banned for good, and an id a moderator moved to the audience may hold at most the
listener role (``_demoted``) until a moderator's invitation (accepted) or the host's
``add_cohost`` lifts it, however often it leaves and joins again with its link. What
this cannot catch: a person who comes back with a fresh listener session (another
browser, cleared storage) is a new id, and so is a person given a new link by
``invite`` rather than ``reissue``.

Links are single-holder: the first client that takes the stage (an offer or the stage
WebSocket) with a link and a holder key claims it (``claim_link``); from then on any
request with the link from another key, or none, is refused with ``LinkInUse`` (409),
never swapped in (``check_holder``). The host revokes a link (it stops
working and its person is signed out) or reissues it (a new generation for the same
person; the old token stops working and the claim is cleared).

Records
-------

:meth:`Room.record` gives the whole state as plain values
(:class:`~townhall.room.record.RoomRecord`) and :meth:`Room.restore` builds a Room
in that state directly, checked against the same rules, without replaying commands
or emitting events: an ended Space is rebuilt ended, a crashed live one can go on.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from townhall.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TownhallError,
    Unauthorized,
    Unavailable,
)
from townhall.room.events import (
    CohostAdded,
    GreenRoomOpened,
    HandLowered,
    HandRaised,
    InvitationAccepted,
    InvitationDeclined,
    InvitationWithdrawn,
    LateMessagePosted,
    LinkClaimed,
    LinkIssued,
    LinkReissued,
    LinkRevoked,
    MicCheckPassed,
    MicCheckReset,
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
from townhall.room.record import LinkRecord, ParticipantRecord, RoomRecord
from townhall.room.roles import STAGE_ROLES, Role, SpaceState


class Action(enum.Enum):
    """Everything a participant can ask of the Room; values read well in errors."""

    START = "start the space"
    END = "end the space"
    ADD_COHOST = "add a cohost"
    RAISE_HAND = "raise a hand"
    LOWER_HAND = "lower a hand"
    INVITE = "invite a speaker"
    WITHDRAW_INVITATION = "withdraw an invitation"
    ACCEPT_INVITATION = "accept an invitation"
    DECLINE_INVITATION = "decline an invitation"
    MOVE_TO_AUDIENCE = "move a speaker to the audience"
    STEP_DOWN = "step down from the stage"
    MUTE_SELF = "mute themselves"
    MUTE_OTHER = "mute another speaker"
    UNMUTE_SELF = "unmute themselves"
    UNMUTE_OTHER = "unmute another speaker"
    REMOVE = "remove a participant"
    REACT = "react"
    PUBLISH_AUDIO = "publish audio"
    LEAVE = "leave the space"
    OPEN_GREEN_ROOM = "open the green room"
    ISSUE_SPEAKER_LINK = "issue a speaker link"
    ISSUE_COHOST_LINK = "issue a cohost link"
    LIST_LINKS = "see the links"
    MANAGE_LINKS = "revoke or reissue a link"
    POST_LATE_MESSAGE = "post a message to those waiting"


_HOSTS = frozenset({Role.HOST, Role.COHOST})
_SELF_ON_STAGE = frozenset({Role.COHOST, Role.SPEAKER})  # the host cannot step down
_AUDIENCE = frozenset({Role.LISTENER})
_EVERYONE = frozenset(Role)
_NOBODY: frozenset[Role] = frozenset()

_ALLOWED_ROLES: dict[Action, frozenset[Role]] = {
    Action.START: frozenset({Role.HOST}),
    Action.END: frozenset({Role.HOST}),
    Action.ADD_COHOST: frozenset({Role.HOST}),
    Action.RAISE_HAND: _AUDIENCE,
    Action.LOWER_HAND: _AUDIENCE,
    Action.INVITE: _HOSTS,
    Action.WITHDRAW_INVITATION: _HOSTS,
    Action.ACCEPT_INVITATION: _AUDIENCE,
    Action.DECLINE_INVITATION: _AUDIENCE,
    Action.MOVE_TO_AUDIENCE: _HOSTS,
    Action.STEP_DOWN: _SELF_ON_STAGE,
    Action.MUTE_SELF: STAGE_ROLES,
    Action.MUTE_OTHER: _HOSTS,
    Action.UNMUTE_SELF: STAGE_ROLES,
    # Unmuting is the speaker's own decision; a host turning someone's mic on would
    # broadcast a person who did not choose to speak.
    Action.UNMUTE_OTHER: _NOBODY,
    Action.REMOVE: _HOSTS,
    Action.REACT: _EVERYONE,
    Action.PUBLISH_AUDIO: STAGE_ROLES,
    Action.LEAVE: _EVERYONE,
    Action.OPEN_GREEN_ROOM: frozenset({Role.HOST}),
    Action.ISSUE_SPEAKER_LINK: _HOSTS,
    # A link for a co-host makes a co-host, which only the host does (ADD_COHOST).
    Action.ISSUE_COHOST_LINK: frozenset({Role.HOST}),
    Action.LIST_LINKS: _HOSTS,
    Action.MANAGE_LINKS: frozenset({Role.HOST}),
    Action.POST_LATE_MESSAGE: _HOSTS,
}

PERMISSIONS: Mapping[tuple[Action, Role], bool] = MappingProxyType(
    {(action, role): role in _ALLOWED_ROLES[action] for action in Action for role in Role}
)

_WHILE_LIVE = frozenset({SpaceState.LIVE})
_BEFORE_END = frozenset({SpaceState.SCHEDULED, SpaceState.LIVE})

_LEGAL_IN: dict[Action, frozenset[SpaceState]] = {
    Action.START: frozenset({SpaceState.SCHEDULED}),  # early start is fine
    Action.END: _BEFORE_END,  # ending a scheduled Space cancels it
    Action.ADD_COHOST: _BEFORE_END,
    Action.REMOVE: _BEFORE_END,
    Action.LEAVE: frozenset(SpaceState),
    Action.OPEN_GREEN_ROOM: frozenset({SpaceState.SCHEDULED}),
    # Links are handed out before the start too; reading them stays possible after it.
    Action.ISSUE_SPEAKER_LINK: _BEFORE_END,
    Action.ISSUE_COHOST_LINK: _BEFORE_END,
    Action.LIST_LINKS: frozenset(SpaceState),
    Action.MANAGE_LINKS: _BEFORE_END,
    **{
        action: _WHILE_LIVE
        for action in Action
        if action
        not in {
            Action.START,
            Action.END,
            Action.ADD_COHOST,
            Action.REMOVE,
            Action.LEAVE,
            Action.OPEN_GREEN_ROOM,
            Action.ISSUE_SPEAKER_LINK,
            Action.ISSUE_COHOST_LINK,
            Action.LIST_LINKS,
            Action.MANAGE_LINKS,
        }
    },
    # Only those waiting for the start read it; once live, the Space speaks for itself.
    Action.POST_LATE_MESSAGE: frozenset({SpaceState.SCHEDULED}),
}

# The green room: the stage is open before the start (the state stays SCHEDULED, so
# listeners keep waiting). These actions are legal there too, on top of ``_LEGAL_IN``:
# the people on stage check their microphones and hear each other, and mute.
_LEGAL_IN_GREEN_ROOM = frozenset(
    {
        Action.PUBLISH_AUDIO,
        Action.MUTE_SELF,
        Action.MUTE_OTHER,
        Action.UNMUTE_SELF,
        Action.UNMUTE_OTHER,
        Action.STEP_DOWN,
        Action.MOVE_TO_AUDIENCE,
    }
)

_NEXT_STATE: dict[Action, SpaceState] = {
    Action.START: SpaceState.LIVE,
    Action.END: SpaceState.ENDED,
}

# Participants join while the Space is scheduled to wait for the start.
_JOINABLE_IN = _BEFORE_END

ALLOWED_REACTIONS = frozenset({"👏", "❤️", "😂", "🔥", "💯", "🙌", "👍", "😮"})
# Keyboards send the heart with or without the emoji variation selector (U+FE0F);
# both mean the same reaction and must land in one tally.
_REACTION_ALIASES = {"\u2764": "\u2764\ufe0f"}


def is_allowed(action: Action, role: Role) -> bool:
    return PERMISSIONS[(action, role)]


@dataclass(frozen=True, slots=True)
class RoomConfig:
    max_cohosts: int = 2
    max_stage_seats: int = 13  # seats, the host's included
    max_participants: int = 100_000
    max_name_chars: int = 50
    max_title_chars: int = 100
    max_description_chars: int = 1_000
    full_retry_after_s: float = 5.0
    # Everyone on stage disconnected (or silent with a dead microphone) this long: the
    # listeners are told the host is reconnecting; this long, the Space ends by itself.
    abandon_warning_s: float = 20.0
    abandon_end_s: float = 300.0
    # People invited by link per Space (revoked links included: they must stay refused).
    max_invited_participants: int = 1_000
    # The host's note to the listeners waiting for a late start (a tweet's length).
    max_late_message_chars: int = 280

    # Hands raised at once; past it a raise is refused (409) until hands are lowered or
    # answered, so the queue (and the journal that keeps it) stays bounded.
    max_raised_hands: int = 500
    # Hands listed in a snapshot (the first in raise order); ``hand_count`` has the total.
    max_listed_hands: int = 50


class LinkInUse(Conflict):
    """A second client opened a link another client already holds."""

    code = "link_in_use"


_RANK = {Role.LISTENER: 0, Role.SPEAKER: 1, Role.COHOST: 2, Role.HOST: 3}
_LINK_ROLES = frozenset({Role.SPEAKER, Role.COHOST})


@dataclass(slots=True)
class Participant:
    id: str
    name: str
    role: Role
    muted: bool = False
    # True once the media layer confirmed it receives this speaker's audio.
    live: bool = False
    # Order of arrival on stage, so the stage lists in a stable order.
    stage_seq: int = 0

    @property
    def on_stage(self) -> bool:
        return self.role in STAGE_ROLES


_STAGE_ORDER = {Role.HOST: 0, Role.COHOST: 1, Role.SPEAKER: 2}


class Room:
    """One Space's social state. Not thread-safe: one owner task drives it."""

    def __init__(
        self,
        space_id: str,
        host_id: str,
        title: str,
        *,
        description: str = "",
        scheduled_at: float | None = None,
        config: RoomConfig | None = None,
    ) -> None:
        self.config = config or RoomConfig()
        self.space_id = _require_id(space_id, "space id")
        self.host_id = _require_id(host_id, "host id")
        self.title = _bounded_text(title, "title", self.config.max_title_chars)
        self.description = _bounded_text(
            description, "description", self.config.max_description_chars, allow_empty=True
        )
        self.scheduled_at = scheduled_at
        self.started_at: float | None = None
        self._state = SpaceState.SCHEDULED
        self._participants: dict[str, Participant] = {}
        self._removed: set[str] = set()
        self._hands: dict[str, float] = {}  # insertion order is raise order
        self._invitations: dict[str, str] = {}  # invitee -> inviter, in invite order
        self._tallies: dict[str, int] = {}
        self._stage_seq = itertools.count(1)
        # The stage is open before the start (the green room); the start closes it.
        self.green_room = False
        self._demoted: dict[str, Role] = {}  # person -> the highest role they may hold
        self._links: dict[str, LinkRecord] = {}  # person -> their link, in issue order
        self.late_message = ""

    @classmethod
    def schedule(
        cls,
        space_id: str,
        host_id: str,
        title: str,
        now: float,
        *,
        description: str = "",
        scheduled_at: float | None = None,
        config: RoomConfig | None = None,
    ) -> tuple[Room, list[RoomEvent]]:
        """Create a Space in SCHEDULED; ``scheduled_at=None`` means "starting soon"."""
        room = cls(
            space_id,
            host_id,
            title,
            description=description,
            scheduled_at=scheduled_at,
            config=config,
        )
        scheduled = SpaceScheduled(
            space_id=room.space_id,
            at=now,
            by=room.host_id,
            title=room.title,
            description=room.description,
            scheduled_at=scheduled_at,
        )
        return room, [scheduled]

    @classmethod
    def restore(cls, record: RoomRecord, config: RoomConfig | None = None) -> Room:
        """Rebuild a Room in the state ``record`` describes; ``record()`` gives it back.

        Emits no events: nothing happens, the Space only goes on where it was. The
        record is held to the rules the commands enforce (one host, the seats, the
        co-hosts, hands and invitations only from the audience of a live Space), so a
        corrupt record fails here with ``ValueError`` instead of inside a later command.
        """
        room = cls(
            record.space_id,
            record.host_id,
            record.title,
            description=record.description,
            scheduled_at=record.scheduled_at,
            config=config,
        )
        try:
            room._restore(record)
        except TownhallError as err:
            raise ValueError(f"inconsistent record of space {record.space_id}: {err}") from err
        return room

    def _restore(self, record: RoomRecord) -> None:
        started = record.started_at is not None
        if (record.state is SpaceState.SCHEDULED and started) or (
            record.state is SpaceState.LIVE and not started
        ):
            raise Conflict(f"a {record.state.value} space with started_at={record.started_at}")
        self._state = record.state
        self.started_at = record.started_at
        for p in record.participants:
            if p.id in self._participants or p.id in record.removed:
                raise Conflict(f"{p.id} is listed twice or both present and removed")
            participant = self._admit(p.id, p.name, p.role)
            if not participant.on_stage and (p.muted or p.live or p.stage_seq):
                raise Conflict(f"{p.id} is in the audience but has a seat's state")
            participant.muted, participant.live = p.muted, p.live
            participant.stage_seq = p.stage_seq
        self._removed = set(record.removed)
        if (record.hands or record.invitations) and self._state is not SpaceState.LIVE:
            raise Conflict(f"hands or invitations in a {self._state.value} space")
        for pid, raised_at in record.hands:
            self._check_in_audience(pid)
            self._hands[pid] = raised_at
        for invitee, inviter in record.invitations:
            self._check_in_audience(invitee)
            self._invitations[invitee] = inviter
        for emoji, count in record.reaction_tallies:
            self._tallies[_canonical_reaction(emoji)] = count
        for pid, cap in record.demoted:
            if cap is Role.HOST or pid == self.host_id:
                raise Conflict(f"{pid} is demoted to {cap.value}")
            self._demoted[pid] = cap
        for link in record.links:
            if link.participant_id in self._links or link.participant_id == self.host_id:
                raise Conflict(f"a second link for {link.participant_id}")
            if link.role not in _LINK_ROLES or link.generation < 1:
                raise Conflict(f"a link for {link.participant_id} as {link.role.value}")
            self._links[link.participant_id] = link
        seats = [p.stage_seq for p in self._participants.values()]
        self._stage_seq = itertools.count(max(seats, default=0) + 1)
        if record.green_room and self._state is not SpaceState.SCHEDULED:
            raise Conflict(f"a green room in a {self._state.value} space")
        self.green_room = record.green_room
        self.late_message = record.late_message

    def record(self) -> RoomRecord:
        """The Room's state as plain values (see :mod:`townhall.room.record`)."""
        return RoomRecord(
            space_id=self.space_id,
            host_id=self.host_id,
            title=self.title,
            description=self.description,
            scheduled_at=self.scheduled_at,
            state=self._state,
            started_at=self.started_at,
            participants=tuple(
                ParticipantRecord(p.id, p.name, p.role, p.muted, p.live, p.stage_seq)
                for p in self._participants.values()
            ),
            removed=frozenset(self._removed),
            hands=tuple(self._hands.items()),
            invitations=tuple(self._invitations.items()),
            reaction_tallies=tuple(self._tallies.items()),
            green_room=self.green_room,
            demoted=tuple(self._demoted.items()),
            links=tuple(self._links.values()),
            late_message=self.late_message,
        )

    # -- lifecycle -----------------------------------------------------------

    @property
    def state(self) -> SpaceState:
        return self._state

    def start(self, by: str, now: float) -> list[RoomEvent]:
        self._actor(by, Action.START)
        self._state = _NEXT_STATE[Action.START]
        self.started_at = now
        # Mic checks passed in the green room stand: those people are heard at once.
        self.green_room = False
        return [SpaceStarted(space_id=self.space_id, at=now, by=by)]

    def open_green_room(self, by: str, now: float) -> list[RoomEvent]:
        """Open the stage before the start: the people on stage check their microphones
        and hear each other; the audience hears nothing until the start."""
        self._actor(by, Action.OPEN_GREEN_ROOM)
        if self.green_room:
            return []
        self.green_room = True
        return [GreenRoomOpened(space_id=self.space_id, at=now, by=by)]

    def end(self, by: str, now: float) -> list[RoomEvent]:
        self._actor(by, Action.END)
        return self._ended(by, now)

    def end_abandoned(self, now: float) -> list[RoomEvent]:
        """Nobody on stage came back (see ``abandon_phase``): the Space ends by itself,
        ended by nobody (``by`` is empty)."""
        if self._state not in _LEGAL_IN[Action.END]:
            raise Conflict(f"space is {self._state.value}; cannot {Action.END.value}")
        return self._ended("", now)

    def _ended(self, by: str, now: float) -> list[RoomEvent]:
        self._state = _NEXT_STATE[Action.END]
        self.green_room = False
        # Hands and invitations mean nothing once the Space is over.
        self._hands.clear()
        self._invitations.clear()
        return [SpaceEnded(space_id=self.space_id, at=now, by=by)]

    def post_late_message(self, by: str, message: str, now: float) -> list[RoomEvent]:
        """The host's word to those waiting ("ten more minutes"); empty takes it back."""
        self._actor(by, Action.POST_LATE_MESSAGE)
        text = _bounded_text(
            message, "message", self.config.max_late_message_chars, allow_empty=True
        )
        if text == self.late_message:
            return []
        self.late_message = text
        return [LateMessagePosted(space_id=self.space_id, at=now, by=by, message=text)]

    # -- presence ------------------------------------------------------------

    def join(self, pid: str, name: str, role: Role, now: float) -> list[RoomEvent]:
        """Register ``pid`` with the role its signed token grants.

        Joining again while present is a reconnect: the Room's view of the participant
        (who may have been promoted since the token was issued) wins. Joining again
        after leaving, a person a moderator took off the stage comes back no higher
        than the moderator left them.
        """
        self._check_not_removed(pid)
        if self._state not in _JOINABLE_IN:
            raise Conflict(f"space is {self._state.value}; cannot join")
        if pid in self._participants:
            return []
        role = self.allowed_role(pid, role)
        participant = self._admit(pid, name, role)
        joined = ParticipantJoined(
            space_id=self.space_id, at=now, participant_id=pid, name=participant.name, role=role
        )
        if not participant.on_stage:
            return [joined]
        return [joined, self._seat(participant, role, now)]

    def leave(self, by: str, now: float) -> list[RoomEvent]:
        self._actor(by, Action.LEAVE)
        self._drop(by)
        return [ParticipantLeft(space_id=self.space_id, at=now, participant_id=by)]

    def remove(self, by: str, who: str, now: float) -> list[RoomEvent]:
        """Remove ``who`` and block them from this Space for good."""
        actor = self._actor(by, Action.REMOVE)
        if who in self._removed:
            return []
        target = self._target(who)
        self._check_may_remove(actor, target)
        self._drop(who)
        self._removed.add(who)
        return [ParticipantRemoved(space_id=self.space_id, at=now, participant_id=who, by=by)]

    # -- hands ---------------------------------------------------------------

    def raise_hand(self, by: str, now: float) -> list[RoomEvent]:
        self._actor(by, Action.RAISE_HAND)
        if by in self._hands:
            return []  # keep the original place in the queue
        if len(self._hands) >= self.config.max_raised_hands:
            raise Conflict(
                f"the hand queue is full ({self.config.max_raised_hands} hands raised); "
                "try again once the host has answered some"
            )
        self._hands[by] = now
        return [HandRaised(space_id=self.space_id, at=now, participant_id=by)]

    def lower_hand(self, by: str, now: float) -> list[RoomEvent]:
        self._actor(by, Action.LOWER_HAND)
        return self._lower_hand_of(by, now)

    def dismiss_hand(self, by: str, who: str, now: float) -> list[RoomEvent]:
        """A moderator lowers someone's hand: whoever may invite may also say no."""
        self._actor(by, Action.INVITE)
        return self._lower_hand_of(who, now)

    # -- invitations ---------------------------------------------------------

    def invite(self, by: str, who: str, now: float) -> list[RoomEvent]:
        # A full stage does not block the invitation: a seat may free up before the
        # listener accepts, and acceptance checks the seat.
        self._actor(by, Action.INVITE)
        target = self._target(who)
        if target.on_stage:
            raise Conflict(f"{who} is already on stage")
        if who in self._invitations:
            return []
        self._invitations[who] = by
        return [SpeakerInvited(space_id=self.space_id, at=now, participant_id=who, by=by)]

    def withdraw_invitation(self, by: str, who: str, now: float) -> list[RoomEvent]:
        self._actor(by, Action.WITHDRAW_INVITATION)
        self._check_invited(who)
        del self._invitations[who]
        return [InvitationWithdrawn(space_id=self.space_id, at=now, participant_id=who, by=by)]

    def accept_invitation(self, by: str, now: float) -> list[RoomEvent]:
        listener = self._actor(by, Action.ACCEPT_INVITATION)
        self._check_invited(by)
        self._check_stage_seat(Role.SPEAKER)  # the invitation stays pending if full
        del self._invitations[by]
        self._demoted.pop(by, None)  # a moderator asked them back
        accepted = InvitationAccepted(space_id=self.space_id, at=now, participant_id=by)
        return [accepted, *self._lower_hand_of(by, now), self._seat(listener, Role.SPEAKER, now)]

    def decline_invitation(self, by: str, now: float) -> list[RoomEvent]:
        self._actor(by, Action.DECLINE_INVITATION)
        self._check_invited(by)
        del self._invitations[by]
        return [InvitationDeclined(space_id=self.space_id, at=now, participant_id=by)]

    # -- the stage -----------------------------------------------------------

    def add_cohost(self, by: str, who: str, now: float) -> list[RoomEvent]:
        """Promote a speaker, or a listener straight from the audience, to co-host."""
        self._actor(by, Action.ADD_COHOST)
        target = self._target(who)
        if target.role is Role.COHOST:
            return []
        if target.role is Role.HOST:
            raise Conflict(f"{who} is the host")
        self._check_cohost_seat()
        self._demoted.pop(who, None)  # the host asked them back
        if target.on_stage:
            target.role = Role.COHOST
            return [CohostAdded(space_id=self.space_id, at=now, participant_id=who, by=by)]
        self._check_stage_seat(Role.COHOST)
        events = self._leave_audience(target, by, now)
        events.append(CohostAdded(space_id=self.space_id, at=now, participant_id=who, by=by))
        events.append(self._seat(target, Role.COHOST, now))
        return events

    def move_to_audience(self, by: str, who: str, now: float) -> list[RoomEvent]:
        """Take ``who`` off the stage; ``by == who`` is stepping down voluntarily."""
        action = Action.STEP_DOWN if by == who else Action.MOVE_TO_AUDIENCE
        actor = self._actor(by, action)
        target = self._on_stage_target(who)
        self._check_may_demote(actor, target)
        if by != who:
            # A moderator's decision about the person: a rejoin with the link must not
            # undo it (stepping down is the speaker's own and binds nothing).
            self._demoted[who] = Role.LISTENER
        target.role = Role.LISTENER
        target.muted = False
        target.live = False  # a later return to the stage needs a fresh mic check
        target.stage_seq = 0  # no seat: the record of an audience member has none
        return [SpeakerMovedToAudience(space_id=self.space_id, at=now, participant_id=who, by=by)]

    def mic_check_passed(self, who: str, now: float) -> list[RoomEvent]:
        """Reported by the media layer once the server actually receives ``who``'s audio."""
        speaker = self._actor(who, Action.PUBLISH_AUDIO)
        if speaker.live:
            return []
        speaker.live = True
        return [MicCheckPassed(space_id=self.space_id, at=now, participant_id=who)]

    def reset_mic_checks(self, now: float) -> list[RoomEvent]:
        """The media layer lost everyone's audio (its stage restarted): each speaker who
        was heard must pass a fresh mic check before reaching the program again, so a
        reconnect that sends nothing (a dead microphone, a stale tab) stays out of it."""
        if self._state is not SpaceState.LIVE and not self.green_room:
            return []
        events: list[RoomEvent] = []
        for p in self._stage():
            if p.live:
                p.live = False
                events.append(MicCheckReset(space_id=self.space_id, at=now, participant_id=p.id))
        return events

    def mute(self, by: str, who: str, now: float) -> list[RoomEvent]:
        self._actor(by, Action.MUTE_SELF if by == who else Action.MUTE_OTHER)
        target = self._on_stage_target(who)
        if target.role is Role.HOST and by != who:
            raise Forbidden("nobody but the host can mute the host")
        if target.muted:
            return []
        target.muted = True
        return [SpeakerMuted(space_id=self.space_id, at=now, participant_id=who, by=by)]

    def unmute(self, by: str, who: str, now: float) -> list[RoomEvent]:
        # UNMUTE_OTHER is allowed for no role, so only a speaker's own request passes.
        self._actor(by, Action.UNMUTE_SELF if by == who else Action.UNMUTE_OTHER)
        target = self._on_stage_target(who)
        if not target.muted:
            return []
        target.muted = False
        return [SpeakerUnmuted(space_id=self.space_id, at=now, participant_id=who)]

    # -- invitation links ----------------------------------------------------

    def issue_link(self, by: str, pid: str, role: Role, name: str, now: float) -> list[RoomEvent]:
        """Register a link that brings the new person ``pid`` on stage as ``role``."""
        if role not in _LINK_ROLES:
            raise BadRequest("a link brings someone on stage as a speaker or a cohost")
        action = Action.ISSUE_COHOST_LINK if role is Role.COHOST else Action.ISSUE_SPEAKER_LINK
        self._link_manager(by, action)
        _require_id(pid, "participant id")
        if pid in self._links or pid in self._participants or pid in self._removed:
            raise Conflict(f"{pid} is already known in this space")
        if pid == self.host_id:
            raise Conflict("the host has their own link")
        if len(self._links) >= self.config.max_invited_participants:
            raise Conflict(f"the space already has {self.config.max_invited_participants} links")
        clean_name = _bounded_text(name, "name", self.config.max_name_chars)
        self._links[pid] = LinkRecord(pid, clean_name, role, issued_at=now)
        return [LinkIssued(space_id=self.space_id, at=now, participant_id=pid, role=role, by=by)]

    def check_link(self, pid: str, generation: int | None) -> None:
        """Refuse a token of ``pid``'s link that was revoked or replaced by a reissue.

        Tokens of people without a link (the host, listeners) pass: their grant is
        the signature alone.
        """
        link = self._links.get(pid)
        if link is None:
            return
        if link.revoked:
            raise Unauthorized("this link was revoked by the host")
        if generation != link.generation:
            raise Unauthorized("this link was replaced by a new one; ask the host for it")

    def check_holder(self, pid: str, holder: str) -> None:
        """Refuse a request with ``pid``'s link from any client but the one holding it."""
        link = self._links.get(pid)
        if link is not None and link.holder and holder != link.holder:
            raise LinkInUse("this link is already in use; ask the host for a new one")

    def claim_link(self, pid: str, holder: str, now: float) -> list[RoomEvent]:
        """The client with key digest ``holder`` takes the stage with ``pid``'s link.

        The first key claims the link; the same key again is its reconnect; another
        key is refused. A client sending no key ("") may use a link nobody claimed
        yet, but cannot claim it, and is refused once somebody has.
        """
        link = self._links.get(pid)
        if link is None:
            return []
        if not link.holder:
            if not holder:
                return []
            self._links[pid] = replace(link, holder=holder)
            return [LinkClaimed(space_id=self.space_id, at=now, participant_id=pid)]
        self.check_holder(pid, holder)
        return []

    def revoke_link(self, by: str, pid: str, now: float) -> list[RoomEvent]:
        """Stop ``pid``'s link for good; whoever held it leaves the Space."""
        self._link_manager(by, Action.MANAGE_LINKS)
        link = self._link(pid)
        if link.revoked:
            return []
        self._links[pid] = replace(link, revoked=True, holder="")
        revoked = LinkRevoked(space_id=self.space_id, at=now, participant_id=pid, by=by)
        if pid not in self._participants:
            return [revoked]
        self._drop(pid)
        return [revoked, ParticipantLeft(space_id=self.space_id, at=now, participant_id=pid)]

    def reissue_link(self, by: str, pid: str, now: float) -> list[RoomEvent]:
        """A new link for the same person: the old one stops working, the claim is
        cleared, and the person keeps their place (and any moderation decision)."""
        self._link_manager(by, Action.MANAGE_LINKS)
        link = self._link(pid)
        if pid in self._removed:
            raise Conflict(f"{pid} was removed from this space; a new link cannot bring them back")
        new = replace(link, generation=link.generation + 1, holder="", revoked=False, issued_at=now)
        self._links[pid] = new
        return [
            LinkReissued(
                space_id=self.space_id, at=now, participant_id=pid, by=by, generation=new.generation
            )
        ]

    def links(self, by: str) -> list[LinkRecord]:
        """The links issued, for the host and co-hosts."""
        self._link_manager(by, Action.LIST_LINKS)
        return list(self._links.values())

    def link_of(self, pid: str) -> LinkRecord | None:
        return self._links.get(pid)

    def allowed_role(self, pid: str, role: Role) -> Role:
        """``role`` as far as moderation lets ``pid`` hold it now."""
        cap = self._demoted.get(pid)
        return cap if cap is not None and _RANK[role] > _RANK[cap] else role

    def _link_manager(self, by: str, action: Action) -> None:
        if by == self.host_id and by not in self._participants:
            # The host's token acts before the host ever opened the stage page (the
            # speaker link made with the Space).
            if self._state not in _LEGAL_IN[action]:
                raise Conflict(f"space is {self._state.value}; cannot {action.value}")
            return
        self._actor(by, action)

    def _link(self, pid: str) -> LinkRecord:
        link = self._links.get(pid)
        if link is None:
            raise NotFound(f"no link for {pid} in this space")
        return link

    # -- reactions -----------------------------------------------------------

    def react(self, by: str, emoji: str, now: float) -> list[RoomEvent]:
        self._actor(by, Action.REACT)
        reaction = _canonical_reaction(emoji)
        self._tallies[reaction] = self._tallies.get(reaction, 0) + 1
        return [ReactionSent(space_id=self.space_id, at=now, participant_id=by, emoji=reaction)]

    def react_from_audience(self, by: str, emoji: str, now: float) -> list[RoomEvent]:
        """A reaction from a listener who has not joined: tallied without admitting them,
        as a reaction asks nothing of the room (a hand does, and joins)."""
        self._check_not_removed(by)
        if self._state not in _LEGAL_IN[Action.REACT]:
            raise Conflict(f"space is {self._state.value}; cannot {Action.REACT.value}")
        reaction = _canonical_reaction(emoji)
        self._tallies[reaction] = self._tallies.get(reaction, 0) + 1
        return [ReactionSent(space_id=self.space_id, at=now, participant_id=by, emoji=reaction)]

    # -- queries -------------------------------------------------------------

    def role_of(self, pid: str) -> Role | None:
        participant = self._participants.get(pid)
        return participant.role if participant else None

    def name_of(self, pid: str) -> str:
        participant = self._participants.get(pid)
        return participant.name if participant is not None else ""

    def is_removed(self, pid: str) -> bool:
        return pid in self._removed

    def participant_count(self) -> int:
        return len(self._participants)

    def hand_queue(self) -> list[str]:
        return list(self._hands)

    def audience(self) -> list[tuple[str, str]]:
        """(id, name) of the listeners the room knows (a hand, a reaction), in arrival
        order; listeners who only play the stream are counted, never named."""
        return [(p.id, p.name) for p in self._participants.values() if not p.on_stage]

    def pending_invitations(self) -> list[str]:
        return list(self._invitations)

    def reaction_tallies(self) -> dict[str, int]:
        return dict(self._tallies)

    def may_publish(self, pid: str) -> bool:
        """May the media layer accept audio from ``pid`` at all?"""
        participant = self._participants.get(pid)
        return (
            (self._state is SpaceState.LIVE or self.green_room)
            and participant is not None
            and is_allowed(Action.PUBLISH_AUDIO, participant.role)
        )

    def in_program(self, pid: str) -> bool:
        """Should ``pid``'s audio be mixed into what the audience hears?"""
        participant = self._participants.get(pid)
        return (
            self.may_publish(pid)
            and participant is not None
            and participant.live
            and not participant.muted
        )

    def program(self) -> list[str]:
        return [p.id for p in self._stage() if self.in_program(p.id)]

    def snapshot(self) -> dict[str, object]:
        """A JSON-able picture of the Space for clients joining or resyncing."""
        return {
            "space_id": self.space_id,
            "state": self._state.value,
            "title": self.title,
            "description": self.description,
            "scheduled_at": self.scheduled_at,
            "host_id": self.host_id,
            "stage": [_seat_json(p) for p in self._stage()],
            "hand_queue": self.hand_queue()[: self.config.max_listed_hands],
            "hand_count": len(self._hands),
            "pending_invitations": self.pending_invitations(),
            "reaction_tallies": self.reaction_tallies(),
            "participant_count": self.participant_count(),
            "green_room": self.green_room,
            "late_message": self.late_message,
        }

    # -- checks --------------------------------------------------------------

    def _actor(self, pid: str, action: Action) -> Participant:
        """The participant asking for ``action``, if they may; see the module docstring."""
        self._check_not_removed(pid)
        participant = self._participants.get(pid)
        if participant is None:
            raise Forbidden(f"{pid} has not joined this space")
        if not is_allowed(action, participant.role):
            raise Forbidden(f"a {participant.role.value} cannot {action.value}")
        if self._state not in _LEGAL_IN[action] and not (
            self.green_room and action in _LEGAL_IN_GREEN_ROOM
        ):
            raise Conflict(f"space is {self._state.value}; cannot {action.value}")
        return participant

    def _check_not_removed(self, pid: str) -> None:
        if pid in self._removed:
            raise Forbidden(f"{pid} was removed from this space")

    def _target(self, pid: str) -> Participant:
        participant = self._participants.get(pid)
        if participant is None:
            raise NotFound(f"no participant {pid} in this space")
        return participant

    def _on_stage_target(self, pid: str) -> Participant:
        participant = self._target(pid)
        if not participant.on_stage:
            raise Conflict(f"{pid} is not on stage")
        return participant

    def _check_in_audience(self, pid: str) -> None:
        if self.role_of(pid) is not Role.LISTENER:
            raise Conflict(f"{pid} is not in the audience")

    def _check_invited(self, pid: str) -> None:
        if pid not in self._invitations:
            raise Conflict(f"no pending invitation for {pid}")

    def _check_may_demote(self, actor: Participant, target: Participant) -> None:
        if target.role is Role.HOST:
            raise Forbidden("nobody can move the host off the stage")
        if target.role is Role.COHOST and actor.role is not Role.HOST and actor is not target:
            raise Forbidden("only the host can move a cohost to the audience")

    def _check_may_remove(self, actor: Participant, target: Participant) -> None:
        if target.role is Role.HOST:
            raise Forbidden("nobody can remove the host")
        if target is actor:
            raise BadRequest("cannot remove yourself; leave instead")
        if target.role is Role.COHOST and actor.role is not Role.HOST:
            raise Forbidden("only the host can remove a cohost")

    def _check_stage_seat(self, role: Role) -> None:
        if role is Role.HOST:
            return  # the host's seat is always kept free
        others = sum(
            1 for p in self._participants.values() if p.on_stage and p.role is not Role.HOST
        )
        if others + 1 >= self.config.max_stage_seats:
            raise Conflict(f"the stage is full ({self.config.max_stage_seats} seats)")

    def _check_cohost_seat(self) -> None:
        cohosts = sum(1 for p in self._participants.values() if p.role is Role.COHOST)
        if cohosts >= self.config.max_cohosts:
            raise Conflict(f"the space already has {self.config.max_cohosts} cohosts")

    def _check_role_claim(self, pid: str, role: Role) -> None:
        if (role is Role.HOST) != (pid == self.host_id):
            raise Forbidden("only the space's host joins as host")

    def _check_capacity(self) -> None:
        if len(self._participants) >= self.config.max_participants:
            raise Unavailable("the space is full", retry_after_s=self.config.full_retry_after_s)

    # -- mutations -----------------------------------------------------------

    def _admit(self, pid: str, name: str, role: Role) -> Participant:
        _require_id(pid, "participant id")
        clean_name = _bounded_text(name, "name", self.config.max_name_chars)
        self._check_role_claim(pid, role)
        self._check_capacity()
        if role is Role.COHOST:
            self._check_cohost_seat()
        if role in STAGE_ROLES:
            self._check_stage_seat(role)
        participant = Participant(id=pid, name=clean_name, role=role)
        self._participants[pid] = participant
        return participant

    def _seat(self, participant: Participant, role: Role, now: float) -> SpeakerAdded:
        participant.role = role
        participant.muted = False
        participant.live = False  # heard only after the mic check
        participant.stage_seq = next(self._stage_seq)
        return SpeakerAdded(
            space_id=self.space_id, at=now, participant_id=participant.id, role=role
        )

    def _leave_audience(self, listener: Participant, by: str, now: float) -> list[RoomEvent]:
        """Clear the audience-only state of a listener who goes on stage."""
        events = self._lower_hand_of(listener.id, now)
        if self._invitations.pop(listener.id, None) is not None:
            events.append(
                InvitationWithdrawn(
                    space_id=self.space_id, at=now, participant_id=listener.id, by=by
                )
            )
        return events

    def _lower_hand_of(self, pid: str, now: float) -> list[RoomEvent]:
        if self._hands.pop(pid, None) is None:
            return []
        return [HandLowered(space_id=self.space_id, at=now, participant_id=pid)]

    def _drop(self, pid: str) -> None:
        self._participants.pop(pid, None)
        self._hands.pop(pid, None)
        self._invitations.pop(pid, None)

    def _stage(self) -> list[Participant]:
        seated = [p for p in self._participants.values() if p.on_stage]
        return sorted(seated, key=lambda p: (_STAGE_ORDER[p.role], p.stage_seq))


class AbandonPhase(enum.Enum):
    """How long nobody on stage has been heard from, in the listeners' words."""

    ATTENDED = "attended"  # someone on stage is connected and not silent
    RECONNECTING = "reconnecting"  # listeners see "the host is reconnecting"
    ABANDONED = "abandoned"  # the Space ends by itself; its replay is sealed


def abandon_phase(unattended_s: float | None, config: RoomConfig) -> AbandonPhase:
    """The phase of a Space whose stage has had nobody connected and audible for
    ``unattended_s`` seconds (None: somebody is there)."""
    if unattended_s is None:
        return AbandonPhase.ATTENDED
    thresholds = (
        (config.abandon_end_s, AbandonPhase.ABANDONED),
        (config.abandon_warning_s, AbandonPhase.RECONNECTING),
    )
    for after_s, phase in thresholds:
        if unattended_s >= after_s:
            return phase
    return AbandonPhase.ATTENDED


def _seat_json(participant: Participant) -> dict[str, object]:
    return {
        "id": participant.id,
        "name": participant.name,
        "role": participant.role.value,
        "muted": participant.muted,
        "live": participant.live,
    }


def _canonical_reaction(emoji: str) -> str:
    reaction = _REACTION_ALIASES.get(emoji, emoji)
    if reaction not in ALLOWED_REACTIONS:
        raise BadRequest(
            f"unknown reaction {emoji!r}; allowed: {' '.join(sorted(ALLOWED_REACTIONS))}"
        )
    return reaction


def _require_id(value: str, what: str) -> str:
    if not value:
        raise BadRequest(f"{what} must not be empty")
    return value


def _bounded_text(value: str, what: str, max_chars: int, *, allow_empty: bool = False) -> str:
    text = value.strip()
    if not text and not allow_empty:
        raise BadRequest(f"{what} must not be empty")
    if len(text) > max_chars:
        raise BadRequest(f"{what} is longer than {max_chars} characters")
    return text
