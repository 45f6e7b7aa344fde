"""A stage process: one Space's WebRTC stage, its 20 ms clock and its one encode, alone.

Everything else of ``townhall serve`` runs in other processes, so nothing on this
event loop competes with the clock: no HTTP serving, no disk, no JSON. The process
holds one framed link to the supervisor (the hub). Down it go the feed (the encoded
program, which the hub routes to the audience workers and the recorder), the answers
to the control plane's requests, and a ``StageStatus`` every ``status_every_s``. Up it
come ``StageRequest`` (connect, disconnect, the program set) and ``CloseStage``.

The program set is kept here: if the control plane restarts, the stage keeps mixing
the people it was last told may be heard. If the hub goes away (the link closes), the
process exits at once rather than run orphaned; the hub restarts it if it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import uvloop

from townhall.errors import TownhallError
from townhall.gcpolicy import freeze_startup_heap
from townhall.media.timeline import MediaStart, media_start
from townhall.stage.ice import allow_loopback_candidates
from townhall.stage.member import StageMember
from townhall.stage.runtime import StageRuntime
from townhall.supervise.link import LinkFeed, open_link
from townhall.supervise.messages import (
    CloseStage,
    Connect,
    Disconnect,
    GoOnAir,
    MemberStatus,
    SetProgram,
    StageReply,
    StageRequest,
    StageStatus,
)
from townhall.supervise.specs import AssignStage, StageSpec, StandbySpec

log = logging.getLogger(__name__)

Send = Callable[[object], object]


class ProgramSet:
    """The gate: who may be heard in the program, as the control plane last said."""

    def __init__(self, participant_ids: frozenset[str]) -> None:
        self.participant_ids = participant_ids

    def __call__(self, participant_id: str) -> bool:
        return participant_id in self.participant_ids


def start_for(spec: StageSpec, now_unix_s: float) -> MediaStart:
    """Where this incarnation's program begins in the Space's media time."""
    return media_start(
        spec.open.started_at_unix_s,
        now_unix_s,
        spec.config.stage.encoder.part_target_s,
        spec.config.audience.channel.hls.parts_per_segment,
        spec.next_part_seq,
        # A first start that numbers on from parts published before it is a takeover
        # from another node: a restart too.
        restarted=spec.incarnation > 0 or spec.next_part_seq is not None,
    )


def on_air_start(spec: StageSpec, started_at_unix_s: float, now_unix_s: float) -> MediaStart:
    """Where the program of a stage that opened off the air begins when it goes on the
    air: the Space's media time starts now, and nothing was published before."""
    return media_start(
        started_at_unix_s,
        now_unix_s,
        spec.config.stage.encoder.part_target_s,
        spec.config.audience.channel.hls.parts_per_segment,
        spec.next_part_seq,
    )


def member_status(member: StageMember, now: float) -> MemberStatus:
    silent = member.silent_for(now)
    return MemberStatus(
        participant_id=member.participant_id,
        name=member.name,
        mic_checked=member.mic_checked,
        level_dbfs=round(member.level, 1),
        silent_s=None if math.isinf(silent) else round(silent, 1),
        connection=member.pc.connectionState,
    )


