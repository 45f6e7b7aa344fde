"""The audience server on real sockets (127.0.0.1, port 0), fed a real encoded program.

The program is a 440 Hz tone through the real ``ProgramEncoder``; what the server sends
is decoded with PyAV and the tone found by FFT. Listeners are raw asyncio sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import av
import numpy as np
import pytest
import uvloop

from townhall.audience.channel import Channel, ChannelConfig
from townhall.audience.fanout import FanoutConfig
from townhall.audience.pool import WorkerPool
from townhall.audience.server import (
    IMMUTABLE,
    M3U8,
    AudienceConfig,
    AudienceServer,
    WorkerPoolConfig,
)
from townhall.audience.worker import WorkerSpec
from townhall.feed import ChannelEnded, HlsInit, HlsPart, OggHeader, OggPages
from townhall.media.hls import HlsConfig
from townhall.media.mixer import FRAME_SAMPLES, SAMPLE_RATE_HZ
from townhall.media.ogg import OggPage, parse_pages
from townhall.media.program import ProgramEncoder

pytestmark = pytest.mark.e2e

SPACE = "tone"
TONE_HZ = 440.0
HOST = "127.0.0.1"


# -- the program -------------------------------------------------------------------------
@dataclass
class Program:
    header: bytes
    pages: list[OggPage] = field(default_factory=list)
    init: bytes = b""
    parts: list[tuple[bytes, float]] = field(default_factory=list)


def encode_tone(seconds: float) -> Program:
    encoder = ProgramEncoder()
    pages: list[OggPage] = []
    parts: list[tuple[bytes, float]] = []
    for i in range(int(seconds * SAMPLE_RATE_HZ / FRAME_SAMPLES)):
        n = np.arange(i * FRAME_SAMPLES, (i + 1) * FRAME_SAMPLES)
        pcm = (8000 * np.sin(2 * np.pi * TONE_HZ * n / SAMPLE_RATE_HZ)).astype(np.int16)
        out = encoder.encode(pcm)
        pages += out.ogg_pages
        parts += [(f.data, f.sample_count * FRAME_SAMPLES / SAMPLE_RATE_HZ) for f in out.fragments]
    assert encoder.init_segment is not None
    return Program(encoder.ogg_header, pages, encoder.init_segment, parts)


@pytest.fixture(scope="module")
def program() -> Program:
    return encode_tone(60.0)


def dominant_hz(container: bytes, fmt: str) -> float:
    with av.open(io.BytesIO(container), mode="r", format=fmt) as media:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in media.decode(audio=0)])
    pcm = pcm[len(pcm) // 10 :]  # past the codec's start-up
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * SAMPLE_RATE_HZ / len(pcm))


# -- HTTP plumbing -----------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def fetch(port: int, path: str) -> Response:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    return Response(int(status_line.split()[1]), headers, body)


@dataclass
class Running:
    server: AudienceServer
    port: int

    @property
    def channel(self) -> Channel:
        return self.server.channels[SPACE]


def run(scenario: Coroutine[Any, Any, None]) -> None:
    uvloop.run(scenario)  # the loop `townhall serve` runs on


@contextlib.asynccontextmanager
async def serving(config: AudienceConfig) -> AsyncIterator[Running]:
    server = AudienceServer(config)
    listener = await server.open(HOST, 0)
    yield Running(server, listener.sockets[0].getsockname()[1])
    await server.close()
    for conn in [*server.connections, *server.streams]:
        if conn.transport is not None:
            conn.transport.abort()


# -- Ogg push: normal and stalled listeners ---------------------------------------------------
class OggListener(asyncio.Protocol):
    """Reads the stream; notes how late each page arrives after it was published."""

    def __init__(self, published: dict[int, float], keep: bool) -> None:
        self.published = published
        self.keep = keep
        self.raw = bytearray()
        self.lateness: list[float] = []
        self._head = b""
        self._tail = b""
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(f"GET /live/{SPACE}.ogg HTTP/1.1\r\nHost: t\r\n\r\n".encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if b"\r\n\r\n" not in self._head:
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            self._head, _, data = self._head.partition(b"\r\n\r\n")
            self._head += b"\r\n\r\n"
        if self.keep:
            self.raw += data
        pages, self._tail = parse_pages(self._tail + data)
        for page in pages:
            if page.granule in self.published:
                self.lateness.append(now - self.published[page.granule])

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)


def listener_factory(keep_bytes: bool) -> Callable[[], OggListener]:
    return lambda: OggListener({}, keep_bytes)


async def stalled_listener(port: int) -> socket.socket:
    """Connects and asks for the stream, then never reads: a tiny receive window."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (HOST, port))
    await loop.sock_sendall(sock, f"GET /live/{SPACE}.ogg HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return sock


async def drained_to_end(sock: socket.socket, timeout_s: float) -> bool:
    """True if the server closed this socket: reading it reaches EOF or a reset."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 1.0)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        if not data:
            return True
    return False


STALL_CUTOFF_S = 2.0
SPEED = 4.0  # the program is published this much faster than real time


async def publish_pages(
    server: AudienceServer, pages: list[OggPage], published: dict[int, float]
) -> None:
    """Pages at SPEED x real time, each stamped with when it was published."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    audio_s = 0.0
    for page in pages:
        await asyncio.sleep(max(0.0, started + audio_s / SPEED - loop.time()))
        now = time.monotonic()
        published[page.granule] = now
        server.publish(OggPages(SPACE, page.data, now))
        audio_s += 0.2


def test_stalled_listeners_are_cut_off_and_never_delay_the_others(program: Program) -> None:
    fanout = FanoutConfig(stall_cutoff_s=STALL_CUTOFF_S, max_listener_buffer_bytes=16 * 1024)
    config = AudienceConfig(channel=ChannelConfig(fanout=fanout), stream_sndbuf_bytes=8 * 1024)
    run(stalled_scenario(config, program))


async def stalled_scenario(config: AudienceConfig, program: Program) -> None:
    async with serving(config) as ogg_server:
        await stalled_listeners_meet_normal_ones(ogg_server, program)


async def stalled_listeners_meet_normal_ones(ogg_server: Running, program: Program) -> None:
    server, port = ogg_server.server, ogg_server.port
    server.publish(OggHeader(SPACE, program.header))
    published: dict[int, float] = {}
    warmup = asyncio.create_task(publish_pages(server, program.pages[:5], published))
    loop = asyncio.get_running_loop()
    normal = []
    for i in range(1000):
        keep_bytes = i == 0  # one listener keeps what it got, for the FFT
        _, proto = await loop.create_connection(listener_factory(keep_bytes), HOST, port)
        normal.append(proto)
    stalled = [await stalled_listener(port) for _ in range(100)]
    await warmup
    while len(ogg_server.channel.ogg.subscribers) < 1100:
        await asyncio.sleep(0.01)
    for proto in normal:
        proto.published = published  # measure from here on, not the join burst
    feeding = asyncio.create_task(publish_pages(server, program.pages[5:], published))
    cut_at, over_for, peak_buffered = await watch_cutoff(ogg_server, expect=1000, timeout_s=25.0)
    await asyncio.sleep(1.0)
    feeding.cancel()

    late = np.array([x for p in normal for x in p.lateness])
    p99_ms = float(np.percentile(late, 99) * 1e3)
    p50_ms = float(np.percentile(late, 50) * 1e3)
    print(
        f"\n1000 listeners: {len(late)} pages, lateness p50 {p50_ms:.0f} ms, p99 {p99_ms:.0f} ms,"
        f" max {late.max() * 1e3:.0f} ms; 100 stalled cut off {cut_at:.1f} s after feeding"
        f" began, {over_for:.2f} s after the last went over its bound;"
        f" peak server buffers {peak_buffered / 1024:.0f} KiB"
    )
    assert p99_ms < 500
    assert STALL_CUTOFF_S <= over_for < STALL_CUTOFF_S + 0.5
    assert all(len(p.lateness) > 20 and not p.closed.done() for p in normal)
    assert (
        set(ogg_server.channel.ogg.subscribers) and len(ogg_server.channel.ogg.subscribers) == 1000
    )
    # Memory: every server-side buffer stays near the per-listener bound.
    assert peak_buffered < 1100 * (16 * 1024 + 8 * 1024)
    ends = await asyncio.gather(*(drained_to_end(s, 10.0) for s in stalled))
    assert all(ends), f"{ends.count(False)} stalled sockets were never closed by the server"
    for s in stalled:
        s.close()
    assert abs(dominant_hz(program.header + bytes(normal[0].raw), "ogg") - TONE_HZ) < 5


async def watch_cutoff(running: Running, expect: int, timeout_s: float) -> tuple[float, float, int]:
    """Wait until only ``expect`` subscribers remain. Returns when (from now), how long
    after the last of the cut ones went over its buffer bound, and the peak buffers."""
    started = time.monotonic()
    peak = 0
    over_since: dict[int, float] = {}
    while time.monotonic() - started < timeout_s:
        for key, sub in running.channel.ogg.subscribers.items():
            if sub.over_since is not None:
                over_since[key] = sub.over_since
        buffered = sum(
            c.transport.get_write_buffer_size()
            for c in running.server.streams
            if c.transport is not None and not c.transport.is_closing()
        )
        peak = max(peak, buffered)
        if len(running.channel.ogg.subscribers) <= expect:
            now = time.monotonic()
            cut = set(over_since) - set(running.channel.ogg.subscribers)
            return now - started, now - max(over_since[k] for k in cut), peak
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(running.channel.ogg.subscribers)} subscribers left, not {expect}")


