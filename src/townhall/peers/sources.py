"""Sound sources for bot speakers: a tone, or a file decoded once to 20 ms frames."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from townhall.media.mixer import FRAME_SAMPLES, SAMPLE_RATE_HZ, Pcm, silence
from townhall.stage.audio import PcmSource


class ToneSource(PcmSource):
    """A sine tone; silent before ``start_at`` (monotonic seconds) so latency can be
    measured from the exact moment the tone begins."""

    def __init__(self, freq_hz: float, amplitude: float = 0.3, start_at: float = 0.0) -> None:
        self.freq_hz = freq_hz
        self.amplitude = amplitude
        self.start_at = start_at
        self.first_tone_at: float | None = None
        self._n = 0

    def next_frame(self, now: float) -> Pcm:
        if now < self.start_at:
            return silence()
        if self.first_tone_at is None:
            self.first_tone_at = now
        t = (np.arange(FRAME_SAMPLES) + self._n) / SAMPLE_RATE_HZ
        self._n += FRAME_SAMPLES
        return (np.sin(2 * np.pi * self.freq_hz * t) * self.amplitude * 32767).astype(np.int16)


class FileSource(PcmSource):
    """A sound file, played once (then silence) or looped."""

    def __init__(self, path: Path, loop: bool = True) -> None:
        self.frames = decode_file(path)
        if not self.frames:
            raise ValueError(f"{path} contains no audio")
        self.loop = loop
        self._i = 0

    def next_frame(self, now: float) -> Pcm:
        if self._i >= len(self.frames):
            if not self.loop:
                return silence()
            self._i = 0
        frame = self.frames[self._i]
        self._i += 1
        return frame


def decode_file(path: Path) -> list[Pcm]:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE_HZ)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    usable = len(pcm) - len(pcm) % FRAME_SAMPLES
    return [pcm[i : i + FRAME_SAMPLES].astype(np.int16) for i in range(0, usable, FRAME_SAMPLES)]
