"""Audio analysis for tests and benchmarks: decode what townhall serves with PyAV and
find tones in it by Fourier analysis.

Everything here judges audio by content. A test that only counts bytes passes on a
stream of silence; these helpers let a test say "440 Hz is there, 660 Hz is not".
Amplitudes are in full-scale units: a sine at ``ToneSource(amplitude=0.3)`` measures
about 0.3 after an Opus round trip.

Two estimators, for two shapes of input:

* ``amplitude_at``: a whole recording, by FFT; the strongest of the three bins around
  the frequency, so a tone a fraction of a bin off (a browser's, a resampled one) counts;
* ``tone_amplitude``: one 20 ms frame, by a DFT evaluated at exactly the frequency, so
  the figure is the same whatever the frequency's place between the 50 Hz bins.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from townhall.media.ogg import OggPage, parse_pages

SAMPLE_RATE_HZ = 48_000
WINDOW_SAMPLES = 960  # 20 ms: one stage frame
TONE_MIN = 0.05  # full scale: a 0.3 tone measures about 0.3 after Opus, silence about 0

Signal = npt.NDArray[np.float32]


# -- decoding ---------------------------------------------------------------------


def decode(data: bytes, container_format: str | None = None) -> Signal:
    """Decode a whole container (Ogg, fMP4, WAV...) to mono float32 at 48 kHz."""
    if not data:
        raise ValueError("nothing to decode: 0 bytes")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
    chunks: list[npt.NDArray[Any]] = []
    with av.open(io.BytesIO(data), "r", format=container_format) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def pcm16_to_float(pcm: npt.NDArray[np.int16]) -> Signal:
    return (pcm.astype(np.float32) / 32768.0).reshape(-1)


# -- tones ------------------------------------------------------------------------


def amplitude_at(signal: Signal, freq_hz: float) -> float:
    """The amplitude (full scale) of the sinusoid at ``freq_hz``, from a Hann-windowed FFT."""
    if len(signal) < 64:
        return 0.0
    window = np.hanning(len(signal)).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(signal * window))
    bin_hz = SAMPLE_RATE_HZ / len(signal)
    k = round(freq_hz / bin_hz)
    lo, hi = max(0, k - 1), min(len(spectrum), k + 2)
    return float(spectrum[lo:hi].max() * 2 / window.sum())


def peak_frequency(signal: Signal, min_hz: float = 50.0) -> float:
    """The frequency of the strongest spectral peak above ``min_hz``."""
    window = np.hanning(len(signal))
    spectrum = np.abs(np.fft.rfft(signal * window))
    freqs = np.fft.rfftfreq(len(signal), 1 / SAMPLE_RATE_HZ)
    spectrum[freqs < min_hz] = 0
    return float(freqs[int(np.argmax(spectrum))])


def has_tone(signal: Signal, freq_hz: float, min_amplitude: float = TONE_MIN) -> bool:
    return amplitude_at(signal, freq_hz) >= min_amplitude


def tone_amplitude(
    frame: npt.NDArray[np.int16], freq_hz: float, rate_hz: int = SAMPLE_RATE_HZ
) -> float:
    """Amplitude (full scale) of a sine at ``freq_hz`` in one int16 frame."""
    if len(frame) == 0:
        return 0.0
    x = frame.astype(np.float64) / 32768.0
    w = np.hanning(len(x))
    n = np.arange(len(x))
    bin_ = np.dot(x * w, np.exp(-2j * np.pi * freq_hz * n / rate_hz))
    return float(2 * abs(bin_) / w.sum())


def tone_flags(
    frames: Sequence[npt.NDArray[np.int16]], freq_hz: float, threshold: float = TONE_MIN
) -> list[bool]:
    """Per frame: does it carry the tone?"""
    return [tone_amplitude(f, freq_hz) >= threshold for f in frames]


def tone_windows(
    signal: Signal, freq_hz: float, min_amplitude: float = TONE_MIN, window: int = WINDOW_SAMPLES
) -> npt.NDArray[np.bool_]:
    """Per 20 ms window: does it carry the tone?"""
    n = len(signal) // window
    return np.array(
        [has_tone(signal[i * window : (i + 1) * window], freq_hz, min_amplitude) for i in range(n)]
    )


def onsets(present: Sequence[bool] | npt.NDArray[np.bool_], min_gap: int = 10) -> list[int]:
    """Indices where a tone starts after at least ``min_gap`` windows without it."""
    found, quiet = [], min_gap
    for i, on in enumerate(present):
        if on and quiet >= min_gap:
            found.append(i)
        quiet = 0 if on else quiet + 1
    return found


# -- mapping decoded audio back to the moment it arrived ---------------------------


@dataclass(frozen=True)
class TimedPage:
    page: OggPage
    end_offset: int  # byte offset just past this page in the received data


def ogg_pages(data: bytes) -> list[TimedPage]:
    """Every complete page in ``data`` with where it ends (the tail is ignored)."""
    pages, _tail = parse_pages(bytes(data))
    out, offset = [], 0
    for page in pages:
        offset += len(page.data)
        out.append(TimedPage(page, offset))
    return out


def packets_on_page(page: OggPage) -> int:
    """Packets that end on this page (RFC 3533: a lacing value below 255 ends one)."""
    nseg = page.data[26]
    return sum(1 for v in page.data[27 : 27 + nseg] if v < 255)


def arrival_of(arrivals: Sequence[tuple[float, int]], end_offset: int) -> float:
    """When byte ``end_offset - 1`` arrived, given ``(monotonic, start offset)`` chunks."""
    when = arrivals[0][0]
    for at, start in arrivals:
        if start >= end_offset:
            break
        when = at
    return when
