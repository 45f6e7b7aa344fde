"""What crosses between the processes of ``townhall serve``.

The supervisor (the parent process) is the hub: every child holds one framed socket to
it, and the hub routes by message type (``hub.py``). Feed messages (``townhall.feed``)
travel the same sockets. Everything here is a frozen, picklable dataclass.

    control ──StageRequest──► hub ──► stage[space]      (answered by StageReply)
    control ──OpenStage/CloseStage──► hub (spawns / ends a Space's stage process)
    stage   ──FeedMessage──► hub ──► audience workers, recorder
    control ──RoomUpdate (a FeedMessage)──► hub ──► audience workers, recorder
    stage   ──StageStatus, StageReply──► hub ──► control
    hub     ──StageStarted, StageLost, ProcessTable, AudienceReport──► control
    workers ──presence reports──► hub ──► control
    recorder──RecordingStatus──► hub ──► control
"""

from __future__ import annotations

from dataclasses import dataclass

from townhall.audience.framing import PresenceReport
from townhall.audience.plane import AudienceStats
from townhall.feed import FeedMessage

# -- control → stage (through the hub) ---------------------------------------------------


@dataclass(frozen=True)
class Connect:
    """Answer this participant's SDP offer; a reconnect replaces their old connection."""

    participant_id: str
    name: str
    sdp: str
    kind: str


@dataclass(frozen=True)
class Disconnect:
    participant_id: str


@dataclass(frozen=True)
class SetProgram:
    """Who may be heard in the program (mic check passed, not muted, on stage). The stage
    process keeps the last set it was given, so it keeps mixing while control is away."""

    participant_ids: frozenset[str]


@dataclass(frozen=True)
class GoOnAir:
    """A stage opened off the air (the green room) starts publishing its program: media
    time counts from ``started_at_unix_s``, the Space's start."""

    started_at_unix_s: float


StageOp = Connect | Disconnect | SetProgram | GoOnAir


@dataclass(frozen=True)
class StageRequest:
    space_id: str
    request_id: int  # unique per control process incarnation; echoed in the reply
    op: StageOp


@dataclass(frozen=True)
class StageReply:
    space_id: str
    request_id: int
    ok: bool
    sdp: str = ""
    kind: str = ""
    # When not ok: the HTTP status and detail of the error (``townhall.errors``).
    error_status: int = 0
    error_detail: str = ""


@dataclass(frozen=True)
class OpenStage:
    """Run a stage for this Space until ``CloseStage``; restart it if it dies. Idempotent:
    a control process that restarts sends it again for every live Space."""

    space_id: str
    started_at_unix_s: float  # media time (and so LL-HLS numbering) counts from here
    program: frozenset[str] = frozenset()
    # False for the green room: the stage mixes for the people on stage (mix-minus) and
    # publishes nothing to the feed until ``GoOnAir``. The hub keeps the latest OpenStage,
    # so a stage restarted after the start is on the air from its first tick.
    on_air: bool = True


@dataclass(frozen=True)
class CloseStage:
    """End the Space's stage: it flushes the encoder and publishes ``ChannelEnded``. If no
    stage process answers, the hub publishes ``ChannelEnded`` itself, so End always seals
    the recording."""

    space_id: str


# -- stage → control ---------------------------------------------------------------------


@dataclass(frozen=True)
class MemberStatus:
    """One person connected to a Space's stage, as the mixer sees them."""

    participant_id: str
    name: str
    mic_checked: bool  # the server has decoded real audio from them
    level_dbfs: float
    silent_s: float | None  # since their last audible frame; None: never heard
    connection: str  # the RTCPeerConnection's state


@dataclass(frozen=True)
class StageStatus:
    """Sent every ``status_every_s`` by a stage process."""

    space_id: str
    members: tuple[MemberStatus, ...]
    ticks: int
    clock_slips: int
    longest_tick_gap_s: float  # since the process started: the clock's health
    recent_tick_gap_s: float = 0.0  # the same over the last ``stage.tick_gap_window_s``


# -- hub → control -----------------------------------------------------------------------


@dataclass(frozen=True)
class StageStarted:
    """A stage process for this Space is up (first start or a restart): the control plane
    sends it the program set again, and the people on stage must reconnect and pass a
    fresh mic check."""

    space_id: str
    pid: int
    incarnation: int  # 0 for the first start, +1 for each restart


@dataclass(frozen=True)
class StageLost:
    space_id: str
    pid: int
    reason: str  # e.g. "killed by signal 9", "exit code 1"


@dataclass(frozen=True)
class ProcessInfo:
    role: str  # "supervisor", "control", "stage", "recorder", "audience"
    name: str  # unique: "stage:<space>", "audience:1", ...
    pid: int
    started_at_unix_s: float
    restarts: int
    last_exit: str = ""  # why the previous incarnation ended, if it did


@dataclass(frozen=True)
class ProcessTable:
    """Every process of this ``townhall serve``; sent on every change and every second."""

    processes: tuple[ProcessInfo, ...]


@dataclass(frozen=True)
class AudienceReport:
    """The audience plane's stats, summed over its workers, about once a second."""

    stats: AudienceStats


@dataclass(frozen=True)
class Presence:
    """A listener presence report from an audience worker, relayed to the counters."""

    report: PresenceReport


@dataclass(frozen=True)
class ResyncPresence:
    """control → hub → workers: report every open stream again (a restarted control
    process starts with empty counters)."""


# -- recorder → control ------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingStatus:
    space_id: str
    state: str  # "recording", "paused" (a write failed; audio goes on), "sealed"
    detail: str = ""
    write_errors: int = 0


@dataclass(frozen=True)
class SpaceHandedOver:
    """supervisor → control: another node holds the Space's lease now (it took the
    Space over while this node's renewals stalled); its program is fenced here."""

    space_id: str
    holder: str  # the node holding it now


ControlMessage = (
    StageReply
    | StageStatus
    | StageStarted
    | StageLost
    | SpaceHandedOver
    | ProcessTable
    | AudienceReport
    | Presence
    | RecordingStatus
)
StageMessage = StageRequest | OpenStage | CloseStage
HubMessage = (
    FeedMessage
    | StageRequest
    | StageReply
    | OpenStage
    | CloseStage
    | StageStatus
    | RecordingStatus
    | ResyncPresence
)