class StageHost:
    """Answers the hub's messages for one Space's ``StageRuntime``."""

    def __init__(
        self,
        runtime: StageRuntime,
        program: ProgramSet,
        send: Send,
        on_air_start: Callable[[float], MediaStart] | None = None,
    ) -> None:
        self.runtime = runtime
        self.program = program
        self._send = send
        # Given the Space's start, where the program begins if this stage goes on the air.
        self._on_air_start = on_air_start
        self.closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._requests: set[asyncio.Task[None]] = set()

    @property
    def space_id(self) -> str:
        return self.runtime.space_id

    def on_message(self, msg: Any) -> None:
        match msg:
            case StageRequest(op=SetProgram(participant_ids=ids)) if self._ours(msg):
                # Applied at once, in arrival order: the next tick already obeys it.
                self.program.participant_ids = ids
                self._reply(msg, True)
            case StageRequest(op=GoOnAir(started_at_unix_s=started_at)) if self._ours(msg):
                if not self.runtime.on_air and self._on_air_start is not None:
                    self.runtime.go_on_air(self._on_air_start(started_at))
                self._reply(msg, True)
            case StageRequest() if self._ours(msg):
                task = asyncio.create_task(self._answer(msg), name=f"stage-request-{msg.op}")
                self._requests.add(task)
                task.add_done_callback(self._requests.discard)
            case StageRequest():
                self._reply(msg, False, status=404, detail="no such space on this stage")
            case CloseStage(space_id=space_id) if space_id == self.space_id:
                if not self.closing.done():
                    self.closing.set_result(None)
            case _:
                log.warning("stage %s: ignoring %s from the hub", self.space_id, type(msg))

    def _ours(self, req: StageRequest) -> bool:
        return req.space_id == self.space_id

    async def _answer(self, req: StageRequest) -> None:
        try:
            match req.op:
                case Connect(participant_id=pid, name=name, sdp=sdp, kind=kind):
                    answer = await self.runtime.connect(pid, name, sdp, kind)
                    self._reply(req, True, sdp=answer.sdp, kind=answer.type)
                case Disconnect(participant_id=pid):
                    await self.runtime.disconnect(pid)
                    self._reply(req, True)
        except TownhallError as exc:
            self._reply(req, False, status=exc.status, detail=exc.detail)
        except Exception as exc:
            log.exception("stage %s: %s failed", self.space_id, type(req.op).__name__)
            self._reply(req, False, status=500, detail=f"the stage failed: {exc}")

    def _reply(
        self,
        req: StageRequest,
        ok: bool,
        sdp: str = "",
        kind: str = "",
        status: int = 0,
        detail: str = "",
    ) -> None:
        self._send(StageReply(req.space_id, req.request_id, ok, sdp, kind, status, detail))

    def status(self) -> StageStatus:
        now = time.monotonic()
        rt = self.runtime
        members = tuple(member_status(m, now) for m in rt.members.values())
        return StageStatus(
            self.space_id,
            members,
            rt.ticks,
            rt.clock_slips,
            round(rt.longest_tick_gap_s, 4),
            round(rt.recent_tick_gaps.value(asyncio.get_running_loop().time()), 4),
        )

    async def report_status(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            self._send(self.status())

    async def close(self) -> None:
        """End the Space's program: flush the encoder, publish ``ChannelEnded``."""
        for task in list(self._requests):
            task.cancel()
        await self.runtime.end()


def run_stage_process(spec: StageSpec | StandbySpec, sock: socket.socket) -> None:
    """Entry point of a stage process: serve ``spec.open``'s Space until ``CloseStage``
    (exit 0) or until the supervisor's link closes (exit at once). A standby process
    first waits, imported and linked, for the Space it is given (``AssignStage``)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    allow_loopback_candidates()
    # Real-time only once it holds a Space: a standby process importing (a second of
    # CPU) at the same FIFO priority would hold back the live stage's clock meanwhile.
    priority = spec.config.supervisor.stage_realtime_priority
    runaway_s = spec.config.supervisor.stage_realtime_runaway_s
    uvloop.run(serve_stage(spec, sock, on_stage=lambda _spec: realtime_clock(priority, runaway_s)))


def realtime_clock(priority: int, runaway_s: float = 2.0) -> bool:
    """Put this process, every thread of it, on SCHED_FIFO at ``priority`` (threads it
    starts later inherit it), so the 20 ms clock runs when it is due whatever else the
    machine is busy with. Every thread: one left behind that holds the GIL while the
    scheduler has it waiting would hold the clock back with it. A thread that runs
    ``runaway_s`` without sleeping gets SIGXCPU, which ends the process (RLIMIT_RTTIME).
    False, and the process keeps its nice value, where that is not permitted or
    ``priority`` is 0."""
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return False
    param = os.sched_param(priority)
    runaway_us = int(runaway_s * 1_000_000)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        # Soft: SIGXCPU (its default action ends the process); hard: SIGKILL 0.5 s later.
        resource.setrlimit(resource.RLIMIT_RTTIME, (runaway_us, runaway_us + 500_000))
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, param)
    except OSError as exc:
        log.info("stage clock: no real-time policy (%s); it runs at its nice value", exc)
        return False
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError, ValueError):
                os.sched_setscheduler(int(tid), os.SCHED_FIFO, param)
    return True


class Inbox:
    """The hub's messages until the stage is up are kept, then handed on in order; an
    ``AssignStage`` (to a standby process) resolves ``assigned`` instead."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.handler: Callable[[Any], None] | None = None
        self.assigned: asyncio.Future[StageSpec] = asyncio.get_running_loop().create_future()

    def __call__(self, msg: Any) -> None:
        if isinstance(msg, AssignStage):
            if not self.assigned.done():
                self.assigned.set_result(msg.spec)
        elif self.handler is None:
            self.pending.append(msg)
        else:
            self.handler(msg)

    def attach(self, handler: Callable[[Any], None]) -> None:
        self.handler = handler
        for msg in self.pending:
            handler(msg)
        self.pending.clear()


async def serve_stage(
    spec: StageSpec | StandbySpec,
    sock: socket.socket,
    exit_on_lost: bool = True,
    on_stage: Callable[[StageSpec], object] | None = None,
) -> str:
    """Run the stage; ``"closed"`` after ``CloseStage``. If the link closes, exit the
    process at once (or, with ``exit_on_lost`` false, return ``"lost"``). ``on_stage``
    is called with the Space's spec before its clock starts."""
    inbox = Inbox()
    link = await open_link(sock, inbox)
    if isinstance(spec, StandbySpec):
        freeze_startup_heap()
        either: list[asyncio.Future[Any]] = [inbox.assigned, link.closed]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not inbox.assigned.done():
            return _lost("the standby stage", exit_on_lost)
        spec = inbox.assigned.result()
    if on_stage is not None:
        on_stage(spec)
    program = ProgramSet(spec.open.program)
    runtime = StageRuntime(
        spec.open.space_id,
        LinkFeed(link.send),
        spec.config.stage,
        gate=program,
        media_start=start_for(spec, time.time()),
        on_air=spec.open.on_air,
    )
    assigned = spec
    host = StageHost(
        runtime,
        program,
        link.send,
        on_air_start=lambda started_at: on_air_start(assigned, started_at, time.time()),
    )
    inbox.attach(host.on_message)
    freeze_startup_heap()
    runtime.start()
    reporter = asyncio.create_task(
        host.report_status(spec.config.stage.status_every_s), name="stage-status"
    )
    log.info(
        "stage %s up (pid %d, incarnation %d, first part %d%s)",
        runtime.space_id,
        os.getpid(),
        spec.incarnation,
        runtime.media_start.first_part_seq,
        "" if runtime.on_air else ", off the air: green room",
    )
    await asyncio.wait([link.closed, host.closing], return_when=asyncio.FIRST_COMPLETED)
    reporter.cancel()
    if link.closed.done():
        return _lost(f"stage {runtime.space_id}", exit_on_lost)
    await host.close()
    link.close()  # the transport writes out what is queued (ChannelEnded last), then closes
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(link.closed), spec.config.stage.close_timeout_s)
    return "closed"


def _lost(who: str, exit_on_lost: bool) -> str:
    log.warning("%s: the supervisor link closed; exiting", who)
    if exit_on_lost:
        # Nobody hears this program any more and nobody can end it. Peer connections
        # and the encoder need no goodbye: exit without unwinding.
        logging.shutdown()
        os._exit(0)
    return "lost"
