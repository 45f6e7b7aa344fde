"""The audience server on real sockets (127.0.0.1, port 0), fed a real encoded program.

The program is a 440 Hz tone through the real ``ProgramEncoder``; what the server sends
is decoded with PyAV and the tone found by FFT. Listeners are raw asyncio sockets.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import av
import numpy as np
import pytest
import uvloop

from townhall.audience.channel import Channel, ChannelConfig
from townhall.audience.fanout import FanoutConfig
from townhall.audience.feed import HlsInit, HlsPart, OggHeader, OggPages
from townhall.audience.server import AudienceConfig, AudienceServer
from townhall.audience.workers import WorkerPool, WorkerSpec
from townhall.media.hls import HlsConfig
from townhall.media.mixer import FRAME_SAMPLES, SAMPLE_RATE_HZ
from townhall.media.ogg import OggPage, parse_pages
from townhall.media.program import ProgramEncoder

pytestmark = pytest.mark.e2e

SPACE = "tone"
TONE_HZ = 440.0
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()  # the loop `townhall serve` runs on


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
        parts += [(f.data, f.sample_count / SAMPLE_RATE_HZ) for f in out.fragments]
    assert encoder.init_segment is not None
    return Program(encoder.ogg_header, pages, encoder.init_segment, parts)


@pytest.fixture(scope="module")
def program() -> Program:
    return encode_tone(60.0)


def dominant_hz(container: bytes, fmt: str) -> float:
    with av.open(io.BytesIO(container), format=fmt) as media:
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


async def start(config: AudienceConfig) -> AsyncIterator[Running]:
    server = AudienceServer(config)
    listener = await server.serve(HOST, 0)
    flusher = asyncio.create_task(server.run_flusher())
    yield Running(server, listener.sockets[0].getsockname()[1])
    flusher.cancel()
    listener.close()
    for conn in list(server.connections):
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


@pytest.fixture
async def ogg_server() -> AsyncIterator[Running]:
    fanout = FanoutConfig(stall_cutoff_s=STALL_CUTOFF_S, max_listener_buffer_bytes=16 * 1024)
    config = AudienceConfig(channel=ChannelConfig(fanout=fanout), stream_sndbuf_bytes=8 * 1024)
    async for running in start(config):
        yield running


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
        server.apply(OggPages(SPACE, page.data, now))
        audio_s += 0.2


async def test_stalled_listeners_are_cut_off_and_never_delay_the_others(
    ogg_server: Running, program: Program
) -> None:
    server, port = ogg_server.server, ogg_server.port
    server.apply(OggHeader(SPACE, program.header))
    published: dict[int, float] = {}
    warmup = asyncio.create_task(publish_pages(server, program.pages[:5], published))
    loop = asyncio.get_running_loop()
    normal = []
    for i in range(1000):
        _, proto = await loop.create_connection(lambda i=i: OggListener({}, i == 0), HOST, port)
        normal.append(proto)
    stalled = [await stalled_listener(port) for _ in range(100)]
    await warmup
    while len(ogg_server.channel.ogg.subscribers) < 1100:
        await asyncio.sleep(0.01)
    for proto in normal:
        proto.published = published  # measure from here on, not the join burst
    feeding = asyncio.create_task(publish_pages(server, program.pages[5:], published))
    cut_at, peak_buffered = await watch_cutoff(ogg_server, expect=1000, timeout_s=25.0)
    await asyncio.sleep(1.0)
    feeding.cancel()

    late = np.array([x for p in normal for x in p.lateness])
    p99_ms = float(np.percentile(late, 99) * 1e3)
    print(f"\n1000 listeners: {len(late)} pages, lateness p50 "
          f"{np.percentile(late, 50) * 1e3:.0f} ms, p99 {p99_ms:.0f} ms, max {late.max() * 1e3:.0f} "
          f"ms; 100 stalled cut off {cut_at:.1f} s after feeding began; peak server "
          f"buffers {peak_buffered / 1024:.0f} KiB")  # fmt: skip
    assert p99_ms < 500
    assert all(len(p.lateness) > 20 and not p.closed.done() for p in normal)
    assert set(ogg_server.channel.ogg.subscribers) and len(ogg_server.channel.ogg.subscribers) == 1000
    # Memory: every server-side buffer stays near the per-listener bound.
    assert peak_buffered < 1100 * (16 * 1024 + 8 * 1024)
    ends = await asyncio.gather(*(drained_to_end(s, 10.0) for s in stalled))
    assert all(ends), f"{ends.count(False)} stalled sockets were never closed by the server"
    for s in stalled:
        s.close()
    assert abs(dominant_hz(program.header + bytes(normal[0].raw), "ogg") - TONE_HZ) < 5


async def watch_cutoff(running: Running, expect: int, timeout_s: float) -> tuple[float, int]:
    """Wait until only ``expect`` subscribers remain; return when, and the peak buffers."""
    started = time.monotonic()
    peak = 0
    while time.monotonic() - started < timeout_s:
        buffered = sum(
            c.transport.get_write_buffer_size()
            for c in running.server.connections
            if c.transport is not None and not c.transport.is_closing()
        )
        peak = max(peak, buffered)
        if len(running.channel.ogg.subscribers) <= expect:
            return time.monotonic() - started, peak
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(running.channel.ogg.subscribers)} subscribers left, not {expect}")
