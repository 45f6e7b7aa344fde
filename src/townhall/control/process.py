"""The control process of ``townhall serve``: the API, the pages, the stage WebSockets.

It holds the rooms, their journal and the listener counts, and nothing on a media
clock: each Space's stage runs in its own stage process behind the supervisor (the
hub), reached through ``RemoteStage``; the room snapshots for the listeners go to the
hub, which hands them to the audience workers and the recorder. The hub reports back
over the same link: stage replies and statuses, stage (re)starts and losses, the
listeners' presence, the process table, the audience's stats, the recordings' state.

A control process that starts resumes every live Space from its journal (in a cluster,
only those no other node took over meanwhile: see ``_settle_taken_over``) and opens its
stage again (the hub ignores an OpenStage for a stage that runs), and asks the audience
workers to report their open streams again, since its counters start empty. It serves
on the listening socket the supervisor keeps, so requests wait in the backlog while a
control process is replaced, and it exits when its link to the supervisor closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn
import uvloop
from starlette.types import ASGIApp

from townhall.app import Control
from townhall.audience.framing import apply_presence
from townhall.config import ServerConfig
from townhall.control.api import create_app, create_metrics_app
from townhall.control.config import ControlConfig
from townhall.control.guard import PortGuard, PortLimits, guarded_protocol
from townhall.control.presence import CountedPresence
from townhall.control.remote import RemoteStages, Sender
from townhall.fdbudget import ConnectionLedger, FdBudget, nofile_limit, raise_nofile_limit
from townhall.gcpolicy import freeze_startup_heap
from townhall.live import LiveSpace
from townhall.proxies import TrustedProxies
from townhall.room.events import RoomEvent
from townhall.store import SpaceRecord
from townhall.supervise.link import LinkFeed, open_link
from townhall.supervise.messages import (
    AudienceReport,
    Presence,
    ProcessTable,
    RecordingStatus,
    ResyncPresence,
    SpaceHandedOver,
    StageLost,
    StageReply,
    StageStarted,
    StageStatus,
)
from townhall.supervise.specs import ControlSpec

if TYPE_CHECKING:
    from townhall.cluster.jetstream import LeaseFollower
    from townhall.cluster.takeover import SpaceCopy

log = logging.getLogger("townhall.control")

# How long a control process told to stop lets open requests finish.
SHUTDOWN_GRACE_S = 2.0


class ControlProcess(Control):
    def __init__(self, config: ServerConfig, link: Sender) -> None:
        self.link = link
        self.stages = RemoteStages(link, config.control.stage_reply_timeout_s)
        super().__init__(
            config, self.stages.open, LinkFeed(link.send), on_change=self._room_changed
        )
        self.presence = CountedPresence(self.service.counter_of)
        # Each room change, copied to the cluster (set when this node is in one).
        self.copy_room: Callable[[LiveSpace, list[RoomEvent]], None] | None = None
        # The edges' count reports (a CountFollower), in a cluster.
        self.count_reports: Any = None
        # Drops what is still to be copied of a Space another node holds now.
        self.forget_copy: Callable[[str], None] | None = None

    def resume(self) -> None:
        """Take up the live Spaces a previous process held; recount their listeners."""
        for live in self.service.resume_live_spaces():
            if (stage := self.stages.get(live.space_id)) is not None:
                stage.resumed = True
                # A stage that kept running ignores the OpenStage: tell it the program
                # as journaled, in case the last change never reached it.
                stage.sync_program(force=True)
        self.link.send(ResyncPresence())

    def longest_tick_gaps(self) -> dict[str, float]:
        return {s.space_id: s.longest_tick_gap_s for s in self.stages.all()}

    def recent_tick_gaps(self) -> dict[str, float]:
        return {s.space_id: s.recent_tick_gap_s for s in self.stages.all()}

    def _room_changed(self, live: LiveSpace, events: list[RoomEvent]) -> None:
        if (stage := self.stages.get(live.space_id)) is not None:
            stage.sync_program()
        if self.copy_room is not None:
            self.copy_room(live, events)

    def adopt(self, space: SpaceRecord, room_json: str) -> bool:
        """Take over a live Space another node held: hold it, open its stage; everyone on
        stage reconnects to this node and checks their mic again."""
        live = self.service.adopt(space, room_json)
        if live is None:
            return False
        if (stage := self.stages.get(live.space_id)) is not None:
            stage.resumed = True
        if self.copy_room is not None:
            # At once, not at the next change: the cluster's copy then names this node,
            # the holder, and not the node it was taken from.
            self.copy_room(live, [])
        return True

    def hand_over(self, space_id: str, why: str) -> None:
        """Another node holds the Space now: send its requests there, keep no older room
        of it here, and close its stage if it runs here (the Space goes on there)."""
        live = self.service.hand_over(space_id)
        if self.forget_copy is not None:
            self.forget_copy(space_id)  # this node's room of it is older than the holder's
        log.warning("space %s: handed over, its requests go to the node holding it: %s",
                    space_id, why)  # fmt: skip
        if live is not None and live.stage is not None:
            task = asyncio.get_running_loop().create_task(live.close_stage())
            _background.add(task)
            task.add_done_callback(_background.discard)

    def receive(self, msg: object) -> None:
        """One message from the hub."""
        match msg:
            case SpaceHandedOver():
                self.hand_over(msg.space_id, f"{msg.holder} holds its lease")
            case StageReply() | StageStatus():
                if (stage := self.stages.get(msg.space_id)) is not None:
                    if isinstance(msg, StageReply):
                        stage.replied(msg)
                    else:
                        stage.reported(msg)
                        self._check_microphones(msg.space_id)
            case StageStarted():
                self._stage_started(msg)
            case StageLost():
                log.warning("space %s lost its stage (pid %d): %s", msg.space_id, msg.pid,
                            msg.reason)  # fmt: skip
                if (stage := self.stages.get(msg.space_id)) is not None:
                    stage.lost()
                if (live := self.service.held(msg.space_id)) is not None:
                    live.stage_lost()
            case Presence():
                apply_presence(self.presence, msg.report)
            case ProcessTable():
                self.reports.processes = msg.processes
            case AudienceReport():
                self.reports.audience = msg.stats
            case RecordingStatus():
                self._recording_changed(msg)
            case _:
                log.warning("ignored a %s from the supervisor", type(msg).__name__)

    def _check_microphones(self, space_id: str) -> None:
        # At once, not at the monitor's next turn: after a stage restart this is the
        # last step before the people on stage are heard again.
        if (live := self.service.held(space_id)) is not None:
            live.check_microphones(time.monotonic())

    def _stage_started(self, msg: StageStarted) -> None:
        stage = self.stages.get(msg.space_id)
        live = self.service.held(msg.space_id)
        if stage is None or live is None:
            return
        stage.started()
        # A replacement stage (or the first one a resumed Space sees: the hub itself was
        # restarted) has nobody's audio yet: everyone on stage checks their mic again.
        if msg.incarnation > 0 or stage.resumed:
            live.stage_restarted(time.time())
        stage.resumed = False
        stage.sync_program(force=True)

    def _recording_changed(self, msg: RecordingStatus) -> None:
        self.reports.recording_changed(msg)
        if msg.state == "paused":
            log.error("space %s: recording paused: %s", msg.space_id, msg.detail)
        if (live := self.service.held(msg.space_id)) is not None:
            live.recording_changed(msg.state, msg.detail)


class Inbox:
    """Holds what the link delivers until the process that handles it exists."""

    def __init__(self) -> None:
        self._early: list[Any] = []
        self._handler: Callable[[Any], None] | None = None

    def deliver(self, msg: Any) -> None:
        if self._handler is None:
            self._early.append(msg)
        else:
            self._handler(msg)

    def hand_to(self, handler: Callable[[Any], None]) -> None:
        self._handler = handler
        early, self._early = self._early, []
        for msg in early:
            handler(msg)


# Descriptors the control process holds besides its clients (see fdbudget.py).
CONTROL_RESERVES = {"journal": 16, "supervisor link": 4}


def port_guard(config: ControlConfig, limit: int) -> PortGuard:
    """The control port's bounds for a process allowed ``limit`` descriptors."""
    budget = FdBudget(limit, CONTROL_RESERVES)
    caps = budget.caps(config.max_connections, config.max_address_connections)
    log.info("control port: %s", budget.describe(caps))
    proxies = TrustedProxies(config.trusted_proxies)
    limits = PortLimits(config.head_timeout_s, config.idle_timeout_s, config.max_head_bytes)
    return PortGuard(ConnectionLedger(caps, proxies.trusts), limits)