# -- LL-HLS: blocking reload and request collapsing --------------------------------------------
def hls_config() -> AudienceConfig:
    hls = HlsConfig(part_target_s=0.5, parts_per_segment=4)
    return AudienceConfig(channel=ChannelConfig(hls=hls))


def feed_parts(server: AudienceServer, program: Program, first: int, count: int) -> None:
    for data, duration_s in program.parts[first : first + count]:
        server.publish(HlsPart(SPACE, data, duration_s, time.time()))


def test_blocking_reload_answers_as_soon_as_the_part_exists(program: Program) -> None:
    run(blocking_reload_scenario(program))


async def blocking_reload_scenario(program: Program) -> None:
    async with serving(hls_config()) as running:
        running.server.publish(HlsInit(SPACE, program.init))
        feed_parts(running.server, program, 0, 6)
        msn, part = running.channel.hls.next_part
        assert (msn, part) == (1, 2)
        path = f"/live/{SPACE}/index.m3u8?_HLS_msn={msn}&_HLS_part={part}"
        request = asyncio.create_task(fetch(running.port, path))
        await asyncio.sleep(0.3)
        assert not request.done(), "answered before the part existed"
        feed_parts(running.server, program, 6, 1)
        applied_at = time.monotonic()
        reply = await request
        waited_ms = (time.monotonic() - applied_at) * 1e3
        print(f"\nblocking reload answered {waited_ms:.1f} ms after the part was applied")
        assert waited_ms < 100
        assert reply.status == 200 and reply.headers["content-type"] == M3U8
        assert f'URI="p{msn}.{part}.m4s"' in reply.body.decode()
        assert "max-age" in reply.headers["cache-control"]
        plain = await fetch(running.port, f"/live/{SPACE}/index.m3u8")
        assert plain.headers["cache-control"] == "public, max-age=1"  # about one part
        too_far = await fetch(running.port, f"/live/{SPACE}/index.m3u8?_HLS_msn=9")
        assert too_far.status == 400
        never = await fetch(running.port, f"/live/{SPACE}/p1.9.m4s")
        assert never.status == 404  # past the segment's last part: not held open


