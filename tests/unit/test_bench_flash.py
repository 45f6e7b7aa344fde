"""The flash benchmark's analysis of what a speaker heard: tone per frame, gaps. Pure."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.flash import FRAME_S, analyse_hearing, longest_run, max_interval
from benchmarks.harness.audio import tone_amplitude, tone_flags

RATE = 48_000
N = 960


def tone(freq: float, amp: float = 0.3, frame: int = 0) -> np.ndarray:
    t = (np.arange(N) + frame * N) / RATE
    return (np.sin(2 * np.pi * freq * t) * amp * 32767).astype(np.int16)


def silence() -> np.ndarray:
    return np.zeros(N, dtype=np.int16)


def test_tone_amplitude_measures_its_own_frequency_and_not_the_others() -> None:
    assert tone_amplitude(tone(550), 550) == pytest.approx(0.3, abs=0.01)
    assert tone_amplitude(tone(300) + tone(800), 550) < 0.005
    assert tone_amplitude(silence(), 550) == 0.0
    assert tone_amplitude(np.zeros(0, dtype=np.int16), 550) == 0.0


def test_tone_amplitude_is_phase_independent() -> None:
    for frame in range(5):
        assert tone_amplitude(tone(523.25, frame=frame), 523.25) == pytest.approx(0.3, abs=0.02)


def test_tone_flags_and_longest_run_of_misses() -> None:
    frames = [tone(550), silence(), silence(), tone(550), silence(), tone(550)]
    flags = tone_flags(frames, 550)
    assert flags == [True, False, False, True, False, True]
    assert longest_run(flags, False) == 2
    assert longest_run(flags, True) == 1
    assert longest_run([], False) == 0


def test_max_interval() -> None:
    assert max_interval([]) == (0.0, None)
    assert max_interval([1.0]) == (0.0, None)
    assert max_interval([0.0, 0.02, 0.2, 0.22]) == (pytest.approx(0.18), 0.2)


def steady(n: int, start: float = 0.0) -> list[tuple[float, np.ndarray]]:
    return [(start + (i + 1) * FRAME_S, tone(550, frame=i)) for i in range(n)]


def test_an_unbroken_stream_has_no_gap() -> None:
    h = analyse_hearing(steady(100), 550, 0.0, 100 * FRAME_S + 0.001)
    assert h.frames == 100 and h.tone_frames == 100
    assert h.tone_gap_s == pytest.approx(0.0, abs=1e-3)
    assert h.longest_gap_s == pytest.approx(0.0, abs=1e-3)
    assert h.longest_tone_miss_frames == 0


def test_frames_delivered_without_the_tone_are_a_gap() -> None:
    heard = steady(100)
    for i in range(40, 46):  # 6 frames of silence: 120 ms without A
        heard[i] = (heard[i][0], silence())
    h = analyse_hearing(heard, 550, 0.0, 2.001)
    assert h.longest_tone_miss_frames == 6
    assert h.tone_gap_s == pytest.approx(0.120, abs=1e-3)
    assert h.tone_gap_at_s == pytest.approx(47 * FRAME_S)
    assert h.max_arrival_interval_s == pytest.approx(FRAME_S, abs=1e-3)


def test_frames_that_arrive_late_are_a_gap_even_with_the_tone() -> None:
    heard = steady(50) + steady(50, start=50 * FRAME_S + 0.150)  # a 150 ms stall
    h = analyse_hearing(heard, 550, 0.0, heard[-1][0])
    assert h.tone_frames == 100
    assert h.longest_tone_miss_frames == 0
    assert h.tone_gap_s == pytest.approx(0.150, abs=1e-3)
    assert h.longest_gap_s == pytest.approx(0.150, abs=1e-3)


def test_only_the_window_counts_and_a_tone_that_stops_is_a_gap_to_its_end() -> None:
    heard = steady(100)
    h = analyse_hearing(heard, 550, 0.5, 1.0)
    assert h.frames == 26
    h = analyse_hearing(heard, 550, 0.0, 3.0)  # nothing after 2.0 s
    assert h.tone_gap_s == pytest.approx(1.0 - FRAME_S, abs=1e-3)
    empty = analyse_hearing([], 550, 0.0, 1.0)
    assert empty.frames == 0 and empty.longest_gap_s == pytest.approx(1.0 - FRAME_S)