def uvicorn_config(app: Any, config: ControlConfig, limit: int | None = None) -> uvicorn.Config:
    """uvicorn with the limits it has set from ``config``, and the ones it lacks added
    by the guard (guard.py). X-Forwarded-For counts only from configured proxies."""
    guard = port_guard(config, nofile_limit() if limit is None else limit)
    proxies = list(config.trusted_proxies)
    return uvicorn.Config(
        app,
        loop="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        http=guarded_protocol(guard),
        timeout_keep_alive=max(1, math.ceil(config.idle_timeout_s)),
        h11_max_incomplete_event_size=config.max_head_bytes,
        ws_max_size=config.max_ws_message_bytes,
        ws_ping_interval=config.ws_ping_interval_s,
        ws_ping_timeout=config.ws_ping_interval_s,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
    )


async def serve_control(spec: ControlSpec, sock: socket.socket) -> None:
    inbox = Inbox()
    link = await open_link(sock, inbox.deliver)
    control = ControlProcess(spec.config, link)
    inbox.hand_to(control.receive)
    follower, adoptable = None, []
    if spec.config.cluster.servers:
        follower = await _follow_leases(spec.config)
        adoptable = await _settle_taken_over(control, spec.config, follower)
    control.resume()
    app: ASGIApp = create_app(control)
    if follower is not None:
        app = await _route_through_cluster(app, control, spec.config, follower)
        await _adopt_unheld(control, spec.config, follower, adoptable)
        await _count_across_cluster(control, spec.config)
    server = uvicorn.Server(uvicorn_config(app, spec.config.control))
    serving = asyncio.create_task(server.serve(sockets=[spec.listen_socket]), name="control")
    waiting = asyncio.create_task(control.waiting.run(), name="waiting-rooms")
    metrics = serve_metrics(control)
    freeze_startup_heap()
    await asyncio.wait([serving, link.closed], return_when=asyncio.FIRST_COMPLETED)
    if link.closed.done():
        log.info("the supervisor is gone; the control process exits")
    server.should_exit = True
    if metrics is not None:
        metrics.should_exit = True
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        async with asyncio.timeout(SHUTDOWN_GRACE_S):
            await serving
    waiting.cancel()
    link.close()