def test_waiters_for_a_preload_hinted_part_share_one_build(program: Program) -> None:
    run(collapsed_part_scenario(program))


async def collapsed_part_scenario(program: Program) -> None:
    async with serving(hls_config()) as running:
        server = running.server
        server.publish(HlsInit(SPACE, program.init))
        feed_parts(server, program, 0, 8)
        msn, part = running.channel.hls.next_part
        hinted = f"p{msn}.{part}.m4s"
        assert f'PRELOAD-HINT:TYPE=PART,URI="{hinted}"' in running.channel.hls.playlist().decode()
        waiters = [
            asyncio.create_task(fetch(running.port, f"/live/{SPACE}/{hinted}")) for _ in range(500)
        ]
        while running.channel.waiting < 500:
            await asyncio.sleep(0.01)
        builds_before = server.builds
        feed_parts(server, program, 8, 1)
        replies = await asyncio.gather(*waiters)
        assert server.builds == builds_before + 1  # one response built for all 500
        assert all(r.status == 200 for r in replies)
        assert len({r.body for r in replies}) == 1
        assert replies[0].body == program.parts[8][0]
        assert replies[0].headers["cache-control"] == IMMUTABLE
        served = [await fetch(running.port, f"/live/{SPACE}/{uri}")
                  for uri in ("init.mp4", "s0.m4s", "s1.m4s")]  # fmt: skip
        assert all(r.headers["cache-control"] == IMMUTABLE for r in served)
        media = b"".join(r.body for r in served) + replies[0].body
        assert abs(dominant_hz(media, "mp4") - TONE_HZ) < 5


