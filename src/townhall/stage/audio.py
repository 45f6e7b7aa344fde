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
        if self._resampler is None:
            self._channels = frame.layout.nb_channels
            self._resampler = av.AudioResampler(
                format="s16p", layout=frame.layout.name, rate=SAMPLE_RATE_HZ
            )
        for out in self._resampler.resample(frame):
            mono = out.to_ndarray().reshape(self._channels, -1).mean(axis=0).astype(np.int16)
            self._buf = np.concatenate([self._buf, mono])
        frames = []
        while len(self._buf) >= FRAME_SAMPLES:
            frames.append(self._buf[:FRAME_SAMPLES].copy())
            self._buf = self._buf[FRAME_SAMPLES:]
        return frames


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
    """A mix-minus going back to one speaker, fed by the stage clock.

    Bounded: if the sender falls behind, the oldest frames are dropped so the speaker
    always hears the present, never a growing delay.
    """

    kind = "audio"

    def __init__(self, max_frames: int = 10) -> None:
        super().__init__()
        self._frames: deque[Pcm] = deque(maxlen=max_frames)
        self._ready = asyncio.Event()
        self._pts = 0

    def push(self, pcm: Pcm) -> None:
        self._frames.append(pcm)
        self._ready.set()

    async def recv(self) -> av.AudioFrame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame = to_audio_frame(self._frames.popleft(), self._pts)
        self._pts += FRAME_SAMPLES
        return frame


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
