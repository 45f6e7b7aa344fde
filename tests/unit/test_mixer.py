"""The stage mixer: sums, clips last, and removes each speaker from their own mix-minus."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness.audio import amplitude_at, pcm16_to_float
from townhall.media.mixer import FRAME_SAMPLES, SAMPLE_RATE_HZ, Pcm, mix, silence

INT16_MAX = 32767
INT16_MIN = -32768


def tone(freq_hz: float, amplitude: float, frame_index: int = 0) -> Pcm:
    t = (np.arange(FRAME_SAMPLES) + frame_index * FRAME_SAMPLES) / SAMPLE_RATE_HZ
    return (np.sin(2 * np.pi * freq_hz * t) * amplitude * INT16_MAX).astype(np.int16)


def constant(value: int) -> Pcm:
    return np.full(FRAME_SAMPLES, value, dtype=np.int16)


def test_program_is_the_sample_sum() -> None:
    a, b = tone(440, 0.2), tone(660, 0.2)
    result = mix({"a": a, "b": b})
    np.testing.assert_array_equal(result.program, a.astype(np.int32) + b)
    assert result.program.dtype == np.int16
    assert result.program.shape == (FRAME_SAMPLES,)


def test_no_frames_is_silence() -> None:
    result = mix({})
    np.testing.assert_array_equal(result.program, silence())
    assert result.mix_minus == {}


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (30_000, 30_000, INT16_MAX),
        (-30_000, -30_000, INT16_MIN),
        (INT16_MAX, 1, INT16_MAX),
        (INT16_MIN, -1, INT16_MIN),
        (30_000, -30_000, 0),
    ],
)
def test_program_clips_at_int16_limits_instead_of_wrapping(a: int, b: int, expected: int) -> None:
    result = mix({"a": constant(a), "b": constant(b)})
    assert (result.program == expected).all()


def test_mix_minus_removes_own_frame_exactly() -> None:
    a, b, c = tone(440, 0.3), tone(660, 0.3), tone(880, 0.3)
    result = mix({"a": a, "b": b, "c": c})
    np.testing.assert_array_equal(result.mix_minus["a"], b.astype(np.int32) + c)
    np.testing.assert_array_equal(result.mix_minus["b"], a.astype(np.int32) + c)
    np.testing.assert_array_equal(result.mix_minus["c"], a.astype(np.int32) + b)


def test_own_tone_absent_from_mix_minus_even_when_the_program_clips() -> None:
    # Both near full scale: the program clips hard, and clipping a sum spreads energy
    # across both tones. The mix-minus is derived before clipping, so nothing of A leaks.
    programs, heard_by_a = [], []
    for i in range(10):  # 200 ms, for a 5 Hz FFT resolution
        a, b = tone(440, 0.9, i), tone(660, 0.9, i)
        result = mix({"a": a, "b": b})
        assert (result.program == INT16_MAX).any() and (result.program == INT16_MIN).any()
        np.testing.assert_array_equal(result.mix_minus["a"], b)
        np.testing.assert_array_equal(result.mix_minus["b"], a)
        programs.append(result.program)
        heard_by_a.append(result.mix_minus["a"])
    minus = pcm16_to_float(np.concatenate(heard_by_a))
    assert amplitude_at(minus, 660) > 0.85
    assert amplitude_at(minus, 440) < 1e-4
    # ...whereas the clipped program carries both.
    program = pcm16_to_float(np.concatenate(programs))
    assert amplitude_at(program, 440) > 0.5 and amplitude_at(program, 660) > 0.5


def test_mix_minus_of_a_clipping_trio_is_itself_clipped_not_wrapped() -> None:
    result = mix({"a": constant(1000), "b": constant(30_000), "c": constant(30_000)})
    assert (result.mix_minus["a"] == INT16_MAX).all()
    assert (result.mix_minus["b"] == 31_000).all()


def test_listeners_only_members_hear_the_full_program() -> None:
    a, b = tone(440, 0.3), tone(660, 0.3)
    result = mix({"a": a, "b": b}, listeners=("a", "b", "muted", "mic-check"))
    for member in ("muted", "mic-check"):
        np.testing.assert_array_equal(result.mix_minus[member], result.program)
    # A contributing member named in listeners keeps their mix-minus, not the program.
    np.testing.assert_array_equal(result.mix_minus["a"], b)


def test_a_listener_alone_hears_silence() -> None:
    result = mix({}, listeners=("solo",))
    np.testing.assert_array_equal(result.mix_minus["solo"], silence())


@pytest.mark.parametrize(
    "shape",
    [(FRAME_SAMPLES - 1,), (FRAME_SAMPLES + 1,), (2, FRAME_SAMPLES), (1, FRAME_SAMPLES), (0,)],
)
def test_wrong_frame_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="960 mono samples"):
        mix({"ok": silence(), "bad": np.zeros(shape, dtype=np.int16)})
