"""A Space taken over by another origin node when the node holding it is gone.

Pure: no sockets, no clocks read here (times are passed in). The adapters are in
``rooms.py`` (the cluster's copy of each room, the takeover loop) and the supervisor
(where the program's numbering continues).

The node holding a Space's stage keeps a copy of the Space in the cluster: its record
(title, host, schedule) and its room (``Room.record()``), written on every journaled
change. When that node's lease lapses, any other origin node may take the Space over:

- **the decision** (``lease_verdict``, then ``copy_verdict`` once the lease allows it):
  the lease lapsed at least ``grace_s`` ago (a holder whose renewals were only late
  keeps its Space), the cluster has a copy of the room, and the room is not over. Only
  one node wins: the lease is then *created* in the cluster, which succeeds for one
  node only (the adapter's atomic create);
- **the numbering** (``continued_part_seq``): the new stage numbers its parts on from
  the last part the cluster has of the Space (one past it, rounded up to a segment by
  ``media.timeline``), with a discontinuity, so no number is ever used twice at the
  edges and the numbers never go backwards. Media time still counts from the Space's
  start, so two stages that both ran would give the same part the same number (and
  JetStream would keep the first).
- **a node coming back** (``resume_verdict``): a node (re)starting with its own journal
  resumes a live Space from it only if no other node took the Space over meanwhile (a
  live lease of another node, or a newer copy another node wrote); otherwise it sends
  the Space's requests to the holder, or takes the Space up from the cluster's copy,
  or marks it ended if the cluster's copy ended.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from enum import Enum

from townhall.cluster.leases import Lease
from townhall.cluster.wire import WireError
from townhall.room.record import record_from_json
from townhall.room.roles import SpaceState
from townhall.store import SpaceRecord


@dataclass(frozen=True)
class SpaceCopy:
    """What a node needs to hold a Space another node held: its record and its room."""

    space: SpaceRecord
    room_json: str  # ``room.record.record_to_json`` of the room as last journaled
    node: str  # the node that wrote it
    at_unix_s: float

    @property
    def room_state(self) -> SpaceState:
        return record_from_json(self.room_json).state


# A room's record is mostly repeated names and ids: compressed, a Space with tens of
# thousands of listeners in its room still fits one cluster message.
_LEVEL = 6
# What a copy may inflate to: past it the copy is refused, not decompressed further.
MAX_COPY_JSON_BYTES = 64 * 1024 * 1024


def encode_copy(copy: SpaceCopy) -> bytes:
    text = json.dumps(
        {"space": asdict(copy.space), "room": copy.room_json, "node": copy.node,
         "at_unix_s": copy.at_unix_s},
        separators=(",", ":"),
    )  # fmt: skip
    return zlib.compress(text.encode(), _LEVEL)


def decode_copy(data: bytes) -> SpaceCopy:
    try:
        inflate = zlib.decompressobj()
        text = inflate.decompress(data, MAX_COPY_JSON_BYTES)
        if inflate.unconsumed_tail:
            raise ValueError(f"inflates past {MAX_COPY_JSON_BYTES} bytes")
        raw = json.loads(text)
        s = raw["space"]
        space = SpaceRecord(
            id=str(s["id"]),
            title=str(s["title"]),
            description=str(s["description"]),
            state=str(s["state"]),
            host_id=str(s["host_id"]),
            scheduled_at=_optional_float(s["scheduled_at"]),
            created_at=float(s["created_at"]),
            started_at=_optional_float(s["started_at"]),
            ended_at=_optional_float(s["ended_at"]),
            listed=bool(s.get("listed", True)),
            host_name=str(s.get("host_name", "Host")),
        )
        copy = SpaceCopy(space, str(raw["room"]), str(raw["node"]), float(raw["at_unix_s"]))
        room = record_from_json(copy.room_json)  # a copy whose room does not read is no copy
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise WireError(f"not a room copy: {exc}") from exc
    if copy.space.id != room.space_id:
        raise WireError("a room copy whose room is another Space's")
    return copy


class Verdict(Enum):
    TAKE = "take"  # try to create the lease; the winner holds the Space
    WAIT = "wait"  # its holder may still be there: ask again later
    LEAVE = "leave"  # nothing to take over: ours, over, or no copy of it


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    why: str


def lease_verdict(
    space_id: str,
    holder: Lease | None,
    lapsed: Lease | None,
    node: str,
    knows_space: bool,
    now_unix_s: float,
    lease_s: float,
    grace_s: float,
) -> Decision:
    """Whether ``space_id``'s lease lets this node (``node``) take it over (``TAKE``: look
    at its copy next). ``holder`` is the lease that holds now (None if none), ``lapsed``
    the last lease seen if it lapsed, ``knows_space`` whether this node holds it."""
    if knows_space:
        return Decision(Verdict.LEAVE, "this node holds it")
    if holder is not None:
        return Decision(Verdict.WAIT, f"held by {holder.node}")
    if lapsed is None:
        return Decision(Verdict.LEAVE, "no lease seen for it")
    if lapsed.node == node:
        return Decision(Verdict.LEAVE, "its lease was this node's")
    lapsed_for_s = now_unix_s - lapsed.at_unix_s - lease_s
    if lapsed_for_s < grace_s:
        return Decision(Verdict.WAIT, f"lapsed {max(0.0, lapsed_for_s):.1f} s ago")
    return Decision(Verdict.TAKE, f"{lapsed.node} stopped renewing its lease")


def copy_verdict(space_id: str, copy: SpaceCopy | None) -> Decision:
    """Whether the cluster's copy of ``space_id`` is one to take over: a live room."""
    if copy is None:
        return Decision(Verdict.LEAVE, "the cluster has no copy of its room")
    if copy.space.id != space_id:
        return Decision(Verdict.LEAVE, "the copy is another Space's")
    if copy.room_state is not SpaceState.LIVE:
        return Decision(Verdict.LEAVE, f"its room is {copy.room_state.value}")
    return Decision(Verdict.TAKE, "its room is live")