# -- audience workers: two processes, one port --------------------------------------------------
def test_two_workers_serve_one_port(program: Program) -> None:
    run(workers_scenario(program))


async def workers_scenario(program: Program) -> None:
    presence = SeenSessions()
    pool = WorkerPool(WorkerSpec(AudienceConfig(), None, HOST, 0), count=2, presence=presence)
    await pool.start()
    try:
        pool.publish(OggHeader(SPACE, program.header))
        feeding = asyncio.create_task(publish_via(pool, program.pages))
        pids = {json.loads((await fetch(pool.port, "/healthz")).body)["pid"] for _ in range(32)}
        assert len(pids) == 2, "both worker processes answer on the shared port"
        loop = asyncio.get_running_loop()
        listeners = []
        for _ in range(16):
            _, proto = await loop.create_connection(lambda: OggListener({}, True), HOST, pool.port)
            listeners.append(proto)
        await asyncio.sleep(2.0)
        feeding.cancel()
        assert all(len(p.raw) > 2_000 for p in listeners)
        # Every worker's listeners are counted in the main process, each one once: an
        # unnamed stream is its own session, whichever worker holds it.
        assert len(set(presence.opened)) == len(set(presence.stream_sessions)) == 16
        # The workers' reports add up in the main process, for /metrics.
        await until(lambda: ogg_listeners(pool) == 16, timeout_s=5.0)
        for proto in listeners:
            assert abs(dominant_hz(program.header + bytes(proto.raw), "ogg") - TONE_HZ) < 5
    finally:
        await pool.close()
    assert all(not proc.is_alive() for proc in pool.processes)


def ogg_listeners(pool: WorkerPool) -> int:
    return sum(c.ogg_listeners for c in pool.stats().channels)


async def publish_via(pool: WorkerPool, pages: list[OggPage]) -> None:
    for page in pages:
        pool.publish(OggPages(SPACE, page.data, time.monotonic()))
        await asyncio.sleep(0.2 / SPEED)


def test_a_worker_that_falls_behind_is_dropped_without_stalling_the_stage(
    program: Program,
) -> None:
    run(stuck_worker_scenario(program))


