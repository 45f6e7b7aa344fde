"""A Space's stage as the control process sees it: another process, behind the hub.

``RemoteStage`` implements :class:`townhall.live.Stage` over the supervisor link. A
connect is a ``StageRequest`` answered by a ``StageReply`` with the same request id
(or refused with 503 when no reply comes in time); members, meters and clock figures
are the stage's latest ``StageStatus``. The stage mixes whoever is in the last program
set it was sent, so the set is pushed (``SetProgram``) whenever it changes, and again
to every new stage process, which starts knowing nobody.

``RemoteStages`` opens them (it is the service's stage factory) and routes the stage
messages that come back to the one they are about.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from townhall.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TownhallError,
    Unauthorized,
    Unavailable,
)
from townhall.room.state import Room
from townhall.supervise.messages import (
    CloseStage,
    Connect,
    Disconnect,
    GoOnAir,
    MemberStatus,
    OpenStage,
    SetProgram,
    StageOp,
    StageReply,
    StageRequest,
    StageStatus,
)

log = logging.getLogger(__name__)

# What a client is told to wait before retrying while a stage is away.
RETRY_STAGE_AFTER_S = 1.0

_ERRORS: Mapping[int, type[TownhallError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
}


class Sender(Protocol):
    """Where requests go: ``supervise.link.Link`` (or a test's fake of it)."""

    def send(self, msg: object) -> bool: ...


@dataclass(frozen=True)
class SdpReply:
    sdp: str
    type: str


@dataclass(frozen=True)
class RemoteSeat:
    """One member as the stage's last status described them."""

    mic_checked: bool
    level: float
    silent_s: float | None
    name: str
    connection: str

    def silent_for(self, now: float) -> float:
        return math.inf if self.silent_s is None else self.silent_s


def error_of(reply: StageReply) -> TownhallError:
    """The error a refused request means, with the status the stage gave it."""
    detail = reply.error_detail or "the stage refused the request"
    if reply.error_status == 503:
        return Unavailable(detail, retry_after_s=RETRY_STAGE_AFTER_S)
    return _ERRORS.get(reply.error_status, TownhallError)(detail)


class RemoteStage:
    def __init__(
        self, room: Room, link: Sender, request_ids: Iterator[int], reply_timeout_s: float
    ) -> None:
        self.room = room
        self.space_id = room.space_id
        self._link = link
        self._request_ids = request_ids
        self._reply_timeout_s = reply_timeout_s
        self._pending: dict[int, asyncio.Future[StageReply]] = {}
        self._members: dict[str, RemoteSeat] = {}
        self._program: frozenset[str] | None = None  # the set last sent
        self.ticks = 0
        self.clock_slips = 0
        self.longest_tick_gap_s = 0.0
        self.recent_tick_gap_s = 0.0
        # Opened for a Space a previous control process held (its stage process may
        # still run, or may be new): its first StageStarted calls for fresh mic checks.
        self.resumed = False
        self.closed = False

    # -- live.Stage --------------------------------------------------------------
    @property
    def members(self) -> Mapping[str, RemoteSeat]:
        return self._members

    def start(self) -> None:
        program = self._program_now()
        self._program = program
        if self.room.started_at is None:
            assert self.room.green_room, "a stage opens for a started room or a green room"
            self._link.send(OpenStage(self.space_id, 0.0, program, on_air=False))
            return
        self._link.send(OpenStage(self.space_id, self.room.started_at, program))

    def go_live(self, started_at_unix_s: float) -> None:
        # The hub keeps this OpenStage (a stage restarted from now on is on the air) and
        # the supervisor ignores it for the stage that runs, which GoOnAir reaches. A
        # stage restarting right now misses GoOnAir but starts on the air.
        program = self._program_now()
        self._program = program
        self._link.send(OpenStage(self.space_id, started_at_unix_s, program))
        self._send(GoOnAir(started_at_unix_s))

    async def end(self) -> None:
        # The hub guarantees the end from here (ChannelEnded, even with no stage up):
        # nothing to wait for.
        self.closed = True
        self._link.send(CloseStage(self.space_id))
        self._fail_pending("the space has ended")
        self._members.clear()

    async def connect(self, participant_id: str, name: str, sdp: str, kind: str) -> SdpReply:
        reply = await self._ask(Connect(participant_id, name, sdp, kind))
        return SdpReply(reply.sdp, reply.kind or "answer")

    async def disconnect(self, participant_id: str) -> None:
        # Not waited for: the seat is gone from the room already, and the stage drops
        # the connection as soon as it reads this.
        self._members.pop(participant_id, None)
        self._send(Disconnect(participant_id))

    def status(self) -> list[dict[str, object]]:
        """The meters as ``StageMember.status`` words them, from the last report."""
        return [
            {
                "id": pid,
                "connected": seat.connection == "connected",
                # The report has no frame clock: audio is arriving as far as we can tell
                # when the connection is up and the stage has decoded real audio from it.
                "receiving": seat.connection == "connected" and seat.mic_checked,
                "level_dbfs": round(seat.level, 1),
                "mic_checked": seat.mic_checked,
                "silent_s": seat.silent_s,
            }
            for pid, seat in self._members.items()
        ]

    # -- the program set --------------------------------------------------------
    def sync_program(self, force: bool = False) -> None:
        """Send the program set if it changed since it was last sent (or ``force``)."""
        if self.closed:
            return
        program = self._program_now()
        if force or program != self._program:
            self._program = program
            self._send(SetProgram(program))

    def _program_now(self) -> frozenset[str]:
        return frozenset(self.room.program())

    # -- news from the hub ------------------------------------------------------
    def replied(self, reply: StageReply) -> None:
        future = self._pending.pop(reply.request_id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def reported(self, status: StageStatus) -> None:
        if self.closed:
            return
        self._members = {m.participant_id: _seat(m) for m in status.members}
        self.ticks, self.clock_slips = status.ticks, status.clock_slips
        self.longest_tick_gap_s = status.longest_tick_gap_s
        self.recent_tick_gap_s = status.recent_tick_gap_s
        self.sync_program()

    def started(self) -> None:
        """A stage process (new or replacing one) is up: it knows nobody yet."""
        self._members.clear()
        self.sync_program(force=True)

    def lost(self) -> None:
        self._members.clear()
        self._fail_pending("the stage is restarting")

    # -- requests ---------------------------------------------------------------
    def _send(self, op: StageOp) -> int:
        request_id = next(self._request_ids)
        self._link.send(StageRequest(self.space_id, request_id, op))
        return request_id

    async def _ask(self, op: StageOp) -> StageReply:
        if self.closed:
            raise Conflict("the space has ended; the stage is closed")
        future: asyncio.Future[StageReply] = asyncio.get_running_loop().create_future()
        request_id = next(self._request_ids)
        self._pending[request_id] = future
        try:
            if not self._link.send(StageRequest(self.space_id, request_id, op)):
                raise Unavailable("the stage is not answering", RETRY_STAGE_AFTER_S)
            async with asyncio.timeout(self._reply_timeout_s):
                reply = await future
        except TimeoutError:
            raise Unavailable("the stage is not answering", RETRY_STAGE_AFTER_S) from None
        finally:
            self._pending.pop(request_id, None)
        if not reply.ok:
            raise error_of(reply)
        return reply

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for request_id, future in pending.items():
            if not future.done():
                future.set_result(
                    StageReply(
                        self.space_id, request_id, ok=False, error_status=503, error_detail=why
                    )
                )


def _seat(m: MemberStatus) -> RemoteSeat:
    return RemoteSeat(m.mic_checked, m.level_dbfs, m.silent_s, m.name, m.connection)


class RemoteStages:
    """The stage factory of the control process, and the router of what stages say."""

    def __init__(self, link: Sender, reply_timeout_s: float) -> None:
        self._link = link
        self._reply_timeout_s = reply_timeout_s
        self._request_ids = itertools.count(1)
        self._stages: dict[str, RemoteStage] = {}

    def open(self, room: Room) -> RemoteStage:
        stage = RemoteStage(room, self._link, self._request_ids, self._reply_timeout_s)
        self._stages[room.space_id] = stage
        return stage

    def get(self, space_id: str) -> RemoteStage | None:
        stage = self._stages.get(space_id)
        if stage is not None and stage.closed:
            del self._stages[space_id]
            return None
        return stage

    def all(self) -> list[RemoteStage]:
        return [s for s in self._stages.values() if not s.closed]