class Resume(Enum):
    """What a (re)starting node does with a Space its journal says is live."""

    RESUME = "resume"  # from this node's journal: nobody took it over
    HAND_OVER = "hand over"  # another node holds it (or may): send its requests there
    ADOPT = "adopt"  # from the cluster's copy: newer than this node's journal, unheld
    END = "end"  # the cluster's copy ended: mark it ended here too


@dataclass(frozen=True)
class ResumeDecision:
    verdict: Resume
    why: str


def resume_verdict(
    space_id: str, holder: Lease | None, lapsed: Lease | None, copy: SpaceCopy | None, node: str
) -> ResumeDecision:
    """Whether this node (``node``), starting with ``space_id`` live in its own journal,
    may resume it from there. ``holder`` is the lease that holds now (None if none),
    ``lapsed`` the last lease seen if it lapsed, ``copy`` the cluster's copy (None if
    none). This node's journal is older than any copy another node wrote: another node
    only writes one after taking the Space over."""
    if holder is not None and holder.node == node:
        # Its stage runs on here (only the control process restarted), or this node took
        # it back over: whoever wrote the last copy, the Space is this node's.
        return ResumeDecision(Resume.RESUME, "this node holds its lease")
    if copy is not None and copy.space.id == space_id and copy.room_state is SpaceState.ENDED:
        return ResumeDecision(Resume.END, f"it ended on {copy.node}")
    if holder is not None and holder.node != node:
        return ResumeDecision(Resume.HAND_OVER, f"{holder.node} holds its lease")
    if lapsed is not None and lapsed.node != node:
        # Its holder stopped renewing: the takeover (this node's included) decides.
        return ResumeDecision(Resume.HAND_OVER, f"{lapsed.node} held it last")
    if copy is not None and copy.space.id == space_id and copy.node != node:
        if copy.room_state is SpaceState.LIVE:
            return ResumeDecision(Resume.ADOPT, f"{copy.node} held it last; nobody holds it now")
        return ResumeDecision(Resume.HAND_OVER, f"{copy.node} held it last")
    return ResumeDecision(Resume.RESUME, "no other node took it over")


class CopyConflict(Enum):
    """What the copier does when the copy in the cluster is not the one it last wrote
    (its conditional write failed)."""

    CREATE = "create"  # no copy there (it aged out): write one
    OVERWRITE = "overwrite"  # this node wrote it, or holds the Space now: write over it
    DROP = "drop"  # another node wrote it and holds the Space: this copy is older


def after_copy_conflict(current_node: str | None, node: str, holds: bool) -> CopyConflict:
    """``current_node`` wrote the copy in the cluster (None: there is none); ``holds``:
    whether this node (``node``) holds the Space's lease now."""
    if current_node is None:
        return CopyConflict.CREATE
    if current_node == node or holds:
        return CopyConflict.OVERWRITE
    return CopyConflict.DROP


def continued_part_seq(last_published_seq: int | None) -> int | None:
    """The first part number a stage taking over may use: one past the last part the
    cluster has of the Space (None: it has none, the Space's media time decides)."""
    return None if last_published_seq is None else last_published_seq + 1


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
