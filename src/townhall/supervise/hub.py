"""The hub's routing: given who sent a message, where it goes. Pure; no sockets.

Sources and destinations are process names: ``control``, ``recorder``,
``stage:<space>``, plus ``audience`` (the worker pool's presence reports, as a source),
``pool`` (the audience workers, as a destination) and ``supervisor`` (what the hub
process acts on itself: opening and closing stages, presence resyncs).

The hub keeps only what routing needs: which Spaces are open (``OpenStage`` seen, no
``CloseStage``), which have a stage process to send to, the last LL-HLS part seen per
Space (a restarted stage numbers on from it) and which Spaces' feeds have ended.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from townhall.audience.framing import SessionSeen, StreamClosed, StreamOpened
from townhall.feed import (
    ChannelEnded,
    FeedMessage,
    HlsInit,
    HlsPart,
    OggHeader,
    OggPages,
    RoomUpdate,
)
from townhall.supervise.messages import (
    CloseStage,
    OpenStage,
    Presence,
    RecordingStatus,
    ResyncPresence,
    StageReply,
    StageRequest,
    StageStatus,
)

log = logging.getLogger(__name__)

CONTROL = "control"
RECORDER = "recorder"
AUDIENCE = "audience"
POOL = "pool"
SUPERVISOR = "supervisor"
_STAGE_PREFIX = "stage:"

FEED_TYPES = (OggHeader, OggPages, HlsInit, HlsPart, RoomUpdate, ChannelEnded)
PRESENCE_TYPES = (StreamOpened, StreamClosed, SessionSeen)
STAGE_RESTARTING = "the stage is restarting"
STAGE_NOT_RUNNING = "the Space has no stage running"


def stage_name(space_id: str) -> str:
    return f"{_STAGE_PREFIX}{space_id}"


def space_of(name: str) -> str | None:
    """The Space of a stage process's name; None for any other process."""
    return name[len(_STAGE_PREFIX) :] if name.startswith(_STAGE_PREFIX) else None


@dataclass(frozen=True)
class Delivery:
    to: str  # a process name, POOL or SUPERVISOR
    msg: object


@dataclass
class Hub:
    open_spaces: dict[str, OpenStage] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)  # Spaces with a stage process
    last_part_seq: dict[str, int] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)  # ChannelEnded went out
    # Each Space's current stream headers: a restarted recorder needs them to tell a
    # stream it already holds from a new one (a stage that restarted meanwhile).
    headers: dict[str, dict[type, FeedMessage]] = field(default_factory=dict)

    # -- what the supervisor tells the hub ------------------------------------------

    def stage_up(self, space_id: str) -> None:
        self.running.add(space_id)

    def stage_down(self, space_id: str) -> None:
        self.running.discard(space_id)

    def is_open(self, space_id: str) -> bool:
        return space_id in self.open_spaces

    def next_part_seq(self, space_id: str) -> int | None:
        last = self.last_part_seq.get(space_id)
        return None if last is None else last + 1

    def channel_ended(self, space_id: str, at_unix_s: float) -> list[Delivery]:
        """The hub ends a Space's feed itself (its stage could not): once per Space."""
        if space_id in self.ended:
            return []
        return self._feed(ChannelEnded(space_id, at_unix_s))

    def forget(self, space_id: str) -> None:
        """A closed Space whose stage is gone: nothing of it is needed any more."""
        self.last_part_seq.pop(space_id, None)
        self.headers.pop(space_id, None)
        self.running.discard(space_id)

    def recorder_catch_up(self) -> list[Delivery]:
        """What a (re)started recorder is sent first: the headers of every live stream."""
        return [
            Delivery(RECORDER, msg)
            for space_id, kept in self.headers.items()
            if space_id not in self.ended
            for msg in kept.values()
        ]

    # -- routing ----------------------------------------------------------------------

    def route(self, source: str, msg: object) -> list[Delivery]:
        if source == CONTROL:
            return self._from_control(msg)
        if source == RECORDER and isinstance(msg, RecordingStatus):
            return [Delivery(CONTROL, msg)]
        if source == AUDIENCE and isinstance(msg, PRESENCE_TYPES):
            return [Delivery(CONTROL, Presence(msg))]
        space_id = space_of(source)
        if space_id is not None:
            return self._from_stage(space_id, msg)
        log.warning("dropped a %s from %s: not routable", type(msg).__name__, source)
        return []

    def _from_control(self, msg: object) -> list[Delivery]:
        match msg:
            case StageRequest(space_id=space_id) if space_id in self.running:
                return [Delivery(stage_name(space_id), msg)]
            case StageRequest(space_id=space_id, request_id=request_id):
                detail = STAGE_RESTARTING if space_id in self.open_spaces else STAGE_NOT_RUNNING
                reply = StageReply(space_id, request_id, ok=False, error_status=503,
                                   error_detail=detail)  # fmt: skip
                return [Delivery(CONTROL, reply)]
            case OpenStage(space_id=space_id):
                self.open_spaces[space_id] = msg
                self.ended.discard(space_id)
                return [Delivery(SUPERVISOR, msg)]
            case CloseStage(space_id=space_id):
                self.open_spaces.pop(space_id, None)
                out = [Delivery(stage_name(space_id), msg)] if space_id in self.running else []
                return [*out, Delivery(SUPERVISOR, msg)]
            case ResyncPresence():
                return [Delivery(SUPERVISOR, msg)]
            case RoomUpdate():
                return self._feed(msg)
            case ChannelEnded(space_id=space_id) if space_id not in self.running:
                # A waiting room closed without a stage (a cancelled Space): its waiters
                # are released. A running stage ends its own channel.
                return self._feed(msg)
        log.warning("dropped a %s from control: not routable", type(msg).__name__)
        return []

    def _from_stage(self, space_id: str, msg: object) -> list[Delivery]:
        # A stage speaks for its own Space only: one Space's fault cannot reach another's.
        if getattr(msg, "space_id", None) != space_id:
            log.warning("dropped a %s from the stage of %s: not its Space",
                        type(msg).__name__, space_id)  # fmt: skip
            return []
        if isinstance(msg, StageStatus | StageReply):
            return [Delivery(CONTROL, msg)]
        if isinstance(msg, FEED_TYPES) and not isinstance(msg, RoomUpdate):
            if isinstance(msg, OggHeader | HlsInit):
                self.headers.setdefault(space_id, {})[type(msg)] = msg
            if isinstance(msg, HlsPart) and msg.seq is not None:
                self.last_part_seq[space_id] = max(msg.seq, self.last_part_seq.get(space_id, -1))
            if isinstance(msg, ChannelEnded) and space_id in self.ended:
                return []  # the hub already ended it (a stage that answered too late)
            return self._feed(msg)
        log.warning("dropped a %s from the stage of %s: not routable",
                    type(msg).__name__, space_id)  # fmt: skip
        return []

    def _feed(self, msg: object) -> list[Delivery]:
        if isinstance(msg, ChannelEnded):
            self.ended.add(msg.space_id)
        return [Delivery(POOL, msg), Delivery(RECORDER, msg)]
