"""Audience worker processes: several processes serve one audience port.

One event loop writes about 100k chunks a second (FIELD-NOTES.md), so past that the
audience runs in N processes sharing the port with SO_REUSEPORT; the kernel spreads
new connections across them. The main process keeps the stage and the control API.

The stage's feed is pickled once per message and written to every worker over its own
unix socket: one write per worker per message, nothing parsed twice. Each worker
applies the messages to its own ``AudienceServer``, exactly as the main process does
with no workers.

A worker whose socket backlog passes ``max_worker_backlog_bytes`` has fallen behind;
it is dropped with a log line (its socket closed, so it ends its listeners and exits,
or is killed if it does not). The stage never waits for a worker. A worker that is
dropped or dies is replaced, and the replacement is brought up to date from the
``FeedLog`` before it gets live messages.

Framing on the socket: a 4-byte big-endian length, then a pickled message: the main
process sends ``FeedMessage``s; the worker sends ``WorkerReady`` once it listens on the
port, then ``PresenceReport``s and, every second, ``WorkerStats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import uvloop

from townhall.audience.feed import FeedLog, FeedMessage
from townhall.audience.server import (
    AudienceConfig,
    AudienceServer,
    ChannelStats,
    ListenerPresence,
)
from townhall.gcpolicy import freeze_startup_heap

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# Our own process writes these frames; the bound only guards against a broken stream.
MAX_FRAME_BYTES = 16 * 1024 * 1024

FeedSink = Callable[[FeedMessage], None]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; picklable, sent once at spawn."""

    audience: AudienceConfig
    recordings_dir: Path | None
    host: str
    port: int


@dataclass(frozen=True)
class WorkerReady:
    """A worker's first word back: it listens on the shared port."""


@dataclass(frozen=True)
class PresenceReport:
    """A worker's listener presence, for the main process's honest counters."""

    event: str  # "opened", "closed" or "seen"
    space_id: str
    session_id: str
    conn_id: str = ""
    session_ended: bool = False


@dataclass(frozen=True)
class WorkerStats:
    """A worker's fan-out state, sent every ``STATS_EVERY_S`` for the main's /metrics."""

    channels: tuple[ChannelStats, ...]
    loop_lag_s: float


STATS_EVERY_S = 1.0


def encode_frame(msg: object) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Bytes in, feed messages out; pure, so partial reads are easy to test."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out: list[Any] = []
        while len(self._buf) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buf)
            if size > MAX_FRAME_BYTES:
                raise ValueError(f"feed frame of {size} bytes is over the limit")
            if len(self._buf) < _LENGTH.size + size:
                break
            out.append(pickle.loads(self._buf[_LENGTH.size : _LENGTH.size + size]))
            del self._buf[: _LENGTH.size + size]
        return out


