"""A Room's state as plain values: what ``Room.record`` gives and ``Room.restore`` takes.

Everything the Room's rules depend on, and nothing else: who is there in which role,
who is muted or mic-checked, who was removed or demoted, the hand queue and the pending
invitations in their order, the reaction tallies, the lifecycle state and when it
started, and the invitation links issued (who holds each, which are revoked). A
process that keeps this (the store's room journal, as JSON) can rebuild a Space where it
left off after a crash.
"""

from __future__ import annotations

import json
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
class LinkRecord:
    """An invitation link: one person (``participant_id``) brought on stage as ``role``.

    ``generation`` counts reissues: only a token of the current generation works.
    ``holder`` is a digest of the key of the client that claimed the link ("" while
    unclaimed); the key itself is never kept.
    """

    participant_id: str
    name: str
    role: Role
    generation: int = 1
    holder: str = ""
    revoked: bool = False
    issued_at: float = 0.0


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
    green_room: bool = False  # the stage is open before the start
    # People a moderator took off the stage: the highest role they may hold until
    # invited again, whatever their link says.
    demoted: tuple[tuple[str, Role], ...] = ()
    links: tuple[LinkRecord, ...] = ()  # in order of issue
    late_message: str = ""  # the host's note to the listeners waiting for the start


def record_to_json(record: RoomRecord) -> str:
    """The record as JSON text (the room journal's column); ``record_from_json`` reads it."""
    return json.dumps(
        {
            "space_id": record.space_id,
            "host_id": record.host_id,
            "title": record.title,
            "description": record.description,
            "scheduled_at": record.scheduled_at,
            "state": record.state.value,
            "started_at": record.started_at,
            "participants": [
                [p.id, p.name, p.role.value, p.muted, p.live, p.stage_seq]
                for p in record.participants
            ],
            "removed": sorted(record.removed),
            "hands": [list(h) for h in record.hands],
            "invitations": [list(i) for i in record.invitations],
            "reaction_tallies": [list(t) for t in record.reaction_tallies],
            "green_room": record.green_room,
            "demoted": [[pid, role.value] for pid, role in record.demoted],
            "links": [
                [
                    k.participant_id,
                    k.name,
                    k.role.value,
                    k.generation,
                    k.holder,
                    k.revoked,
                    k.issued_at,
                ]
                for k in record.links
            ],
            "late_message": record.late_message,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def record_from_json(text: str) -> RoomRecord:
    """Raises ``ValueError`` (``json.JSONDecodeError`` is one) for text that is no record."""
    try:
        raw = json.loads(text)
        return RoomRecord(
            space_id=str(raw["space_id"]),
            host_id=str(raw["host_id"]),
            title=str(raw["title"]),
            description=str(raw["description"]),
            scheduled_at=_optional_float(raw["scheduled_at"]),
            state=SpaceState(raw["state"]),
            started_at=_optional_float(raw["started_at"]),
            participants=tuple(
                ParticipantRecord(
                    str(pid), str(name), Role(role), bool(muted), bool(live), int(seq)
                )
                for pid, name, role, muted, live, seq in raw["participants"]
            ),
            removed=frozenset(str(pid) for pid in raw["removed"]),
            hands=tuple((str(pid), float(at)) for pid, at in raw["hands"]),
            invitations=tuple((str(a), str(b)) for a, b in raw["invitations"]),
            reaction_tallies=tuple((str(e), int(n)) for e, n in raw["reaction_tallies"]),
            # A record without the key has no green room open.
            green_room=bool(raw.get("green_room", False)),
            # Journals written before links and demotions existed have neither.
            demoted=tuple((str(pid), Role(role)) for pid, role in raw.get("demoted", [])),
            links=tuple(
                LinkRecord(
                    str(pid), str(name), Role(role), int(gen), str(holder), bool(rev), float(at)
                )
                for pid, name, role, gen, holder, rev, at in raw.get("links", [])
            ),
            # A record without the field has no message.
            late_message=str(raw.get("late_message", "")),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a room record: {err!r}") from err


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
