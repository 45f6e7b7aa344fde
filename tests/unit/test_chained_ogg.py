"""A restarted stage's program reaches Ogg listeners as a chained stream that real
decoders (ffmpeg's command line, PyAV) play through: both sides of the restart audible,
in order. Real encoders, real bytes, content by FFT."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness.audio import SAMPLE_RATE_HZ, Signal, amplitude_at, decode, tone_windows
from townhall.audience.channel import Channel, ChannelConfig
from townhall.feed import ChannelEnded, HlsPart, OggHeader, OggPages
from townhall.media.mixer import FRAME_SAMPLES
from townhall.media.ogg import parse_pages
from townhall.media.program import ProgramEncoder
from townhall.media.timeline import media_start

FIRST_HZ, SECOND_HZ = 440.0, 880.0
TICK_S = FRAME_SAMPLES / SAMPLE_RATE_HZ


@dataclass
class Capture:
    """A listener's connection: every byte written to it, in order."""

    writes: list[bytes] = field(default_factory=list)
    closed: bool = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


def tone(freq_hz: float, n: int) -> np.ndarray:
    t = (np.arange(FRAME_SAMPLES) + n * FRAME_SAMPLES) / SAMPLE_RATE_HZ
    return (np.sin(2 * np.pi * freq_hz * t) * 0.3 * 32767).astype(np.int16)


class Incarnation:
    """One stage process's encoder, publishing to a channel as the stage does."""

    def __init__(self, channel: Channel, freq_hz: float, start_samples: int) -> None:
        self.channel, self.freq_hz = channel, freq_hz
        self.encoder = ProgramEncoder(start_samples=start_samples)
        self.header_sent = False
        self.parts: list[HlsPart] = []

    def run(self, seconds: float, clock: list[float], close: bool) -> None:
        for n in range(round(seconds / TICK_S)):
            clock[0] += TICK_S
            self._emit(self.encoder.encode(tone(self.freq_hz, n)).ogg_pages, clock[0])
            self.channel.ogg.flush(clock[0])
        if close:  # a clean end; a crashed stage never writes its end-of-stream page
            self._emit(self.encoder.close().ogg_pages, clock[0])

    def _emit(self, pages: list, now: float) -> None:  # type: ignore[type-arg]
        if pages and not self.header_sent:
            self.header_sent = True
            self.channel.apply(OggHeader("sp", self.encoder.ogg_header))
        if pages:
            self.channel.apply(OggPages("sp", b"".join(p.data for p in pages), now))


@pytest.fixture(scope="module")
def captures() -> dict[str, bytes]:
    channel = Channel("sp", ChannelConfig())
    clock = [100.0]
    whole, early, late = Capture(), Capture(), Capture()
    first = Incarnation(channel, FIRST_HZ, 0)
    first.run(0.4, clock, close=False)
    channel.ogg.subscribe(1, whole, clock[0])  # as soon as there is a header
    first.run(1.6, clock, close=False)
    channel.ogg.subscribe(2, early, clock[0])  # mid-way through the first stage
    first.run(1.0, clock, close=False)  # ... which then crashes: no end-of-stream page
    clock[0] += 1.5  # the gap while the stage restarts
    start = media_start(0.0, 4.5, 0.5, 4, restarted=True)
    second = Incarnation(channel, SECOND_HZ, start.samples)
    second.run(1.0, clock, close=False)
    channel.ogg.subscribe(3, late, clock[0])  # joins the restarted stream
    second.run(2.0, clock, close=True)
    channel.apply(ChannelEnded("sp", clock[0]))
    channel.ogg.close_all()
    assert whole.closed and early.closed and late.closed
    return {"whole": whole.data, "early": early.data, "late": late.data}


def ffmpeg_decode(data: bytes, tmp: Path) -> Signal:
    path = tmp / "capture.ogg"
    path.write_bytes(data)
    wav = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-ac", "1", "-ar", "48000", "-f", "wav", "-"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return (pcm.astype(np.float32) / 32768.0).reshape(-1)


def assert_both_tones_in_order(signal: Signal, first_s: float, second_s: float) -> None:
    first = tone_windows(signal, FIRST_HZ)
    second = tone_windows(signal, SECOND_HZ)
    # Each side's tone covers (nearly) all of its time, the decode covers both sides.
    assert first.sum() * TICK_S >= first_s, f"{first.sum() * TICK_S:.2f} s of the first"
    assert second.sum() * TICK_S >= second_s - 0.3, f"{second.sum() * TICK_S:.2f} s of the second"
    assert np.flatnonzero(first).max() < np.flatnonzero(second).min()  # in order
    assert amplitude_at(signal[: len(signal) // 4], SECOND_HZ) < 0.02


@pytest.mark.parametrize("who", ["whole", "early"])
def test_the_stream_is_chained_with_the_new_header_in_line(
    captures: dict[str, bytes], who: str
) -> None:
    pages, tail = parse_pages(captures[who])
    assert tail == b""
    serials = [int.from_bytes(p.data[14:18], "little") for p in pages]
    bos = [i for i, p in enumerate(pages) if p.data[5] & 0x02]
    assert len(bos) == 2 and len(set(serials)) == 2
    assert pages[bos[1]].is_header and pages[bos[1] + 1].is_header  # OpusHead, OpusTags
    assert set(serials[bos[1] :]) == {serials[bos[1]]}  # nothing of the old stream after
    granules = [p.granule for p in pages if not p.is_header]
    assert granules == sorted(granules)  # media time runs on across the restart
    assert pages[-1].is_last


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command")
@pytest.mark.parametrize("who", ["whole", "early"])
def test_ffmpeg_plays_both_sides_of_the_restart(
    captures: dict[str, bytes], who: str, tmp_path: Path
) -> None:
    signal = ffmpeg_decode(captures[who], tmp_path)
    assert_both_tones_in_order(signal, 1.4 if who == "early" else 2.6, 3.0)


@pytest.mark.parametrize("who", ["whole", "early"])
def test_pyav_plays_both_sides_of_the_restart(captures: dict[str, bytes], who: str) -> None:
    signal = decode(captures[who])
    assert_both_tones_in_order(signal, 1.4 if who == "early" else 2.6, 3.0)


def test_a_listener_who_joins_the_restarted_stream_hears_only_it(
    captures: dict[str, bytes],
) -> None:
    pages, _ = parse_pages(captures["late"])
    assert len({p.data[14:18] for p in pages}) == 1
    signal = decode(captures["late"])
    assert amplitude_at(signal, FIRST_HZ) < 0.02
    assert tone_windows(signal, SECOND_HZ).sum() * TICK_S >= 1.5
