"""An audience worker process: one of several serving the audience port.

The main process feeds it the stage's messages over a unix socket (see framing.py); it
applies them to its own ``AudienceServer``, exactly as the main process does with no
workers, serves its share of the port's connections (SO_REUSEPORT), and reports its
listeners and its fan-out state back. When the main process closes the socket (it
exits, or dropped this worker for falling behind), the worker ends its listeners and
exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop

from townhall.audience.framing import (
    FrameDecoder,
    PresenceReport,
    SessionSeen,
    StreamClosed,
    StreamOpened,
    WorkerReady,
    WorkerStats,
    encode_frame,
)
from townhall.audience.server import AudienceConfig, AudienceServer
from townhall.feed import FeedSink
from townhall.gcpolicy import freeze_startup_heap
from townhall.sessions import SessionSigner
from townhall.supervise.child import LOG_FORMAT
from townhall.supervise.messages import ResyncPresence


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; picklable, sent once at spawn."""

    audience: AudienceConfig
    recordings_dir: Path | None
    host: str
    port: int
    # Checks listeners' signed session ids (``townhall.sessions.session_key``); empty:
    # none verifies, every listener counts as anonymous.
    session_key: bytes = b""


class PresenceRelay:
    """ListenerPresence in a worker: reports go back to the main process, framed.

    Connection ids get the worker's pid so two workers' connections never collide.
    A session's polls are sent at most once per ``seen_every_s``; reports are written
    together once per ``batch_s`` (see ``WorkerPoolConfig``).
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        pid: int,
        seen_every_s: float,
        batch_s: float,
        call_later: Callable[[float, Callable[[], None]], object] | None = None,
        max_seen_sessions: int = 100_000,
        max_batch_messages: int = 4_096,
    ) -> None:
        self._transport = transport
        self._pid = pid
        self._seen_every_s = seen_every_s
        self._seen_recently: set[tuple[str, str]] = set()
        self._seen_since = time.monotonic()
        self._batch_s = batch_s
        self._call_later = call_later
        self._pending: list[bytes] = []
        self._max_seen_sessions = max_seen_sessions
        self._max_batch_messages = max_batch_messages
        # Every open stream, so a restarted control process can be told of them again
        # (``resync``); as bounded as the connections this worker holds.
        self._open: dict[str, StreamOpened] = {}

    def stream_opened(self, space_id: str, session_id: str, conn_id: str) -> None:
        report = StreamOpened(space_id, session_id, f"{self._pid}:{conn_id}")
        self._open[report.conn_id] = report
        self._send(report)

    def stream_closed(
        self, space_id: str, session_id: str, conn_id: str, session_ended: bool
    ) -> None:
        report = StreamClosed(space_id, session_id, f"{self._pid}:{conn_id}", session_ended)
        self._open.pop(report.conn_id, None)
        self._send(report)

    def resync(self) -> None:
        """Report every open stream again: the counters that had them were restarted."""
        for report in list(self._open.values()):
            self._send(report)

    def seen(self, space_id: str, session_id: str) -> None:
        now = time.monotonic()
        if (
            now - self._seen_since >= self._seen_every_s
            or len(self._seen_recently) >= self._max_seen_sessions
        ):
            self._seen_recently.clear()  # bounded: one period's sessions at most
            self._seen_since = now
        if (space_id, session_id) not in self._seen_recently:
            self._seen_recently.add((space_id, session_id))
            self._send(SessionSeen(space_id, session_id))

    def _send(self, report: PresenceReport) -> None:
        self._pending.append(encode_frame(report))
        if self._batch_s <= 0 or len(self._pending) >= self._max_batch_messages:
            self.flush()
        elif len(self._pending) == 1:  # the first of a batch schedules its write
            later = self._call_later or asyncio.get_running_loop().call_later
            later(self._batch_s, self.flush)

    def flush(self) -> None:
        batch, self._pending = b"".join(self._pending), []
        if batch and not self._transport.is_closing():
            self._transport.write(batch)


class _FeedReader(asyncio.Protocol):
    def __init__(
        self,
        sink: FeedSink,
        closed: asyncio.Future[None],
        max_frame_bytes: int,
    ) -> None:
        self._sink = sink
        self._closed = closed
        self._decoder = FrameDecoder(max_frame_bytes)
        self.relay: PresenceRelay | None = None

    def data_received(self, data: bytes) -> None:
        for msg in self._decoder.feed(data):
            if isinstance(msg, ResyncPresence):
                if self.relay is not None:
                    self.relay.resync()
            else:
                self._sink.publish(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


def run_audience_worker(spec: WorkerSpec, feed: socket.socket) -> None:
    """Entry point of an audience worker process."""
    # A spawned interpreter has no logging set up: without this, the worker's start-up
    # line (its connection caps) would be lost.
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # Absolute, as the supervisor sets its other children: a replacement gets the same.
    with contextlib.suppress(OSError):  # not allowed here: keep the parent's priority
        os.setpriority(os.PRIO_PROCESS, 0, spec.audience.worker_nice)
    uvloop.run(_serve(spec, feed))


async def _serve(spec: WorkerSpec, feed: socket.socket) -> None:
    config = spec.audience.workers
    server = AudienceServer(spec.audience, spec.recordings_dir)
    if spec.session_key:
        server.sessions = SessionSigner(spec.session_key)
    await server.open(spec.host, spec.port, reuse_port=True)
    freeze_startup_heap()
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()
    feed.setblocking(False)
    transport, reader = await loop.create_unix_connection(
        lambda: _FeedReader(server, closed, config.max_frame_bytes), sock=feed
    )
    relay = PresenceRelay(
        transport,
        os.getpid(),
        config.presence_seen_every_s,
        config.presence_batch_s,
        max_seen_sessions=config.max_presence_seen_sessions,
        max_batch_messages=config.max_presence_batch_messages,
    )
    server.presence = reader.relay = relay
    transport.write(encode_frame(WorkerReady()))
    reporter = asyncio.create_task(
        _report_stats(server, transport, config.stats_every_s), name="worker-stats"
    )
    await closed  # the main process went away or dropped us
    reporter.cancel()
    await server.close()
    for channel in server.channels.values():
        channel.ogg.close_all()
        channel.events.close_all()


async def _report_stats(
    server: AudienceServer, transport: asyncio.Transport, every_s: float
) -> None:
    while not transport.is_closing():
        await asyncio.sleep(every_s)
        stats = WorkerStats(tuple(server.channel_stats()), server.loop_lag_s)
        transport.write(encode_frame(stats))
