"""The stage's per-member inbox (jitter allowance, standing backlog) and frame plumbing."""

from __future__ import annotations

import av
import numpy as np
from aiortc import RTCPeerConnection

from townhall.media.mixer import FRAME_SAMPLES
from townhall.stage.audio import FrameAssembler
from townhall.stage.member import MemberConfig, StageMember


def frame(value: int) -> np.ndarray:
    return np.full(FRAME_SAMPLES, value, dtype=np.int16)


def member(**config: int) -> StageMember:
    return StageMember("p1", "Pat", RTCPeerConnection(), MemberConfig(**config))


def test_a_member_contributes_only_once_primed_and_reprimes_after_an_underrun() -> None:
    m = member(prime_frames=2)
    m.accept(frame(1), 0.0)
    assert m.take_frame() is None
    m.accept(frame(2), 0.02)
    assert m.take_frame()[0] == 1  # type: ignore[index]
    assert m.take_frame()[0] == 2  # type: ignore[index]
    assert m.take_frame() is None and not m.primed


def test_a_standing_backlog_is_dropped_but_a_jitter_burst_is_not() -> None:
    m = member(prime_frames=1, target_inbox_frames=2, backlog_window_ticks=10, max_inbox_frames=50)
    for i in range(8):  # a burst after a stall: 8 frames at once
        m.accept(frame(i), 0.0)
    taken = []
    for tick in range(10):  # then steady: one in, one out per tick
        m.accept(frame(100 + tick), 0.0)
        taken.append(int(m.take_frame()[0]))  # type: ignore[index]
    # Every tick saw 9 frames waiting: 7 above target were pure delay, dropped at once
    # at the end of the window; the oldest of the 2 kept is played.
    assert taken == [*range(8), 100, 108]
    assert len(m.inbox) == 1

    jittery = member(prime_frames=1, target_inbox_frames=2, backlog_window_ticks=10)
    for tick in range(10):  # bursts of two, then none: depth touches zero each window
        if tick % 2 == 0:
            jittery.accept(frame(tick), 0.0)
            jittery.accept(frame(tick + 1), 0.0)
        jittery.take_frame()
    assert jittery.frames_received == 10 and len(jittery.inbox) == 0


def test_stereo_with_identical_channels_becomes_mono_at_unity_gain() -> None:
    tone = (np.sin(np.arange(FRAME_SAMPLES) / 10) * 10_000).astype(np.int16)
    stereo = av.AudioFrame.from_ndarray(
        np.stack([tone, tone]).T.reshape(1, -1), format="s16", layout="stereo"
    )
    stereo.sample_rate = 48_000
    (mono,) = FrameAssembler().push(stereo)
    assert np.array_equal(mono, tone)


def test_mic_check_needs_real_signal_not_silence() -> None:
    m = member(mic_check_frames=3)
    for _ in range(10):
        m.accept(frame(0), 0.0)
    assert not m.mic_checked
    for i in range(3):
        m.accept(frame(3000), 0.1 + i * 0.02)
    assert m.mic_checked and m.silent_for(0.2) < 0.2
