"""Events the Room emits, one frozen dataclass per thing that happened.

Every command on :class:`townhall.room.state.Room` returns a list of these, in the
order they happened. Adapters (signalling, the media plane, the audience feed) react
to events; they never read the Room's private state to find out what changed.

Every event carries the ``space_id`` and ``at``, the caller's ``now`` in float
seconds. Events about one participant carry ``participant_id``; events caused by
someone else's decision also carry ``by``, the participant who made it.

Entering the stage is always announced by :class:`SpeakerAdded`, whatever the path
(joining with a stage role, accepting an invitation, being made co-host from the
audience). Leaving the stage is announced by :class:`SpeakerMovedToAudience`,
:class:`ParticipantLeft` or :class:`ParticipantRemoved`; the last two also imply
that any raised hand and pending invitation are gone. A revoked link is announced by
:class:`LinkRevoked` followed by :class:`ParticipantLeft` when its person was present.
"""

from __future__ import annotations

from dataclasses import dataclass

from townhall.room.roles import Role


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomEvent:
    space_id: str
    at: float


# -- lifecycle ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SpaceScheduled(RoomEvent):
    by: str
    title: str
    description: str
    scheduled_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SpaceStarted(RoomEvent):
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SpaceEnded(RoomEvent):
    by: str


# -- presence ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantJoined(RoomEvent):
    participant_id: str
    name: str
    role: Role


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantLeft(RoomEvent):
    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantRemoved(RoomEvent):
    participant_id: str
    by: str


# -- hands and invitations ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HandRaised(RoomEvent):
    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HandLowered(RoomEvent):
    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerInvited(RoomEvent):
    participant_id: str
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InvitationWithdrawn(RoomEvent):
    participant_id: str
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InvitationAccepted(RoomEvent):
    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InvitationDeclined(RoomEvent):
    participant_id: str


# -- the stage ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerAdded(RoomEvent):
    """``participant_id`` entered the stage with ``role`` (host, co-host or speaker)."""

    participant_id: str
    role: Role


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerMovedToAudience(RoomEvent):
    """Left the stage but stays in the Space as a listener; ``by`` may be themselves."""

    participant_id: str
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CohostAdded(RoomEvent):
    participant_id: str
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MicCheckPassed(RoomEvent):
    """The media layer confirmed it receives this speaker's audio."""

    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MicCheckReset(RoomEvent):
    """This speaker's stage was restarted: they are heard again only after a fresh check."""

    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerMuted(RoomEvent):
    participant_id: str
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerUnmuted(RoomEvent):
    # Only speakers unmute themselves, so there is no ``by``.
    participant_id: str


# -- reactions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReactionSent(RoomEvent):
    participant_id: str
    emoji: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GreenRoomOpened(RoomEvent):
    """The stage opened before the start: the people on stage hear each other, the
    audience hears nothing until the Space starts."""

    by: str


# -- invitation links --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkIssued(RoomEvent):
    """A link that brings ``participant_id`` on stage as ``role`` was made by ``by``."""

    participant_id: str
    role: Role
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkClaimed(RoomEvent):
    """The first client to take the stage with this link holds it from now on."""

    participant_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkRevoked(RoomEvent):
    """The link stopped working; whoever held it is signed out of the Space."""

    participant_id: str
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkReissued(RoomEvent):
    """A new link for the same person replaced the old one, which stopped working."""

    participant_id: str
    by: str
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LateMessagePosted(RoomEvent):
    """The host (or a co-host) told the listeners waiting for the start something."""

    by: str
    message: str
