"""The stage mixer: PCM frames in, program and mix-minus frames out.

Every tick (20 ms) the stage hands the mixer one frame per speaker whose audio may
reach the program. The mixer sums them once in 32-bit, then derives each speaker's
mix-minus by subtracting that speaker's own frame from the sum. That is one addition
per speaker rather than one full re-mix per speaker, and it means a speaker never
hears themselves: their contribution is removed exactly, sample for sample, before
clipping. Clipping happens last, so a loud program cannot leak a speaker back into
their own mix-minus.

Pure: numpy in, numpy out, no clock and no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE_HZ = 48_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000  # 960

Pcm = npt.NDArray[np.int16]

_INT16_MIN = np.iinfo(np.int16).min
_INT16_MAX = np.iinfo(np.int16).max


def silence() -> Pcm:
    return np.zeros(FRAME_SAMPLES, dtype=np.int16)


@dataclass(frozen=True)
class MixResult:
    program: Pcm
    mix_minus: dict[str, Pcm]


def _clip(acc: npt.NDArray[np.int32]) -> Pcm:
    return np.clip(acc, _INT16_MIN, _INT16_MAX).astype(np.int16)


def mix(frames: Mapping[str, Pcm], listeners: tuple[str, ...] = ()) -> MixResult:
    """Mix one tick.

    ``frames`` maps a speaker id to its 960-sample mono frame for this tick (only
    speakers whose audio may reach the program). ``listeners`` names stage members
    that need a mix-minus even though they contribute nothing this tick (muted,
    silent or still in their mic check): they hear everyone.
    """
    total = np.zeros(FRAME_SAMPLES, dtype=np.int32)
    for frame in frames.values():
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"frame must be {FRAME_SAMPLES} mono samples, got {frame.shape}")
        total += frame
    program = _clip(total)
    minus = {sid: _clip(total - frame.astype(np.int32)) for sid, frame in frames.items()}
    for sid in listeners:
        minus.setdefault(sid, program)
    return MixResult(program=program, mix_minus=minus)
