"""A live Ogg listener that knows what it heard and when: the fault benchmark's ears.

A probe holds one ``GET /live/{space}.ogg`` open, splits the stream into Ogg pages and
Opus packets, decodes every packet and keeps, per 20 ms frame, when it arrived (monotonic
clock of this process), where it sits in media time (the page's granule position), and
which of the configured tones it carries (by a DFT at each frequency). A restarted stage
starts a new logical stream (a new serial with its own OpusHead: a chained Ogg stream,
RFC 3533 section 4), so the decoder is made afresh on every beginning-of-stream page.

A dropped connection is counted and retried on the clients' schedule (no wait, then
0.3, 1.2, 2.7, 4.8 and 7 s, each plus a random share of a second), so what the probe
measures after a fault is what a real player would hear.

Three layers, the first two pure and tested with bytes from ``ProgramEncoder``:

* ``OggPacketReader``: bytes in any slicing → ``StreamBegan`` / ``PacketRead`` events;
* ``FrameLog``: the frames heard and the connections made and lost, and the questions
  the benchmark asks of them ("first frame with both tones after the kill", "windows
  lost between t0 and t1", "longest gap");
* ``OggProbe``: the thread with the socket, the decoder and the reconnects.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext

from benchmarks.harness.audio import SAMPLE_RATE_HZ, TONE_MIN, WINDOW_SAMPLES
from townhall.media.ogg import parse_pages

FRAME_S = 0.020
# Ogg page header (RFC 3533 section 6): flags at byte 5, serial at 14..18.
_FLAG_CONTINUED, _FLAG_BOS = 0x01, 0x02
_SERIAL = struct.Struct("<I")
# The clients' reconnect schedule (LiveKit's), each delay plus up to RECONNECT_JITTER_S.
RECONNECT_SCHEDULE_S = (0.0, 0.3, 1.2, 2.7, 4.8, 7.0)
RECONNECT_JITTER_S = 1.0
READ_TIMEOUT_S = 10.0  # no byte for this long: the connection is dead
CONNECT_TIMEOUT_S = 3.0
READ_CHUNK_BYTES = 65_536
HEAD_MAX_BYTES = 16_384
FRAMES_KEPT = 200_000  # about 67 minutes of 20 ms frames
# Frames arrive in bursts, one per write to the listener (0.2 s by default, growing under
# load): a stretch without arrivals shorter than this is rhythm, not loss.
EDGE_SLACK_S = 0.6


# -- pages to packets (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class StreamBegan:
    """A beginning-of-stream page: a new logical stream (the first, or a chained one)."""

    serial: int
    opus_head: bytes


@dataclass(frozen=True)
class PacketRead:
    """One audio packet of the current stream.

    ``page_granule`` is the granule position of the page the packet ends on (samples at
    48 kHz from the stream's start, RFC 7845 section 4) and ``later_on_page`` the packets
    that end after it on that page: the packet ends ``page_granule`` minus their length.
    """

    serial: int
    data: bytes
    page_granule: int
    later_on_page: tuple[bytes, ...]


OggEvent = StreamBegan | PacketRead


class OggPacketReader:
    """Ogg bytes in any slicing → stream starts and audio packets, in order.

    Packets that span pages are joined; a packet whose start was never seen (the stream
    was joined on a continuation page) is dropped. OpusTags, the second header packet, is
    skipped. Raises ValueError on bytes that are not Ogg.
    """

    def __init__(self) -> None:
        self._tail = b""
        self._partial = b""
        self._serial: int | None = None
        self._headers_left = 0

    def feed(self, data: bytes) -> list[OggEvent]:
        pages, self._tail = parse_pages(self._tail + data)
        events: list[OggEvent] = []
        for page in pages:
            events += self._page(page.data, page.granule)
        return events

    def _page(self, raw: bytes, granule: int) -> list[OggEvent]:
        flags, serial, nseg = raw[5], _SERIAL.unpack_from(raw, 14)[0], raw[26]
        if flags & _FLAG_BOS:
            self._serial, self._partial, self._headers_left = serial, b"", 2
        if serial != self._serial:
            return []  # a stream we did not see begin
        if flags & _FLAG_CONTINUED == 0:
            self._partial = b""  # whatever was pending never finished
        packets, pos, lacing = [], 27 + nseg, raw[27 : 27 + nseg]
        first_is_tail = bool(flags & _FLAG_CONTINUED) and not self._partial
        for value in lacing:
            self._partial += raw[pos : pos + value]
            pos += value
            if value < 255:
                if first_is_tail:
                    first_is_tail = False  # the rest of a packet we never saw start
                else:
                    packets.append(self._partial)
                self._partial = b""
        return self._packets(serial, packets, granule)

    def _packets(self, serial: int, packets: list[bytes], granule: int) -> list[OggEvent]:
        events: list[OggEvent] = []
        for i, packet in enumerate(packets):
            if self._headers_left:
                self._headers_left -= 1
                if packet.startswith(b"OpusHead"):
                    events.append(StreamBegan(serial, packet))
                continue
            events.append(PacketRead(serial, packet, granule, tuple(packets[i + 1 :])))
        return events


_FRAME_SAMPLES_BY_CONFIG = (
    [480, 960, 1920, 2880] * 3  # SILK NB, MB, WB: 10, 20, 40, 60 ms
    + [480, 960] * 2  # hybrid SWB, FB: 10, 20 ms
    + [120, 240, 480, 960] * 4  # CELT NB..FB: 2.5, 5, 10, 20 ms
)


def opus_packet_samples(packet: bytes) -> int:
    """Samples (48 kHz) one Opus packet decodes to, from its TOC byte (RFC 6716 3.1)."""
    if not packet:
        return 0
    toc = packet[0]
    per_frame = _FRAME_SAMPLES_BY_CONFIG[toc >> 3]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = packet[1] & 0x3F if len(packet) > 1 else 0
    return per_frame * frames


def packet_end_s(event: PacketRead) -> float:
    """Media time (s from the stream's start) at which this packet ends."""
    later = sum(opus_packet_samples(p) for p in event.later_on_page)
    return (event.page_granule - later) / SAMPLE_RATE_HZ


# -- what was heard (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    arrival_s: float  # time.monotonic() when its page arrived
    media_s: float  # media time at its end, from the granule positions
    serial: int
    tones: tuple[bool, ...]  # per configured frequency, in order


@dataclass(frozen=True)
class Disconnect:
    at_s: float
    reason: str


@dataclass
class FrameLog:
    """Frames heard and connections made and lost, with the benchmark's questions.

    Times are monotonic seconds of the measuring process. ``tones`` are the frequencies
    whose presence each frame records, in the order of ``Frame.tones``.
    """

    tones: tuple[float, ...]
    max_frames: int = FRAMES_KEPT
    frames: deque[Frame] = field(init=False)
    connects: list[float] = field(default_factory=list)
    disconnects: list[Disconnect] = field(default_factory=list)
    streams: list[tuple[float, int]] = field(default_factory=list)  # (arrival, serial)

    def __post_init__(self) -> None:
        self.frames = deque(maxlen=self.max_frames)

    def add(self, frame: Frame) -> None:
        self.frames.append(frame)

    def _index(self, tones: Sequence[float]) -> list[int]:
        try:
            return [self.tones.index(t) for t in tones]
        except ValueError as exc:
            raise ValueError(f"tone not configured: {tones} not all in {self.tones}") from exc

    def _carries(self, frame: Frame, idx: Sequence[int], any_: bool) -> bool:
        hits = (frame.tones[i] for i in idx)
        return any(hits) if any_ else all(hits)

    def _between(self, t0: float, t1: float) -> list[Frame]:
        return [f for f in self.frames if t0 <= f.arrival_s <= t1]

    def first_with(
        self,
        tones: Sequence[float],
        after_s: float,
        sustain: int = 5,
        any_: bool = False,
        new_stream: bool = False,
    ) -> float | None:
        """Arrival of the first frame after ``after_s`` that begins ``sustain`` frames in a
        row carrying all of ``tones`` (any of them with ``any_``); None if none did.

        With ``new_stream`` only frames of a logical stream first seen after ``after_s``
        count: what a restarted stage encoded, not what was still in flight (in the
        server's buffers, in this socket's) when the old one died.
        """
        idx = self._index(tones)
        old = {serial for at, serial in self.streams if at < after_s} if new_stream else set()
        run_start, run = None, 0
        for f in self.frames:
            if f.arrival_s < after_s:
                continue
            if f.serial in old:
                run = 0
            elif self._carries(f, idx, any_):
                run_start = f.arrival_s if run == 0 else run_start
                run += 1
                if run >= sustain:
                    return run_start
            else:
                run = 0
        return None

    def fraction_with(self, tone: float, t0: float, t1: float) -> float:
        """Share of the 20 ms windows of [t0, t1] (by the clock) heard with ``tone``."""
        expected = max(1, round((t1 - t0) / FRAME_S))
        (i,) = self._index([tone])
        heard = sum(1 for f in self._between(t0, t1) if f.tones[i])
        return min(1.0, heard / expected)

    def lost_windows(self, tones: Sequence[float], t0: float, t1: float) -> int:
        """Media windows missing or without all of ``tones`` among the frames that arrived
        in [t0, t1]: a jump in media time counts its windows as lost, and so does a
        stretch at either edge with no arrival for longer than ``EDGE_SLACK_S`` (frames
        arrive in bursts, one per write, so a shorter one is the burst's rhythm)."""
        idx = self._index(tones)
        got = self._between(t0, t1)
        if not got:
            return max(1, round((t1 - t0) / FRAME_S))
        lost = sum(1 for f in got if not self._carries(f, idx, False))
        for edge_s in (got[0].arrival_s - t0, t1 - got[-1].arrival_s):
            lost += round(edge_s / FRAME_S) if edge_s > EDGE_SLACK_S else 0
        for a, b in itertools.pairwise(got):
            if a.serial != b.serial:
                lost += max(0, round((b.arrival_s - a.arrival_s) / FRAME_S) - 1)
            else:
                lost += max(0, round((b.media_s - a.media_s) / FRAME_S) - 1)
        return lost

    def longest_gap(self, t0: float, t1: float) -> float:
        """Longest time between frame arrivals in [t0, t1] (the edges count)."""
        times = [t0, *(f.arrival_s for f in self._between(t0, t1)), t1]
        return max(b - a for a, b in itertools.pairwise(times))

    def connected_after(self, after_s: float) -> float | None:
        """When a connection was next opened after ``after_s``; None if none was."""
        return next((at for at in self.connects if at >= after_s), None)

    def disconnects_between(self, t0: float, t1: float) -> int:
        return sum(1 for d in self.disconnects if t0 <= d.at_s <= t1)


# -- decoding ----------------------------------------------------------------------------


class _Kernels:
    """DFT kernels at each tone for int16-scaled frames, as ``audio.tone_amplitude``
    computes them, made once per frame length instead of once per frame."""

    def __init__(self, tones: Sequence[float]) -> None:
        self.tones = tuple(tones)
        self._by_length: dict[int, tuple[npt.NDArray[np.complex128], float]] = {}

    def amplitudes(self, frame: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        n = len(frame)
        if n == 0:
            return np.zeros(len(self.tones))
        if n not in self._by_length:
            w, k = np.hanning(n), np.arange(n)
            rows = np.array([w * np.exp(-2j * np.pi * f * k / SAMPLE_RATE_HZ) for f in self.tones])
            self._by_length[n] = (rows, 2 / w.sum())
        rows, scale = self._by_length[n]
        return np.abs(rows @ frame) * scale


class OpusFrames:
    """Events → frames: a fresh libopus decoder per logical stream."""

    def __init__(self, log: FrameLog, threshold: float = TONE_MIN) -> None:
        self.log = log
        self.threshold = threshold
        self._kernels = _Kernels(log.tones)
        self._codec: AudioCodecContext | None = None

    def handle(self, events: Sequence[OggEvent], arrival_s: float) -> None:
        for event in events:
            if isinstance(event, StreamBegan):
                self._codec = _opus_decoder(event.opus_head)
                self.log.streams.append((arrival_s, event.serial))
            elif self._codec is not None:
                self._decode(event, arrival_s)

    def _decode(self, event: PacketRead, arrival_s: float) -> None:
        assert self._codec is not None
        try:
            decoded = self._codec.decode(av.Packet(event.data))
        except av.error.FFmpegError:
            return  # a damaged packet is a lost window, which the log shows as such
        pcm = [_mono_float(f) for f in decoded]
        if not pcm:
            return
        samples = np.concatenate(pcm)
        end_s = packet_end_s(event)
        count = max(1, len(samples) // WINDOW_SAMPLES)
        for i in range(count):
            window = samples[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
            amps = self._kernels.amplitudes(window)
            media_s = end_s - (count - 1 - i) * FRAME_S
            tones = tuple(bool(a >= self.threshold) for a in amps)
            self.log.add(Frame(arrival_s, media_s, event.serial, tones))


def _opus_decoder(opus_head: bytes) -> AudioCodecContext:
    codec = cast(AudioCodecContext, av.CodecContext.create("libopus", "r"))
    codec.extradata = opus_head
    codec.sample_rate = SAMPLE_RATE_HZ
    return codec


def _mono_float(frame: av.AudioFrame) -> npt.NDArray[np.float64]:
    a = frame.to_ndarray()
    a = a.reshape(-1) if a.ndim == 1 or a.shape[0] == 1 else a[0]
    if a.dtype.kind == "i":
        return a.astype(np.float64) / 32768.0
    return a.astype(np.float64)


# -- the live probe ----------------------------------------------------------------------


def reconnect_delay(
    attempt: int, rng: random.Random, jitter_s: float = RECONNECT_JITTER_S
) -> float:
    """The clients' schedule: attempt 0 → no wait, ... capped at the last step, plus jitter."""
    step = RECONNECT_SCHEDULE_S[min(attempt, len(RECONNECT_SCHEDULE_S) - 1)]
    return step + rng.uniform(0, jitter_s)


def _http_target(url: str) -> tuple[tuple[str, int], str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the probe reads plain http:// URLs, not {url!r}")
    return (parts.hostname, parts.port or 80), parts.path + (
        f"?{parts.query}" if parts.query else ""
    )


class OggProbe:
    """A listener thread on one Ogg URL (or several, tried in turn). ``log`` is read
    under ``lock``."""

    def __init__(
        self,
        url: str,
        tones: Sequence[float],
        name: str = "probe",
        seed: int | None = None,
        jitter_s: float = RECONNECT_JITTER_S,
        clock: Callable[[], float] = time.monotonic,
        fallback_urls: Sequence[str] = (),
        source_address: str | None = None,
    ) -> None:
        self.url, self.name = url, name
        # Like a client given several edges (DNS round robin): a connection that
        # delivered nothing moves on to the next address.
        self._targets = [_http_target(u) for u in (url, *fallback_urls)]
        self._addr, self._target = self._targets[0]
        self.lock = threading.Lock()
        self.log = FrameLog(tuple(tones))
        self.local_port: int | None = None  # of the open connection: tells its worker
        self._frames = OpusFrames(self.log)
        self._rng = random.Random(seed)
        self._jitter_s = jitter_s
        self._clock = clock
        # A loopback source address of its own (127.x.y.z): per-address limits then see
        # this listener as one person, not as the benchmark's other clients.
        self._source = (source_address, 0) if source_address else None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name=f"probe-{name}", daemon=True)

    def start(self) -> OggProbe:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout_s)

    def __enter__(self) -> OggProbe:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            heard = self._listen_once()
            if self._stop.is_set():
                return
            attempt = 0 if heard else attempt + 1
            if not heard:
                self._targets.append(self._targets.pop(0))
                self._addr, self._target = self._targets[0]
            self._stop.wait(reconnect_delay(attempt, self._rng, self._jitter_s))

    def _listen_once(self) -> bool:
        """One connection until it drops; True if it delivered audio."""
        before = len(self.log.frames)
        reason = "closed by the server"
        try:
            with socket.create_connection(
                self._addr, CONNECT_TIMEOUT_S, source_address=self._source
            ) as sock:
                self._sock = sock
                sock.settimeout(READ_TIMEOUT_S)
                self.local_port = sock.getsockname()[1]
                sock.sendall(self._request())
                body = self._read_head(sock)
                with self.lock:
                    self.log.connects.append(self._clock())
                reader = OggPacketReader()
                self._feed(reader, body)
                while not self._stop.is_set():
                    chunk = sock.recv(READ_CHUNK_BYTES)
                    if not chunk:
                        break
                    self._feed(reader, chunk)
        except (OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"[:120]
        finally:
            self._sock = None
            self.local_port = None
        heard = len(self.log.frames) > before
        if not self._stop.is_set():
            with self.lock:
                self.log.disconnects.append(Disconnect(self._clock(), reason))
        return heard

    def _request(self) -> bytes:
        host = f"{self._addr[0]}:{self._addr[1]}"
        return (
            f"GET {self._target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: townhall-probe\r\n"
            "Accept: audio/ogg\r\n\r\n"
        ).encode()

    def _read_head(self, sock: socket.socket) -> bytes:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(READ_CHUNK_BYTES)
            if not chunk or len(buf) > HEAD_MAX_BYTES:
                raise ValueError("no HTTP response head")
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise ValueError(status.decode(errors="replace"))
        return body

    def _feed(self, reader: OggPacketReader, chunk: bytes) -> None:
        events = reader.feed(chunk)
        now = self._clock()
        with self.lock:
            self._frames.handle(events, now)