async def stuck_worker_scenario(program: Program) -> None:
    config = AudienceConfig(
        max_worker_backlog_bytes=256 * 1024, workers=WorkerPoolConfig(drop_grace_s=0.5)
    )
    pool = WorkerPool(WorkerSpec(config, None, HOST, 0), count=1)
    await pool.start()
    (proc,) = pool.processes
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGSTOP)  # a worker that stops reading its feed
    try:
        slowest = 0.0
        for page in program.pages * 20:  # several MB, far past the backlog bound
            started = time.perf_counter()
            pool.publish(OggPages(SPACE, page.data, time.monotonic()))
            slowest = max(slowest, time.perf_counter() - started)
            await asyncio.sleep(0)
        assert pool.dropped == 1 and proc not in [link.process for link in pool.links]
        # A blocking write to a stopped reader would hang for good; any finite bound
        # proves the stage never waits. Generous, so a noisy machine cannot flake it.
        assert slowest < 1.0
        # The hung process is killed (it would keep taking newcomers on the shared
        # port) and a fresh worker takes its place.
        await until(lambda: pool.restarts == 1 and not proc.is_alive(), timeout_s=20.0)
        assert proc.exitcode == -signal.SIGKILL
        health = json.loads((await fetch(pool.port, "/healthz")).body)
        assert health["pid"] == pool.links[0].process.pid != proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        await pool.close()


async def until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_a_worker_that_dies_is_replaced_and_serves_the_live_channel_at_once(
    program: Program,
) -> None:
    run(replaced_worker_scenario(program))


async def replaced_worker_scenario(program: Program) -> None:
    config = replace(hls_config(), workers=WorkerPoolConfig(restart_delay_s=0.1))
    pool = WorkerPool(WorkerSpec(config, None, HOST, 0), count=1)
    await pool.start()
    feeding = asyncio.create_task(publish_program_via(pool, program))
    try:
        # Past the feed log's LL-HLS window (36 parts here), so the replacement's replay
        # starts mid-stream and must number its parts from their seq.
        await until(lambda: parts_published(pool) > 40, timeout_s=20.0)
        (first,) = pool.links
        assert first.process.pid is not None
        os.kill(first.process.pid, signal.SIGKILL)  # a crash, or the OOM killer
        await until(lambda: pool.restarts == 1, timeout_s=20.0)
        (second,) = pool.links
        assert second.process.pid != first.process.pid
        # A newcomer on the replacement hears the program at once: header, burst, live.
        loop = asyncio.get_running_loop()
        _, listener = await loop.create_connection(lambda: OggListener({}, True), HOST, pool.port)
        await asyncio.sleep(1.5)
        feeding.cancel()
        assert abs(dominant_hz(bytes(listener.raw), "ogg") - TONE_HZ) < 5
        # LL-HLS numbering goes on where the lost worker's was: the preload hint names
        # the part after the last one published, as it would on a worker that saw all.
        msn, index = divmod(parts_published(pool), config.channel.hls.parts_per_segment)
        playlist = (await fetch(pool.port, f"/live/{SPACE}/index.m3u8")).body.decode()
        assert f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p{msn}.{index}.m4s"' in playlist
        media = b"".join([(await fetch(pool.port, f"/live/{SPACE}/{uri}")).body
                          for uri in ("init.mp4", f"s{msn - 1}.m4s")])  # fmt: skip
        assert abs(dominant_hz(media, "mp4") - TONE_HZ) < 5
    finally:
        feeding.cancel()
        await pool.close()


def parts_published(pool: WorkerPool) -> int:
    seqs = [m.seq for m in pool.feed_log.replay() if isinstance(m, HlsPart) and m.seq is not None]
    return max(seqs, default=-1) + 1


async def publish_program_via(pool: WorkerPool, program: Program) -> None:
    """Ogg pages and LL-HLS parts at SPEED x real time, parts numbered as the stage does."""
    pool.publish(OggHeader(SPACE, program.header))
    pool.publish(HlsInit(SPACE, program.init))
    parts = iter(enumerate(program.parts))
    for i, page in enumerate(program.pages):
        pool.publish(OggPages(SPACE, page.data, time.monotonic()))
        if i % 2 == 1:  # a 0.2 s page, a 0.4-0.5 s part: about one part per two pages
            seq, (data, duration_s) = next(parts)
            pool.publish(HlsPart(SPACE, data, duration_s, time.time(), seq))
        await asyncio.sleep(0.2 / SPEED)


# -- ended channels ------------------------------------------------------------------------
def test_an_ended_channel_is_served_for_a_grace_period_then_dropped(program: Program) -> None:
    run(ended_channel_scenario(program))