async def _follow_leases(config: ServerConfig) -> LeaseFollower:
    """Every lease in the cluster, in a table kept up to date (loaded when returned)."""
    # Imported here: a single machine needs neither NATS nor its client.
    from townhall.cluster.jetstream import LeaseFollower

    follower = LeaseFollower(config.cluster)
    await follower.start()
    return follower


async def _settle_taken_over(
    control: ControlProcess, config: ServerConfig, follower: LeaseFollower
) -> list[SpaceCopy]:
    """Before resuming its live Spaces from its journal, a node in a cluster leaves the
    ones another node took over meanwhile (it was stopped, or cut off) to that node,
    marks ended those that ended there, and returns the copies of those another node
    held last and nobody holds now (taken up from the copy, newer than the journal)."""
    from nats.errors import Error as NatsError

    from townhall.cluster.rooms import resume_decisions
    from townhall.cluster.takeover import Resume

    live_ids = [record.id for record in control.store.live_spaces()]
    try:
        decisions = await resume_decisions(follower.connection, config, follower.table, live_ids)
    except (NatsError, TimeoutError) as exc:
        # Resumed from the journal then: a lease found taken at the first renewal still
        # hands a Space over.
        log.error("the cluster's copies are unreadable (%s); resuming from the journal", exc)
        return []
    adoptable = []
    for space_id, decision, copy in decisions:
        match decision.verdict:
            case Resume.HAND_OVER:
                control.hand_over(space_id, decision.why)
            case Resume.END if copy is not None:
                control.service.end_as_copied(space_id, copy.room_json)
                log.warning("space %s: not resumed: %s", space_id, decision.why)
            case Resume.ADOPT if copy is not None:
                control.hand_over(space_id, decision.why)
                adoptable.append(copy)
    return adoptable


async def _adopt_unheld(
    control: ControlProcess, config: ServerConfig, follower: LeaseFollower,
    copies: list[SpaceCopy],
) -> None:  # fmt: skip
    """Take up, from the cluster's copy, the Spaces nobody holds that another node held
    after this one: the lease first (one node wins), then the Space."""
    from townhall.cluster.rooms import claim_lease

    for copy in copies:
        if await claim_lease(follower.connection, config, follower.table, copy.space.id):
            log.warning("space %s: taken up from the cluster's copy", copy.space.id)
            control.adopt(copy.space, copy.room_json)


async def _route_through_cluster(
    app: ASGIApp, control: ControlProcess, config: ServerConfig, follower: LeaseFollower
) -> ASGIApp:
    """Requests for Spaces another node holds go to that node (their leases say which)."""
    # Imported here: a single machine needs neither NATS nor its client.
    from townhall.cluster.rooms import node_identity
    from townhall.cluster.routing import RouteToHolder

    await _copy_and_take_over(control, config, follower)
    return RouteToHolder(
        app,
        knows=control.service.knows,
        leases=follower.table,
        node=node_identity(config)[0],
        max_body_bytes=config.control.max_body_bytes,
        unavailable_retry_after_s=_retry_after_takeover_s(config),
        max_ws_message_bytes=config.cluster.max_relayed_ws_message_bytes,
    )