# -- the worker process -------------------------------------------------------------
class _PresenceRelay:
    """ListenerPresence in a worker: reports go back to the main process, framed.

    Connection ids get the worker's pid so two workers' connections never collide.
    A session's polls are sent at most once per ``seen_every_s``: the counters need a
    heartbeat within tens of seconds, and a playlist hit must stay a dict lookup.
    Reports are written together once per ``batch_s``: in a join storm that is one
    write here and one read in the main process (on the stage's core) per batch, not
    per listener.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        pid: int,
        seen_every_s: float = 1.0,
        batch_s: float = 0.05,
        call_later: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self._transport = transport
        self._pid = pid
        self._seen_every_s = seen_every_s
        self._seen_recently: set[tuple[str, str]] = set()
        self._seen_since = time.monotonic()
        self._batch_s = batch_s
        self._call_later = call_later
        self._pending: list[bytes] = []

    def stream_opened(self, space_id: str, session_id: str, conn_id: str) -> None:
        self._send(PresenceReport("opened", space_id, session_id, f"{self._pid}:{conn_id}"))

    def stream_closed(
        self, space_id: str, session_id: str, conn_id: str, session_ended: bool
    ) -> None:
        conn = f"{self._pid}:{conn_id}"
        self._send(PresenceReport("closed", space_id, session_id, conn, session_ended))

    def seen(self, space_id: str, session_id: str) -> None:
        now = time.monotonic()
        if now - self._seen_since >= self._seen_every_s:
            self._seen_recently.clear()  # bounded: one period's sessions at most
            self._seen_since = now
        if (space_id, session_id) not in self._seen_recently:
            self._seen_recently.add((space_id, session_id))
            self._send(PresenceReport("seen", space_id, session_id))

    def _send(self, report: PresenceReport) -> None:
        self._pending.append(encode_frame(report))
        if self._batch_s <= 0:
            self.flush()
        elif len(self._pending) == 1:  # the first of a batch schedules its write
            later = self._call_later or asyncio.get_running_loop().call_later
            later(self._batch_s, self.flush)

    def flush(self) -> None:
        batch, self._pending = b"".join(self._pending), []
        if batch and not self._transport.is_closing():
            self._transport.write(batch)


def apply_presence(presence: ListenerPresence, report: PresenceReport) -> None:
    if report.event == "opened":
        presence.stream_opened(report.space_id, report.session_id, report.conn_id)
    elif report.event == "closed":
        presence.stream_closed(
            report.space_id, report.session_id, report.conn_id, report.session_ended
        )
    else:
        presence.seen(report.space_id, report.session_id)


class _FeedReader(asyncio.Protocol):
    def __init__(self, apply: FeedSink, closed: asyncio.Future[None]) -> None:
        self._apply = apply
        self._closed = closed
        self._decoder = FrameDecoder()

    def data_received(self, data: bytes) -> None:
        for msg in self._decoder.feed(data):
            self._apply(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


def worker_main(spec: WorkerSpec, feed: socket.socket) -> None:
    """Entry point of a worker process."""
    with contextlib.suppress(OSError):  # not allowed here: run at the main's priority
        os.nice(spec.audience.worker_nice)
    uvloop.run(_serve_worker(spec, feed))


async def _serve_worker(spec: WorkerSpec, feed: socket.socket) -> None:
    server = AudienceServer(spec.audience, spec.recordings_dir)
    listener = await server.serve(spec.host, spec.port, reuse_port=True)
    freeze_startup_heap()
    flusher = asyncio.create_task(server.run_flusher(), name="audience-flusher")
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    feed.setblocking(False)
    transport, _ = await loop.create_unix_connection(
        lambda: _FeedReader(server.apply, closed), sock=feed
    )
    server.presence = _PresenceRelay(transport, os.getpid())
    transport.write(encode_frame(WorkerReady()))
    reporter = asyncio.create_task(_report_stats(server, transport), name="worker-stats")
    await closed  # the main process went away or dropped us
    listener.close()
    flusher.cancel()
    reporter.cancel()
    for channel in server.channels.values():
        channel.ogg.close_all()
        channel.events.close_all()


async def _report_stats(server: AudienceServer, transport: asyncio.Transport) -> None:
    while not transport.is_closing():
        await asyncio.sleep(STATS_EVERY_S)
        transport.write(encode_frame(WorkerStats(tuple(server.stats()), server.loop_lag_s)))


# -- the main process -----------------------------------------------------------------
class _WorkerLink(asyncio.Protocol):
    """The main process's end of one worker's feed socket."""

    def __init__(
        self,
        process: BaseProcess,
        on_lost: Callable[[_WorkerLink], None],
        presence: ListenerPresence | None,
    ) -> None:
        self.process = process
        self.stats = WorkerStats((), 0.0)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._on_lost = on_lost
        self._presence = presence
        self._decoder = FrameDecoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        for msg in self._decoder.feed(data):
            if isinstance(msg, WorkerReady) and not self.ready.done():
                self.ready.set_result(None)
            elif isinstance(msg, PresenceReport) and self._presence is not None:
                apply_presence(self._presence, msg)
            elif isinstance(msg, WorkerStats):
                self.stats = msg

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("audience worker exited before ready"))
        self._on_lost(self)


@dataclass
class WorkerPool:
    """N audience worker processes on one port, fed by ``publish``, and kept at N.

    A worker that dies (a crash, the OOM killer) or is dropped for falling behind is
    replaced: the replacement gets the ``FeedLog`` replay (headers, the last room
    snapshot, the join burst, the LL-HLS window) before any live message, so it serves
    every live channel at once and numbers LL-HLS parts as its siblings do. At most
    ``max_restarts`` replacements per ``restart_window_s``: a worker that cannot stay
    up is left down, and the log says so, rather than respawned in a tight loop.
    """

    spec: WorkerSpec
    count: int
    start_timeout_s: float = 30.0
    links: list[_WorkerLink] = field(default_factory=list)
    processes: list[BaseProcess] = field(default_factory=list)
    dropped: int = 0
    restarts: int = 0
    presence: ListenerPresence | None = None  # where the workers' listeners are counted
    restart_delay_s: float = 0.5
    max_restarts: int = 5
    restart_window_s: float = 60.0
    # A dropped worker gets this long to exit on its own before it is killed: a hung
    # process would keep its place in the port's SO_REUSEPORT group and take newcomers.
    drop_grace_s: float = 2.0
    feed_log: FeedLog = field(init=False)
    _closing: bool = False
    _restarted_at: deque[float] = field(default_factory=deque)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        hls = self.spec.audience.channel.hls
        window_parts = (hls.window_segments + 1) * hls.parts_per_segment
        # 5 Ogg pages a second: 20 is 4 s, past any join burst.
        self.feed_log = FeedLog(keep_ogg_pages=20, keep_hls_parts=window_parts)

    @property
    def port(self) -> int:
        return self.spec.port

    async def start(self) -> None:
        reservation = self._reserve_port()
        try:
            links = [await self._spawn() for _ in range(self.count)]
            await asyncio.wait_for(
                asyncio.gather(*(link.ready for link in links)), self.start_timeout_s
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
        self.spec = WorkerSpec(
            self.spec.audience, self.spec.recordings_dir, self.spec.host, sock.getsockname()[1]
        )
        return sock

    async def _spawn(self) -> _WorkerLink:
        # spawn, not fork: the main process runs an event loop and threads.
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = ctx.Process(target=worker_main, args=(self.spec, theirs), daemon=True)
        proc.start()
        theirs.close()
        self.processes.append(proc)
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        _, link = await loop.create_unix_connection(
            lambda: _WorkerLink(proc, self._lost, self.presence), sock=ours
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

    def _drop(self, link: _WorkerLink) -> None:
        self.dropped += 1
        log.error("audience worker fell behind its feed by over %d bytes; dropping it",
                  self.spec.audience.max_worker_backlog_bytes)  # fmt: skip
        assert link.transport is not None
        link.transport.abort()
        self._lost(link)
        asyncio.get_running_loop().call_later(self.drop_grace_s, _kill_if_alive, link.process)

    def _lost(self, link: _WorkerLink) -> None:
        if link not in self.links:
            return
        self.links.remove(link)
        if self._closing:
            return
        log.warning("audience worker %s left; %d of %d serving",
                    link.process.pid, len(self.links), self.count)  # fmt: skip
        task = asyncio.get_running_loop().create_task(self._replace(), name="audience-respawn")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self) -> None:
        while not self._closing:
            now = time.monotonic()
            while self._restarted_at and now - self._restarted_at[0] > self.restart_window_s:
                self._restarted_at.popleft()
            if len(self._restarted_at) >= self.max_restarts:
                log.error("audience workers restarted %d times in %.0f s; leaving one down",
                          self.max_restarts, self.restart_window_s)  # fmt: skip
                return
            self._restarted_at.append(now)
            await asyncio.sleep(self.restart_delay_s)
            self._reap()
            link: _WorkerLink | None = None
            try:
                link = await self._spawn()
                await asyncio.wait_for(link.ready, self.start_timeout_s)
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

    def stats(self) -> list[ChannelStats]:
        """Every serving worker's last report, added up per channel."""
        merged: dict[str, ChannelStats] = {}
        for link in self.links:
            for c in link.stats.channels:
                merged[c.space_id] = merged[c.space_id].merged(c) if c.space_id in merged else c
        return list(merged.values())

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
            await asyncio.to_thread(proc.join, 5.0)
            if proc.is_alive():
                proc.terminate()


def _kill_if_alive(proc: BaseProcess) -> None:
    if proc.is_alive():
        log.error("audience worker %s is not serving and did not exit; killing it", proc.pid)
        proc.kill()


async def serve_audience(
    server: AudienceServer, sinks: list[FeedSink], host: str, port: int, workers: int
) -> tuple[Callable[[], Awaitable[None]], WorkerPool | None]:
    """Start the audience plane in this process (workers=0) or in worker processes.

    With workers, the feed goes to the pool instead of ``server.apply``. Returns the
    coroutine function that stops it, and the pool if there is one.
    """
    if workers <= 0:
        listener = await server.serve(host, port)
        flusher = asyncio.create_task(server.run_flusher(), name="audience-flusher")

        async def stop_local() -> None:
            flusher.cancel()
            listener.close()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

        return stop_local, None
    spec = WorkerSpec(server.config, server.recordings_dir, host, port)
    pool = WorkerPool(spec, workers, presence=server.presence)
    await pool.start()
    # Replace only the in-process audience; other sinks (if any) keep their place.
    if server.apply in sinks:
        sinks.remove(server.apply)
    sinks.append(pool.publish)
    log.info("%d audience workers serve port %d", workers, pool.port)
    return pool.close, pool
