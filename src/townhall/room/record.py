"""A Room's state as plain values: what ``Room.record`` gives and ``Room.restore`` takes.

Everything the Room's rules depend on, and nothing else: who is there in which role,
who is muted or mic-checked, who was removed, the hand queue and the pending
invitations in their order, the reaction tallies, the lifecycle state and when it
started. A process that keeps this (in the store, in a log of events) can rebuild a
Space where it left off after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

from townhall.room.roles import Role, SpaceState


@dataclass(frozen=True, slots=True)
class ParticipantRecord:
    id: str
    name: str
    role: Role
    muted: bool = False
    # The media layer confirmed it receives this speaker's audio (the mic check).
    live: bool = False
    # Order of arrival on stage (0 off stage): the stage lists in this order by role.
    stage_seq: int = 0


@dataclass(frozen=True, slots=True)
class RoomRecord:
    space_id: str
    host_id: str
    title: str
    description: str = ""
    scheduled_at: float | None = None
    state: SpaceState = SpaceState.SCHEDULED
    started_at: float | None = None
    participants: tuple[ParticipantRecord, ...] = ()  # in order of joining
    removed: frozenset[str] = frozenset()
    hands: tuple[tuple[str, float], ...] = ()  # (participant, raised at), in raise order
    invitations: tuple[tuple[str, str], ...] = ()  # (invitee, inviter), in invite order
    reaction_tallies: tuple[tuple[str, int], ...] = ()