def _retry_after_takeover_s(config: ServerConfig) -> int:
    """Seconds a client should wait after a lapsed lease: about when another node has
    taken the Space over (its grace and one look), or 5 s if no node takes over."""
    c = config.cluster
    if not (c.take_over_spaces and c.token_secret):
        return 5
    return max(1, math.ceil(c.takeover_grace_s + c.takeover_check_s))


async def _copy_and_take_over(
    control: ControlProcess, config: ServerConfig, follower: LeaseFollower
) -> None:
    """Copy every room change to the cluster; take over the Spaces of nodes gone."""
    from townhall.cluster.rooms import node_identity, start_takeover
    from townhall.cluster.takeover import SpaceCopy
    from townhall.room.events import ReactionSent
    from townhall.room.record import record_to_json

    node, _ = node_identity(config)
    copier, _watch = await start_takeover(
        follower.connection,
        config,
        follower.table,
        control.service.knows,
        lambda copy: control.adopt(copy.space, copy.room_json),
    )

    def copy_room(live: LiveSpace, events: list[RoomEvent]) -> None:
        # As the journal: reactions alone wait for the next real change.
        if events and all(isinstance(e, ReactionSent) for e in events):
            return
        record = control.service.space(live.space_id)
        room_json = record_to_json(live.room.record())
        copier.copy(SpaceCopy(record, room_json, node, time.time()))

    control.copy_room = copy_room
    control.forget_copy = copier.forget
    follower.deleted = lambda space_id: _end_if_ended_there(control, config, follower, space_id)

    async def ended_copied(space_id: str) -> None:
        if not await copier.settled(space_id, config.cluster.publish_timeout_s):
            log.error("space %s: its ended room was not copied to the cluster in %.1f s; "
                      "another node could take it over", space_id,
                      config.cluster.publish_timeout_s)  # fmt: skip

    control.service.ended_copied = ended_copied
    # The live Spaces this node holds already (a restarted control process): copied now.
    for live in control.service.held_spaces():
        copy_room(live, [])


def _end_if_ended_there(
    control: ControlProcess, config: ServerConfig, follower: LeaseFollower, space_id: str
) -> None:
    """The holder of a Space handed over from here deleted its lease: if the Space ended
    there, mark it ended here too (this node stops remembering it as handed over)."""
    if not control.service.handed_over(space_id):
        return

    async def check() -> None:
        from nats.errors import Error as NatsError

        from townhall.cluster.rooms import read_space_copy
        from townhall.room.roles import SpaceState

        try:
            copy = await read_space_copy(follower.connection, config.cluster, space_id)
        except (NatsError, TimeoutError) as exc:
            log.warning("space %s: its copy is unreadable (%s)", space_id, exc)
            return
        ended = copy is not None and copy.room_state is SpaceState.ENDED
        if ended and copy is not None and control.service.handed_over(space_id):
            control.service.end_as_copied(space_id, copy.room_json)
            log.info("space %s: ended on %s; marked ended here", space_id, copy.node)

    task = asyncio.get_running_loop().create_task(check())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _count_across_cluster(control: ControlProcess, config: ServerConfig) -> None:
    """The edges' count reports, merged into the counters of the Spaces held here."""
    # Imported here: a single machine needs neither NATS nor its client.
    from townhall.cluster.count_reports import CountFollower

    follower = CountFollower(config.cluster, control.service.counter_of, control.sessions.key)
    await follower.start()
    control.count_reports = follower


def serve_metrics(control: ControlProcess) -> uvicorn.Server | None:
    """Serve /metrics on ``control.metrics_address`` if one is set (the control port
    then has none). A bind that fails is logged: the API goes on without metrics."""
    address = control.config.control.metrics_address
    if not address:
        return None
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_server((host.strip("[]") or "127.0.0.1", int(port)))
    except (OSError, ValueError) as exc:
        log.error("cannot serve /metrics on %r: %s", address, exc)
        return None
    server = uvicorn.Server(
        uvicorn.Config(
            create_metrics_app(control),
            loop="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="metrics")
    _background.add(task)
    task.add_done_callback(_background.discard)
    return server


# Tasks held until done: the loop keeps only weak references to them.
_background: set[asyncio.Task[None]] = set()


def run_control_process(spec: ControlSpec, sock: socket.socket) -> None:
    """The control process's entry point (blocking): serve until the supervisor goes."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raise_nofile_limit()
    uvloop.run(serve_control(spec, sock))
