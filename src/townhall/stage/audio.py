"""Audio frame plumbing between aiortc and the mixer: 20 ms mono int16 frames."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from townhall.media.mixer import FRAME_SAMPLES, SAMPLE_RATE_HZ, Pcm

TIME_BASE = fractions.Fraction(1, SAMPLE_RATE_HZ)


class FrameAssembler:
    """Turns decoded frames of any format, layout or size into 960-sample mono frames.

    Channels are averaged here rather than by the resampler: libswresample's stereo to
    mono matrix is -3 dB, so a voice would lose 3 dB at each WebRTC hop.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._channels = 1
        self._buf = np.zeros(0, dtype=np.int16)

    def push(self, frame: av.AudioFrame) -> list[Pcm]:
        for mono in self._mono(frame):
            self._buf = np.concatenate([self._buf, mono]) if len(self._buf) else mono
        frames = []
        while len(self._buf) >= FRAME_SAMPLES:
            frames.append(self._buf[:FRAME_SAMPLES].copy())
            self._buf = self._buf[FRAME_SAMPLES:]
        return frames

    def _mono(self, frame: av.AudioFrame) -> list[Pcm]:
        channels = frame.layout.nb_channels
        if frame.format.name == "s16" and frame.sample_rate == SAMPLE_RATE_HZ:
            # What aiortc's Opus decoder gives: interleaved 48 kHz, no resampler needed.
            return [_average(frame.to_ndarray().reshape(-1, channels).T)]
        if self._resampler is None:
            self._channels = channels
            self._resampler = av.AudioResampler(
                format="s16p", layout=frame.layout.name, rate=SAMPLE_RATE_HZ
            )
        return [
            _average(out.to_ndarray().reshape(self._channels, -1))
            for out in self._resampler.resample(frame)
        ]


def _average(planes: np.ndarray) -> Pcm:
    """Mean of the channel planes (rows), in int32 so the sum cannot overflow."""
    if len(planes) == 1:
        return planes[0].astype(np.int16)
    return (planes.astype(np.int32).sum(axis=0) // len(planes)).astype(np.int16)


async def read_pcm(track: MediaStreamTrack, on_pcm: Callable[[Pcm, float], None]) -> None:
    """Hand every 20 ms mono frame of a received track to ``on_pcm(pcm, arrived_at)``
    until the track ends."""
    assembler = FrameAssembler()
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.monotonic()
        assert isinstance(frame, av.AudioFrame)
        for pcm in assembler.push(frame):
            on_pcm(pcm, now)


def to_audio_frame(pcm: Pcm, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE_HZ
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


class OutboundTrack(MediaStreamTrack):
    """A mix-minus going back to one speaker, fed by the stage clock, encoded here.

    It yields Opus packets, not frames, so aiortc only packetises them. Given frames,
    aiortc resamples each to stereo, scans its level and encodes it at 96 kbit/s behind
    a thread-pool hop per 20 ms; measured, that cost about 5% of a core per speaker on
    the stage's core. One mono voice at ``bitrate_bps`` needs none of it.

    Bounded: if the sender falls behind, the oldest frames are dropped so the speaker
    always hears the present, never a growing delay.
    """

    kind = "audio"

    def __init__(self, max_frames: int = 10, bitrate_bps: int = 48_000) -> None:
        super().__init__()
        self._frames: deque[Pcm] = deque(maxlen=max_frames)
        self._ready = asyncio.Event()
        self._encoder = opus_encoder(bitrate_bps)
        self._packets: deque[av.Packet] = deque()
        self._pts = 0
        self._first_pts: int | None = None

    def push(self, pcm: Pcm) -> None:
        self._frames.append(pcm)
        self._ready.set()

    async def recv(self) -> av.Packet:  # aiortc sends packets as they are
        while not self._packets:
            while not self._frames:
                if self.readyState != "live":
                    raise MediaStreamError
                self._ready.clear()
                await self._ready.wait()
            frame = to_audio_frame(self._frames.popleft(), self._pts)
            self._pts += FRAME_SAMPLES
            self._packets.extend(self._encoder.encode(frame))  # none while it primes
        packet = self._packets.popleft()
        packet.time_base = TIME_BASE
        if packet.pts is not None:  # from 0, as aiortc's own encoder does (no pre-skip)
            self._first_pts = packet.pts if self._first_pts is None else self._first_pts
            packet.pts -= self._first_pts
        return packet


def opus_encoder(bitrate_bps: int) -> av.audio.codeccontext.AudioCodecContext:
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, av.audio.codeccontext.AudioCodecContext)
    codec.sample_rate = SAMPLE_RATE_HZ
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = bitrate_bps
    codec.time_base = TIME_BASE
    codec.options = {"application": "voip"}
    return codec


class PacedPcmTrack(MediaStreamTrack):
    """A track that plays PCM frames from a source at real time (a bot's microphone)."""

    kind = "audio"

    def __init__(self, source: PcmSource) -> None:
        super().__init__()
        self.source = source
        self._start: float | None = None
        self._pts = 0
        self.first_sent_at: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / SAMPLE_RATE_HZ - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        pcm = self.source.next_frame(time.monotonic())
        frame = to_audio_frame(pcm, self._pts)
        self._pts += FRAME_SAMPLES
        return frame


class PcmSource:
    """Anything that yields one 20 ms frame when asked."""

    def next_frame(self, now: float) -> Pcm:
        raise NotImplementedError
