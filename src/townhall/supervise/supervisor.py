"""The supervisor: the parent process of ``townhall serve`` and the hub between children.

It binds the control port (kept across control restarts: connections queue in its
backlog instead of being refused), hosts the audience ``WorkerPool``, spawns the
recorder, the control process and one stage process per open Space, routes every
message between them (``hub.Hub``), and restarts any child that dies, at the rate
``RestartPolicy`` allows, logging why it ended. It never blocks on a child: links cut a
peer that stops reading, and a child whose link closed while it lives is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from townhall.audience.framing import SessionSeen, StreamClosed, StreamOpened
from townhall.audience.pool import WorkerPool
from townhall.audience.worker import WorkerSpec
from townhall.config import ServerConfig
from townhall.sessions import CLUSTER_SESSION_KEY_FILE, node_session_key, write_session_key
from townhall.store import Store
from townhall.supervise.child import run_child
from townhall.supervise.hub import (
    AUDIENCE,
    CONTROL,
    POOL,
    RECORDER,
    SUPERVISOR,
    Delivery,
    Hub,
    space_of,
    stage_name,
)
from townhall.supervise.link import Link
from townhall.supervise.messages import (
    AudienceReport,
    CloseStage,
    OpenStage,
    ProcessInfo,
    ProcessTable,
    ResyncPresence,
    SpaceHandedOver,
    StageLost,
    StageStarted,
)
from townhall.supervise.restart import RestartPolicy

if TYPE_CHECKING:
    from townhall.cluster.jetstream import JetStreamPublisher, LeaseKeeper
    from townhall.cluster.leases import Lease
from townhall.supervise.specs import (
    AssignStage,
    ControlSpec,
    RecorderSpec,
    StageSpec,
    StandbySpec,
)

log = logging.getLogger(__name__)

# role → the dotted path of its entry point ``(spec, sock) -> None``; tests override it.
DEFAULT_ENTRY_POINTS: Mapping[str, str] = {
    "control": "townhall.control.process.run_control_process",
    "recorder": "townhall.recording.process.run_recorder_process",
    "stage": "townhall.stage.process.run_stage_process",
}
# The idle stage process a lost or new stage takes up (``StandbySpec``).
STANDBY = "stage-standby"


def exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def bind_control_socket(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


@dataclass
class _Child:
    process: BaseProcess
    link: Link
    started_at_unix_s: float
    exited: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0


@dataclass
class _Slot:
    """One supervised process name and the history of its incarnations."""

    name: str
    role: str
    restarts: int = 0
    last_exit: str = ""
    child: _Child | None = None
    spawning: bool = False
    pending: asyncio.TimerHandle | None = None  # a scheduled restart
    close_timer: asyncio.TimerHandle | None = None

    @property
    def busy(self) -> bool:
        return self.child is not None or self.spawning or self.pending is not None


class _PresenceToHub:
    """The pool's ``ListenerPresence``: every report goes through the hub to control."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def stream_opened(self, space_id: str, session_id: str, conn_id: str) -> None:
        self._supervisor.receive(AUDIENCE, StreamOpened(space_id, session_id, conn_id))

    def stream_closed(
        self, space_id: str, session_id: str, conn_id: str, session_ended: bool
    ) -> None:
        report = StreamClosed(space_id, session_id, conn_id, session_ended)
        self._supervisor.receive(AUDIENCE, report)

    def seen(self, space_id: str, session_id: str) -> None:
        self._supervisor.receive(AUDIENCE, SessionSeen(space_id, session_id))


