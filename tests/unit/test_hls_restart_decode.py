"""LL-HLS across a stage restart, with real bytes: two encoder incarnations' parts
through one packager, the playlist and segments it serves, decoded by ffmpeg's HLS
client. Both sides of the gap are heard, in order; media time only moves forward."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness.audio import SAMPLE_RATE_HZ, Signal, tone_windows
from townhall.media.hls import HlsConfig, HlsPackager, segment_uri
from townhall.media.mixer import FRAME_SAMPLES
from townhall.media.program import ProgramEncoder
from townhall.media.timeline import MediaStart, media_start

FIRST_HZ, SECOND_HZ = 440.0, 880.0
T0 = 1_700_000_000.0
TICK_S = FRAME_SAMPLES / SAMPLE_RATE_HZ

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def tone(freq_hz: float, n: int) -> np.ndarray:
    t = (np.arange(FRAME_SAMPLES) + n * FRAME_SAMPLES) / SAMPLE_RATE_HZ
    return (np.sin(2 * np.pi * freq_hz * t) * 0.3 * 32767).astype(np.int16)


def run_stage(hls: HlsPackager, freq_hz: float, start: MediaStart, seconds: float) -> int:
    """One incarnation, crashing after ``seconds`` (its open fragment is lost)."""
    encoder = ProgramEncoder(start_samples=start.samples)
    seq = start.first_part_seq
    for n in range(round(seconds / TICK_S)):
        for frag in encoder.encode(tone(freq_hz, n)).fragments:
            at = T0 + seq * 0.5
            marked = seq == start.first_part_seq and start.discontinuity
            hls.add_part(frag.data, frag.sample_count * TICK_S, at, seq, marked)
            seq += 1
        if hls.init_segment is None:
            hls.init_segment = encoder.init_segment
    return seq


def ffmpeg_decode(playlist: Path) -> Signal:
    wav = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(playlist),
            "-ac",
            "1",
            "-ar",
            "48000",
            "-f",
            "wav",
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return (pcm.astype(np.float32) / 32768.0).reshape(-1)


def test_ffmpeg_plays_the_ll_hls_stream_across_a_restart(tmp_path: Path) -> None:
    hls = HlsPackager(HlsConfig(window_segments=50))
    next_seq = run_stage(hls, FIRST_HZ, MediaStart.origin(), 3.3)  # 6 parts, one lost
    restart = media_start(T0, T0 + 5.0, 0.5, 4, next_part_seq=next_seq, restarted=True)
    assert restart.first_part_seq == 12
    run_stage(hls, SECOND_HZ, restart, 3.0)
    hls.end()
    text = hls.playlist().decode()
    assert text.count("#EXT-X-DISCONTINUITY\n") == 1
    (tmp_path / "init.mp4").write_bytes(hls.init_segment or b"")
    for seg in hls.segments:
        if not seg.gap:
            (tmp_path / segment_uri(seg.msn)).write_bytes(seg.data)
    assert [s.msn for s in hls.segments] == [0, 1, 2, 3, 4]
    assert [s.gap for s in hls.segments] == [False, False, True, False, False]
    (tmp_path / "live.m3u8").write_text(text)
    signal = ffmpeg_decode(tmp_path / "live.m3u8")
    first, second = tone_windows(signal, FIRST_HZ), tone_windows(signal, SECOND_HZ)
    assert first.sum() * TICK_S >= 2.7  # the six parts of 0.5 s the first stage published
    assert second.sum() * TICK_S >= 2.0  # the five the second one published
    assert np.flatnonzero(first).max() < np.flatnonzero(second).min()