async def ended_channel_scenario(program: Program) -> None:
    async with serving(AudienceConfig(ended_grace_s=30.0)) as running:
        server = running.server
        server.publish(HlsInit(SPACE, program.init))
        feed_parts(server, program, 0, 6)
        server.publish(ChannelEnded(SPACE, time.time()))
        final = await fetch(running.port, f"/live/{SPACE}/index.m3u8")
        assert final.status == 200 and final.body.decode().endswith("#EXT-X-ENDLIST\n")
        assert (await fetch(running.port, f"/live/{SPACE}/s1.m4s")).status == 200
        server.drop_ended(time.monotonic() + 29.0)
        assert SPACE in server.channels
        server.drop_ended(time.monotonic() + 30.0)
        assert SPACE not in server.channels and not server._cache
        assert (await fetch(running.port, f"/live/{SPACE}/index.m3u8")).status == 404


# -- the plain playlist fast path ------------------------------------------------------
@dataclass
class SeenSessions:
    """A presence sink that records what the audience port reports (a real fake)."""

    sessions: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    stream_sessions: list[str] = field(default_factory=list)

    def stream_opened(self, space_id: str, session_id: str, conn_id: str) -> None:
        self.opened.append(conn_id)
        self.stream_sessions.append(session_id)

    def stream_closed(self, space_id: str, session_id: str, conn_id: str, ended: bool) -> None:
        pass

    def seen(self, space_id: str, session_id: str) -> None:
        self.sessions.append(session_id)


def test_a_plain_playlist_is_fresh_after_every_part_and_every_poll_counts(
    program: Program,
) -> None:
    run(plain_playlist_scenario(program))


async def plain_playlist_scenario(program: Program) -> None:
    async with serving(AudienceConfig()) as running:
        server, presence = running.server, SeenSessions()
        server.presence = presence
        server.publish(HlsInit(SPACE, program.init))
        feed_parts(server, program, 0, 2)
        path = f"/live/{SPACE}/index.m3u8"
        first, again = await fetch(running.port, path), await fetch(running.port, path)
        builds = server.builds
        feed_parts(server, program, 2, 1)
        fresh = await fetch(running.port, path)
    assert first.body == again.body and 'URI="p0.1.m4s"' in first.body.decode()
    assert 'URI="p0.2.m4s"' in fresh.body.decode(), "a cached playlist outlived its part"
    assert server.builds == builds + 1
    # Three polls from one client: three reports of the same (address, agent) session.
    assert len(presence.sessions) == 3 and len(set(presence.sessions)) == 1


# -- slow and idle clients ---------------------------------------------------------------
def test_slowloris_and_idle_keepalive_sockets_are_closed(program: Program) -> None:
    run(slow_clients_scenario(program))


async def slow_clients_scenario(program: Program) -> None:
    config = AudienceConfig(head_timeout_s=0.5, idle_timeout_s=0.8)
    async with serving(config) as running:
        running.server.publish(HlsInit(SPACE, program.init))
        feed_parts(running.server, program, 0, 2)
        slow_r, slow_w = await asyncio.open_connection(HOST, running.port)
        idle_r, idle_w = await asyncio.open_connection(HOST, running.port)
        idle_w.write(f"GET /live/{SPACE}/init.mp4 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert (await idle_r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        for byte in b"GET /live/":  # a head that trickles in, a byte every 0.2 s
            if slow_w.is_closing() or slow_r.at_eof():
                break
            slow_w.write(bytes([byte]))
            await asyncio.sleep(0.2)
        assert await closed_within(slow_r, 3.0)
        slow_after = time.monotonic() - started
        assert await closed_within(idle_r, 3.0)  # once idle too long (after the body)
        idle_after = time.monotonic() - started
    assert slow_after < 2.5, slow_after
    assert idle_after < 3.0, idle_after


async def closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """True once the server has closed the socket: an EOF, or a reset when it closed
    with our bytes unread. A socket still open after ``timeout_s`` raises TimeoutError."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass  # a response body may come first
    except ConnectionError:
        pass
    return True
