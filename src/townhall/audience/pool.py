"""The audience worker pool: several processes serve one audience port.

One event loop writes about 100k chunks a second, so past that the audience runs in N
processes sharing the port with SO_REUSEPORT; the kernel spreads new connections across
them. The supervisor of ``townhall serve`` hosts the pool and feeds it every Space's feed.

The stage's feed is pickled once per message and written to every worker over its own
unix socket (framing.py): one write per worker per message, nothing parsed twice.

A worker whose socket backlog passes ``max_worker_backlog_bytes`` has fallen behind;
it is dropped with a log line (its socket closed, so it ends its listeners and exits,
or is killed if it does not). The stage never waits for a worker. A worker that is
dropped or dies is replaced, and the replacement is brought up to date from the
``FeedLog`` before it gets live messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

from townhall.audience.feed_log import FeedLog
from townhall.audience.framing import (
    FrameDecoder,
    PresenceReport,
    SessionSeen,
    StreamClosed,
    StreamOpened,
    WorkerReady,
    WorkerStats,
    apply_presence,
    encode_frame,
)
from townhall.audience.plane import (
    AudienceStats,
    ChannelStats,
    ListenerPresence,
    WorkerLoad,
)
from townhall.audience.server import WorkerPoolConfig
from townhall.audience.worker import WorkerSpec, run_audience_worker
from townhall.feed import FeedMessage
from townhall.sessions import anonymous_address
from townhall.supervise.messages import ResyncPresence
from townhall.supervise.restart import RestartPolicy

log = logging.getLogger(__name__)

# The workers share one restart bound: any of them dying young counts toward it.
_WORKERS = "audience"


class _WorkerLink(asyncio.Protocol):
    """The main process's end of one worker's feed socket."""

    def __init__(
        self,
        process: BaseProcess,
        on_lost: Callable[[_WorkerLink], None],
        presence: ListenerPresence | None,
        max_frame_bytes: int,
    ) -> None:
        self.process = process
        self.started_at = time.monotonic()
        self.stats = WorkerStats((), 0.0)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._on_lost = on_lost
        self._presence = presence
        self._decoder = FrameDecoder(max_frame_bytes)
        # The worker's open streams, as bounded as its connections: closed in the
        # counters when the worker goes, since it never reports their end.
        self._open: dict[str, StreamOpened] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        for msg in self._decoder.feed(data):
            match msg:
                case WorkerReady() if not self.ready.done():
                    self.ready.set_result(None)
                case StreamOpened() | StreamClosed() | SessionSeen() if self._presence:
                    self._track(msg)
                    apply_presence(self._presence, msg)
                case WorkerStats():
                    self.stats = msg

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("audience worker exited before ready"))
        self._close_streams()
        self._on_lost(self)

    def _track(self, msg: PresenceReport) -> None:
        if isinstance(msg, StreamOpened):
            self._open[msg.conn_id] = msg
        elif isinstance(msg, StreamClosed):
            self._open.pop(msg.conn_id, None)

    def _close_streams(self) -> None:
        opened, self._open = self._open, {}
        if self._presence is None:
            return
        for o in opened.values():
            ended = anonymous_address(o.session_id) is not None  # its own session
            self._presence.stream_closed(o.space_id, o.session_id, o.conn_id, ended)


@dataclass
class WorkerPool:
    """N audience worker processes on one port, fed by ``publish``, and kept at N.

    A worker that dies (a crash, the OOM killer) or is dropped for falling behind is
    replaced: the replacement gets the ``FeedLog`` replay (headers, the last room
    snapshot, the join burst, the LL-HLS window) before any live message, so it serves
    every live channel at once and numbers LL-HLS parts as its siblings do. The pace of
    replacements is bounded by ``WorkerPoolConfig``.
    """

    spec: WorkerSpec
    count: int
    links: list[_WorkerLink] = field(default_factory=list)
    processes: list[BaseProcess] = field(default_factory=list)
    dropped: int = 0
    restarts: int = 0
    presence: ListenerPresence | None = None  # where the workers' listeners are counted
    feed_log: FeedLog = field(init=False)
    _closing: bool = False
    _policy: RestartPolicy = field(init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        c = self.config
        self._policy = RestartPolicy(c.max_restarts, c.restart_window_s, c.healthy_uptime_s)
        hls = self.spec.audience.channel.hls
        kept = self.spec.audience.workers.feed_log
        self.feed_log = FeedLog(
            keep_ogg_pages=kept.ogg_pages,
            keep_hls_parts=(hls.window_segments + 1) * hls.parts_per_segment,
            keep_ended=kept.ended_channels,
        )

    @property
    def config(self) -> WorkerPoolConfig:
        return self.spec.audience.workers

    @property
    def port(self) -> int:
        return self.spec.port

    async def start(self) -> None:
        reservation = self._reserve_port()
        try:
            links = [await self._spawn() for _ in range(self.count)]
            await asyncio.wait_for(
                asyncio.gather(*(link.ready for link in links)), self.config.start_timeout_s
            )
            for link in links:
                self._admit(link)
        finally:
            if reservation is not None:
                reservation.close()

    def _reserve_port(self) -> socket.socket | None:
        """Port 0 means "any": bind one (not listening) so every worker gets the same."""
        if self.spec.port != 0:
            return None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.spec.host, 0))
        self.spec = dataclasses.replace(self.spec, port=sock.getsockname()[1])
        return sock

    async def _spawn(self) -> _WorkerLink:
        # spawn, not fork: the main process runs an event loop and threads.
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = ctx.Process(target=run_audience_worker, args=(self.spec, theirs), daemon=True)
        proc.start()
        theirs.close()
        self.processes.append(proc)
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        max_frame = self.config.max_frame_bytes
        _, link = await loop.create_unix_connection(
            lambda: _WorkerLink(proc, self._lost, self.presence, max_frame), sock=ours
        )
        return link

    def _admit(self, link: _WorkerLink) -> None:
        """Replay, then live: both written in this one call, so no message falls between."""
        assert link.transport is not None
        replay = self.feed_log.replay()
        if replay:
            link.transport.write(b"".join(encode_frame(m) for m in replay))
        self.links.append(link)

    def publish(self, msg: FeedMessage) -> None:
        """Called by the stage; never blocks. One pickle, one write per worker."""
        self.feed_log.record(msg)
        frame = encode_frame(msg)
        limit = self.spec.audience.max_worker_backlog_bytes
        for link in list(self.links):
            assert link.transport is not None
            if link.transport.get_write_buffer_size() > limit:
                self._drop(link)
                continue
            link.transport.write(frame)

    def resync_presence(self) -> None:
        """Ask every worker to report each open stream again (the counters restarted)."""
        frame = encode_frame(ResyncPresence())
        for link in self.links:
            assert link.transport is not None
            link.transport.write(frame)

    def _drop(self, link: _WorkerLink) -> None:
        self.dropped += 1
        log.error("audience worker fell behind its feed by over %d bytes; dropping it",
                  self.spec.audience.max_worker_backlog_bytes)  # fmt: skip
        assert link.transport is not None
        link.transport.abort()
        self._lost(link)
        loop = asyncio.get_running_loop()
        loop.call_later(self.config.drop_grace_s, _kill_if_alive, link.process)

    def _lost(self, link: _WorkerLink) -> None:
        if link not in self.links:
            return
        self.links.remove(link)
        if self._closing:
            return
        log.warning("audience worker %s left; %d of %d serving",
                    link.process.pid, len(self.links), self.count)  # fmt: skip
        self._policy.ran(_WORKERS, time.monotonic() - link.started_at)
        task = asyncio.get_running_loop().create_task(self._replace(), name="audience-respawn")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self) -> None:
        c = self.config
        while not self._closing:
            now = time.monotonic()
            at = self._policy.next_restart_at(_WORKERS, now)
            if at > now:
                log.error("audience workers died young %d times in %.0f s; next in %.1f s",
                          c.max_restarts, c.restart_window_s, at - now)  # fmt: skip
                await asyncio.sleep(at - now)
                continue
            self._policy.allow(_WORKERS, now)
            await asyncio.sleep(c.restart_delay_s)
            self._reap()
            link: _WorkerLink | None = None
            try:
                link = await self._spawn()
                await asyncio.wait_for(link.ready, c.start_timeout_s)
            except (OSError, ConnectionError, TimeoutError) as exc:
                log.error("audience worker failed to start: %s", exc)
                if link is not None:  # not serving, but it may hold a place on the port
                    _kill_if_alive(link.process)
                continue
            if self._closing:
                return
            self._admit(link)
            self.restarts += 1
            log.warning("audience worker %s replaced a lost one; %d of %d serving",
                        link.process.pid, len(self.links), self.count)  # fmt: skip
            return

    def stats(self) -> AudienceStats:
        """Every serving worker's last report (at most ``stats_every_s`` old), added up."""
        merged: dict[str, ChannelStats] = {}
        for link in self.links:
            for c in link.stats.channels:
                merged[c.space_id] = merged[c.space_id].merged(c) if c.space_id in merged else c
        workers = tuple(
            WorkerLoad(link.process.pid or 0, link.stats.loop_lag_s) for link in self.links
        )
        return AudienceStats(tuple(merged.values()), workers, self.restarts)

    def _reap(self) -> None:
        """Forget exited processes (``is_alive`` also collects their exit status)."""
        self.processes = [p for p in self.processes if p.is_alive()]

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for link in list(self.links):
            if link.transport is not None:
                link.transport.close()
        for proc in self.processes:
            await asyncio.to_thread(proc.join, self.config.exit_timeout_s)
            if proc.is_alive():
                proc.terminate()


def _kill_if_alive(proc: BaseProcess) -> None:
    if proc.is_alive():
        log.error("audience worker %s is not serving and did not exit; killing it", proc.pid)
        proc.kill()