@dataclass
class Supervisor:
    config: ServerConfig
    entry_points: Mapping[str, str] = field(default_factory=dict)
    log_level: int = logging.INFO
    hub: Hub = field(init=False, default_factory=Hub)
    slots: dict[str, _Slot] = field(init=False, default_factory=dict)
    pool: WorkerPool | None = field(init=False, default=None)
    # The program's copy for the cluster's edges, when a NATS cluster is configured.
    cluster: JetStreamPublisher | None = field(init=False, default=None)
    leases: LeaseKeeper | None = field(init=False, default=None)
    control_socket: socket.socket | None = field(init=False, default=None)
    started_at_unix_s: float = field(init=False, default_factory=time.time)
    _policy: RestartPolicy = field(init=False)
    _closing: bool = field(init=False, default=False)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _worker_seen_at: dict[int, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.entry_points = {**DEFAULT_ENTRY_POINTS, **self.entry_points}
        s = self.config.supervisor
        self._policy = RestartPolicy(s.max_restarts, s.restart_window_s, s.healthy_uptime_s)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the control port, start the audience workers, then recorder and control.
        Ports given as 0 are chosen here and written back into ``config``."""
        c = self.config
        self.control_socket = bind_control_socket(
            c.host, c.control_port, c.supervisor.control_backlog_connections
        )
        c = dataclasses.replace(c, control_port=self.control_socket.getsockname()[1])
        # The workers check listeners' signed session ids with the key alone.
        secret = c.cluster.token_secret or Store(c.db_path).setting(
            "token_secret", secrets.token_urlsafe(32)
        )
        key = node_session_key(secret, c.cluster.session_key_file)
        if c.cluster.servers and not c.cluster.session_key_file:
            # For the edges: they check session ids and sign their counts with it.
            write_session_key(c.data_dir / CLUSTER_SESSION_KEY_FILE, key)
        spec = WorkerSpec(c.audience, c.recordings_dir, c.host, c.audience_port, key)
        self.pool = WorkerPool(spec, max(1, c.audience_workers), presence=_PresenceToHub(self))
        await self.pool.start()
        self.config = dataclasses.replace(c, audience_port=self.pool.port)
        if c.cluster.servers:
            await self._join_cluster()
        for role in (RECORDER, CONTROL):
            slot = self.slots[role] = _Slot(role, role)
            await self._spawn(slot)
        if c.supervisor.standby_stage_processes > 0:
            await self._spawn(self.slots.setdefault(STANDBY, _Slot(STANDBY, "stage")))
        self._track(asyncio.get_running_loop().create_task(self._report(), name="hub-report"))

    async def _join_cluster(self) -> None:
        # Imported here: a single machine needs neither NATS nor its client.
        from townhall.cluster.jetstream import JetStreamPublisher, LeaseKeeper
        from townhall.cluster.rooms import node_identity

        c = self.config
        publisher = JetStreamPublisher(c.cluster, c.audience.channel.hls.parts_per_segment)
        await publisher.start()
        self.cluster = publisher
        # The node's own URL, not the public one: that may be a name every node answers.
        node, node_url = node_identity(c)
        self.leases = LeaseKeeper(
            publisher.connection, c.cluster, node, node_url, lambda: list(self.hub.open_spaces),
            lost=self._space_lost,
        )  # fmt: skip
        await self.leases.start()
        log.info("node %s publishes the program to the NATS cluster at %s", node,
                 c.cluster.nats_urls)  # fmt: skip

    def _space_lost(self, space_id: str, holder: Lease) -> None:
        """Another node took over a Space whose stage runs here: publish nothing more of
        it (first, so the stage's close reaches no edge), close its stage, and tell the
        control process, which sends the Space's requests to the holder from then on."""
        if self.cluster is not None:
            self.cluster.fence(space_id)
        # Closed here, as if the control process had asked: it may be restarting, and
        # then learns of the holder from the lease when it starts.
        self.receive(CONTROL, CloseStage(space_id))
        self._send(CONTROL, SpaceHandedOver(space_id, holder.node))

    async def stop(self) -> None:
        """Stop every child by pid: SIGTERM, then SIGKILL after ``stop_grace_s``. The
        recorder goes last, so it writes what the others sent before they stopped."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for slot in self.slots.values():
            for timer in (slot.pending, slot.close_timer):
                if timer is not None:
                    timer.cancel()
        first = [s.child for s in self.slots.values() if s.child and s.role != RECORDER]
        last = [s.child for s in self.slots.values() if s.child and s.role == RECORDER]
        await self._terminate(first)
        await self._terminate(last)
        if self.pool is not None:
            await self.pool.close()
        if self.leases is not None:
            await self.leases.close()
        if self.cluster is not None:
            await self.cluster.close()
        if self.control_socket is not None:
            self.control_socket.close()

    async def _terminate(self, children: list[_Child]) -> None:
        for child in children:
            child.link.close()
            if child.process.is_alive():
                child.process.terminate()
        deadline = time.monotonic() + self.config.supervisor.stop_grace_s
        for child in children:
            await asyncio.to_thread(child.process.join, max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.error("%s (pid %d) ignored SIGTERM; killing it", child.process.name, child.pid)
                child.process.kill()
                await asyncio.to_thread(child.process.join, 1.0)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- spawning and reaping ---------------------------------------------------------

    def _spec(self, slot: _Slot) -> object:
        if slot.role == CONTROL:
            assert self.control_socket is not None
            return ControlSpec(self.config, self.control_socket)
        if slot.role == RECORDER:
            return RecorderSpec(self.config)
        if slot.name == STANDBY:
            return StandbySpec(self.config)
        space_id = space_of(slot.name)
        assert space_id is not None
        return StageSpec(self.config, self.hub.open_spaces[space_id], incarnation=slot.restarts,
                         next_part_seq=self.hub.next_part_seq(space_id))  # fmt: skip

    def _nice(self, role: str) -> int:
        s = self.config.supervisor
        return {CONTROL: s.control_nice, RECORDER: s.recorder_nice}.get(role, s.stage_nice)

    async def _spawn(self, slot: _Slot) -> None:
        s = self.config.supervisor
        if space_of(slot.name) is not None and self._take_standby(slot):
            return
        slot.spawning = True
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ctx = multiprocessing.get_context("spawn")  # the hub runs a loop and threads
        args = (self.entry_points[slot.role], self._spec(slot), theirs, self._nice(slot.role),
                self.log_level)  # fmt: skip
        proc = ctx.Process(target=run_child, args=args, name=slot.name, daemon=True)
        try:
            proc.start()
        except Exception as exc:  # fork/exec failed, or the spec did not pickle
            ours.close()
            slot.spawning = False
            slot.last_exit = f"failed to start: {exc}"
            log.exception("%s failed to start", slot.name)
            self._schedule_restart(slot)
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        on_message = functools.partial(self.receive, slot.name)
        _, link = await loop.create_unix_connection(
            lambda: Link(on_message, s.link_max_frame_bytes, s.link_max_backlog_bytes), sock=ours
        )
        child = _Child(proc, link, time.time())
        slot.child, slot.spawning = child, False
        loop.add_reader(proc.sentinel, self._on_exit, slot, child)
        link.closed.add_done_callback(lambda _: self._on_link_lost(slot, child))
        log.info("%s started (pid %d)", slot.name, child.pid)
        self._started(slot, child)

    def _take_standby(self, slot: _Slot) -> bool:
        """Make the standby stage process this Space's stage; False if there is none."""
        standby = self.slots.get(STANDBY)
        child = standby.child if standby is not None else None
        if standby is None or child is None or child.exited:
            return False
        standby.child = None
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.process.sentinel)
        loop.add_reader(child.process.sentinel, self._on_exit, slot, child)
        child.link.deliver_to(functools.partial(self.receive, slot.name))
        child.link.send(AssignStage(self._spec(slot)))  # type: ignore[arg-type]
        child.started_at_unix_s = time.time()
        slot.child = child
        log.info("%s taken up by the standby stage process (pid %d)", slot.name, child.pid)
        self._started(slot, child)
        self._track(loop.create_task(self._spawn(standby), name="spawn-standby"))
        return True

    def _started(self, slot: _Slot, child: _Child) -> None:
        if slot.role == RECORDER:
            for delivery in self.hub.recorder_catch_up():
                self._deliver(delivery)
        space_id = space_of(slot.name)
        if space_id is not None:
            self.hub.stage_up(space_id)
            self._send(CONTROL, StageStarted(space_id, child.pid, slot.restarts))
            if not self.hub.is_open(space_id):  # closed while it was starting
                self._send(slot.name, CloseStage(space_id))
        self._send_table()

    def _on_link_lost(self, slot: _Slot, child: _Child) -> None:
        if child.exited or self._closing:
            return
        asyncio.get_running_loop().call_later(
            self.config.supervisor.link_lost_grace_s, self._kill_wedged, slot, child
        )

    def _kill_wedged(self, slot: _Slot, child: _Child) -> None:
        if not child.exited and child.process.is_alive():
            log.error("%s (pid %d) lost its link but lives: wedged; killing it",
                      slot.name, child.pid)  # fmt: skip
            child.process.kill()

    def _on_exit(self, slot: _Slot, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.process.sentinel)
        child.exited = True
        self._track(loop.create_task(self._reap(slot, child), name=f"reap-{slot.name}"))

    async def _reap(self, slot: _Slot, child: _Child) -> None:
        # Read what the child wrote before it died (its link ends at EOF), then act.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(child.link.closed), self.config.supervisor.link_lost_grace_s
            )
        child.link.close()
        await asyncio.to_thread(child.process.join, 1.0)
        reason = exit_reason(child.process.exitcode)
        slot.child, slot.last_exit = None, reason
        if self._closing:
            return
        log.warning("%s (pid %d) ended: %s", slot.name, child.pid, reason)
        self._policy.ran(slot.name, time.time() - child.started_at_unix_s)
        space_id = space_of(slot.name)
        if space_id is not None:
            self.hub.stage_down(space_id)
            self._send(CONTROL, StageLost(space_id, child.pid, reason))
            if not self.hub.is_open(space_id):
                self._stage_gone(slot, space_id)
                self._send_table()
                return
        self._send_table()
        self._schedule_restart(slot)

    def _schedule_restart(self, slot: _Slot) -> None:
        if self._closing:
            return
        now = time.monotonic()
        delay = self.config.supervisor.restart_delay_s
        at = max(self._policy.next_restart_at(slot.name, now), now + delay)
        if at == float("inf"):
            log.error("%s may not be restarted (max_restarts is 0); leaving it down", slot.name)
            return
        if at > now + delay:
            log.error("%s restarted %d times in %.0f s; next restart in %.1f s", slot.name,
                      self._policy.max_restarts, self._policy.window_s, at - now)  # fmt: skip
        slot.pending = asyncio.get_running_loop().call_later(at - now, self._restart, slot)

    def _restart(self, slot: _Slot) -> None:
        slot.pending = None
        space_id = space_of(slot.name)
        if self._closing or slot.child is not None or slot.spawning:
            return
        if space_id is not None and not self.hub.is_open(space_id):
            self._stage_gone(slot, space_id)
            return
        if not self._policy.allow(slot.name, time.monotonic()):
            self._schedule_restart(slot)
            return
        slot.restarts += 1
        task = asyncio.get_running_loop().create_task(self._spawn(slot), name=f"spawn-{slot.name}")
        self._track(task)

    def _stage_gone(self, slot: _Slot, space_id: str) -> None:
        """A closed Space's stage is gone: make sure its feed ended, forget the Space."""
        if slot.close_timer is not None:
            slot.close_timer.cancel()
        if slot.pending is not None:
            slot.pending.cancel()
        self._end_channel(space_id)
        self.hub.forget(space_id)
        self._policy.forget(slot.name)
        if self.slots.get(slot.name) is slot:
            del self.slots[slot.name]

    def _end_channel(self, space_id: str) -> None:
        for delivery in self.hub.channel_ended(space_id, time.time()):
            self._deliver(delivery)

    # -- routing ----------------------------------------------------------------------

    def receive(self, source: str, msg: object) -> None:
        """A message from a child (or the pool's presence): route it. Never raises: one
        bad message must not take the hub down."""
        try:
            for delivery in self.hub.route(source, msg):
                self._deliver(delivery)
        except Exception:
            log.exception("the hub failed to route a %s from %s", type(msg).__name__, source)

    def _deliver(self, delivery: Delivery) -> None:
        if delivery.to == POOL:
            if self.pool is not None:
                self.pool.publish(delivery.msg)  # type: ignore[arg-type]
            if self.cluster is not None:
                self.cluster.publish(delivery.msg)  # type: ignore[arg-type]
        elif delivery.to == SUPERVISOR:
            self._act(delivery.msg)
        else:
            self._send(delivery.to, delivery.msg)

    def _send(self, name: str, msg: object) -> None:
        slot = self.slots.get(name)
        if slot is not None and slot.child is not None and not slot.child.exited:
            slot.child.link.send(msg)

    def _act(self, msg: object) -> None:
        match msg:
            case OpenStage(space_id=space_id):
                self._open_stage(space_id)
            case CloseStage(space_id=space_id):
                self._close_stage(space_id)
            case ResyncPresence():
                if self.pool is not None:
                    self.pool.resync_presence()

    def _open_stage(self, space_id: str) -> None:
        if self.cluster is not None:
            # Opened by the control process: this node holds the Space (again).
            self.cluster.unfence(space_id)
        name = stage_name(space_id)
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = _Slot(name, "stage")
        if slot.busy:
            return
        if self.cluster is not None and space_id not in self.hub.last_part_seq:
            # Another node may have run this Space's stage (a takeover): number on.
            slot.spawning = True
            self._track(asyncio.get_running_loop().create_task(self._number_on(slot, space_id)))
            return
        self._track(asyncio.get_running_loop().create_task(self._spawn(slot)))

    async def _number_on(self, slot: _Slot, space_id: str) -> None:
        """Spawn a Space's first stage on this node numbering its parts on from the last
        part the cluster has of it (one past it, with a discontinuity)."""
        from townhall.cluster.rooms import last_part_seq
        from townhall.cluster.takeover import continued_part_seq

        assert self.cluster is not None
        js = self.cluster.connection.jetstream(timeout=self.config.cluster.publish_timeout_s)
        try:
            seq = continued_part_seq(await last_part_seq(js, space_id))
        except Exception as exc:  # the cluster unreachable: media time alone numbers it
            log.warning("space %s: the cluster's last part is unknown (%s)", space_id, exc)
            seq = None
        if seq is not None and space_id not in self.hub.last_part_seq:
            self.hub.last_part_seq[space_id] = seq - 1
            log.info("space %s: numbering on from part %d, published before", space_id, seq)
        slot.spawning = False
        if not self._closing and not slot.busy and self.hub.is_open(space_id):
            await self._spawn(slot)

    def _close_stage(self, space_id: str) -> None:
        slot = self.slots.get(stage_name(space_id))
        if slot is None:
            self._end_channel(space_id)
            self.hub.forget(space_id)
            return
        if slot.child is None and not slot.spawning:
            self._stage_gone(slot, space_id)
            return
        if slot.close_timer is None:
            slot.close_timer = asyncio.get_running_loop().call_later(
                self.config.supervisor.close_stage_timeout_s, self._close_overdue, slot, space_id
            )

    def _close_overdue(self, slot: _Slot, space_id: str) -> None:
        slot.close_timer = None
        if self.hub.is_open(space_id):
            return  # opened again meanwhile: the running stage serves it
        child = slot.child
        if child is not None and child.process.is_alive():
            log.error("%s did not end within %.1f s of CloseStage; killing it", slot.name,
                      self.config.supervisor.close_stage_timeout_s)  # fmt: skip
            child.process.kill()
        self._end_channel(space_id)

    # -- reports ----------------------------------------------------------------------

    async def _report(self) -> None:
        every = self.config.supervisor.report_every_s
        while True:
            await asyncio.sleep(every)
            self._send_table()
            if self.pool is not None:
                self._send(CONTROL, AudienceReport(self.pool.stats()))

    def process_table(self) -> ProcessTable:
        rows = [ProcessInfo("supervisor", "supervisor", os.getpid(), self.started_at_unix_s, 0)]
        for slot in self.slots.values():
            child = slot.child
            pid, started = (child.pid, child.started_at_unix_s) if child else (0, 0.0)
            rows.append(ProcessInfo(slot.role, slot.name, pid, started, slot.restarts,
                                    slot.last_exit))  # fmt: skip
        if self.pool is not None:
            now = time.time()
            pids = [link.process.pid or 0 for link in self.pool.links]
            self._worker_seen_at = {p: self._worker_seen_at.get(p, now) for p in pids}
            for i, pid in enumerate(pids, 1):
                # The pool replaces workers itself; its count of replacements is shared.
                rows.append(ProcessInfo("audience", f"audience:{i}", pid,
                                        self._worker_seen_at[pid], self.pool.restarts))  # fmt: skip
        return ProcessTable(tuple(rows))

    def _send_table(self) -> None:
        self._send(CONTROL, self.process_table())
