"""Shared test helpers: decode what townhall serves with PyAV and find tones by FFT.

Everything here judges audio by content. A test that only counts bytes passes on a
stream of silence; these helpers let a test say "440 Hz is there, 660 Hz is not".
Amplitudes are in full-scale units: a sine at ``ToneSource(amplitude=0.3)`` measures
about 0.3 after an Opus round trip.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from townhall.media.ogg import OggPage, parse_pages

SAMPLE_RATE_HZ = 48_000
WINDOW_SAMPLES = 960  # 20 ms: one stage frame

Signal = npt.NDArray[np.float32]


# -- decoding ---------------------------------------------------------------------


def decode(data: bytes, container_format: str | None = None) -> Signal:
    """Decode a whole container (Ogg, fMP4, WAV...) to mono float32 at 48 kHz."""
    if not data:
        raise ValueError("nothing to decode: 0 bytes")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
    chunks: list[Signal] = []
    with av.open(io.BytesIO(data), format=container_format) as container:
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


def has_tone(signal: Signal, freq_hz: float, min_amplitude: float = 0.05) -> bool:
    return amplitude_at(signal, freq_hz) >= min_amplitude


def tone_windows(
    signal: Signal, freq_hz: float, min_amplitude: float = 0.05, window: int = WINDOW_SAMPLES
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
