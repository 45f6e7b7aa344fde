"""The probe's pure parts on real Ogg/Opus bytes: two ProgramEncoders chained stand for a
stage and its restarted incarnation."""

from __future__ import annotations

import random

import numpy as np
import pytest

from benchmarks.harness.probe import (
    FRAME_S,
    Disconnect,
    Frame,
    FrameLog,
    OggPacketReader,
    OpusFrames,
    PacketRead,
    StreamBegan,
    opus_packet_samples,
    packet_end_s,
    reconnect_delay,
)
from townhall.media.program import ProgramEncoder

FRAMES = 50  # one second per incarnation


def incarnation(tone_hz: float, frames: int = FRAMES) -> bytes:
    enc = ProgramEncoder()
    t = np.arange(960 * frames) / 48_000
    pcm = (0.3 * np.sin(2 * np.pi * tone_hz * t) * 32767).astype(np.int16)
    pages = []
    for i in range(frames):
        pages += enc.encode(pcm[i * 960 : (i + 1) * 960]).ogg_pages
    pages += enc.close().ogg_pages
    return enc.ogg_header + b"".join(p.data for p in pages)


def sliced(data: bytes, seed: int = 1) -> list[bytes]:
    rng, out, pos = random.Random(seed), [], 0
    while pos < len(data):
        n = rng.randint(1, 700)
        out.append(data[pos : pos + n])
        pos += n
    return out


def test_reader_sees_each_chained_stream_begin_and_every_packet() -> None:
    reader = OggPacketReader()
    events = [
        e for chunk in sliced(incarnation(440) + incarnation(660)) for e in reader.feed(chunk)
    ]
    began = [e for e in events if isinstance(e, StreamBegan)]
    packets = [e for e in events if isinstance(e, PacketRead)]
    assert len(began) == 2
    assert began[0].serial != began[1].serial
    assert all(b.opus_head.startswith(b"OpusHead") for b in began)
    # 50 frames each, plus what the encoder's flush adds at the end of each stream
    per_stream = [sum(1 for p in packets if p.serial == b.serial) for b in began]
    assert all(FRAMES <= n <= FRAMES + 2 for n in per_stream), per_stream
    assert not any(p.data.startswith(b"OpusTags") for p in packets)


def test_media_time_runs_in_20ms_steps_within_a_stream() -> None:
    reader = OggPacketReader()
    packets = [e for e in reader.feed(incarnation(440)) if isinstance(e, PacketRead)]
    ends = [packet_end_s(p) for p in packets[:FRAMES]]
    assert all(opus_packet_samples(p.data) == 960 for p in packets)
    assert np.allclose(np.diff(ends), FRAME_S)
    assert ends[9] == pytest.approx(0.2)


def test_a_stream_whose_beginning_was_not_seen_is_ignored() -> None:
    data = incarnation(440)
    headers = ProgramEncoder()  # another stream's headers: its serial differs
    headers.encode(np.zeros(960, np.int16))
    reader = OggPacketReader()
    start = data.index(b"OggS", data.index(b"OpusTags"))  # the first audio page
    assert reader.feed(data[start:]) == []
    assert reader.feed(headers.ogg_header + data[start:])[1:] == []


def test_frames_carry_the_tone_of_their_incarnation() -> None:
    log = FrameLog((440.0, 660.0))
    frames = OpusFrames(log)
    reader = OggPacketReader()
    for i, chunk in enumerate(sliced(incarnation(440) + incarnation(660))):
        frames.handle(reader.feed(chunk), arrival_s=float(i))
    serials = [s for _, s in log.streams]
    first = [f for f in log.frames if f.serial == serials[0]]
    second = [f for f in log.frames if f.serial == serials[1]]
    # The codec's first frame ramps up; the middle of each stream is unambiguous.
    assert all(f.tones == (True, False) for f in first[5:45])
    assert all(f.tones == (False, True) for f in second[5:45])


def frame(at: float, media: float, tones: tuple[bool, ...], serial: int = 1) -> Frame:
    return Frame(at, media, serial, tones)


def steady(
    t0: float, n: int, tones: tuple[bool, ...], serial: int = 1, media0: float = 0.0
) -> list[Frame]:
    return [frame(t0 + i * FRAME_S, media0 + i * FRAME_S, tones, serial) for i in range(n)]


def test_first_with_needs_a_sustained_run_after_the_moment() -> None:
    log = FrameLog((440.0, 660.0))
    both, one = (True, True), (True, False)
    for f in (
        steady(0.0, 50, both) + steady(1.0, 3, both) + steady(1.06, 20, one) + steady(2.0, 10, both)
    ):
        log.add(f)
    assert log.first_with([440.0, 660.0], after_s=0.5) == pytest.approx(0.5)
    # after 1.0 the run of 3 is too short; the next run of both starts at 2.0
    assert log.first_with([440.0, 660.0], after_s=1.0) == pytest.approx(2.0)
    assert log.first_with([440.0, 660.0], after_s=1.0, any_=True) == pytest.approx(1.0)
    assert log.first_with([660.0], after_s=2.5) is None
    with pytest.raises(ValueError):
        log.first_with([550.0], after_s=0)


def test_lost_windows_count_media_jumps_and_toneless_frames() -> None:
    log = FrameLog((440.0,))
    for f in steady(0.0, 50, (True,)):  # media 0 .. 0.98
        log.add(f)
    # 0.5 s of media missing, then 5 silent frames, then tone again
    for f in steady(1.5, 5, (False,), media0=1.5) + steady(1.6, 20, (True,), media0=1.6):
        log.add(f)
    assert log.lost_windows([440.0], 0.0, 0.99) == 0
    assert log.lost_windows([440.0], 0.0, 1.3) == 0  # 0.32 s after the last: a burst's rhythm
    assert log.lost_windows([440.0], 0.0, 1.98) == 25 + 5  # 0.98→1.5: 25 missing; 5 silent
    assert log.fraction_with(440.0, 0.0, 1.0) == pytest.approx(1.0)
    assert log.longest_gap(0.0, 1.98) == pytest.approx(1.5 - 0.98)


def test_a_new_stream_counts_the_clock_gap_as_lost() -> None:
    log = FrameLog((440.0,))
    for f in steady(0.0, 10, (True,), serial=1) + steady(1.2, 10, (True,), serial=2, media0=0.0):
        log.add(f)
    assert log.lost_windows([440.0], 0.0, 1.4) == round((1.2 - 0.18) / FRAME_S) - 1


def test_audio_that_stops_counts_as_lost_up_to_the_end_of_the_span() -> None:
    log = FrameLog((440.0,))
    for f in steady(0.0, 50, (True,)):  # the last arrives at 0.98
        log.add(f)
    assert log.lost_windows([440.0], 0.0, 1.5) == 0  # within a burst's rhythm
    assert log.lost_windows([440.0], 0.0, 2.98) == 100  # 2 s of nothing


def test_disconnects_are_counted_in_their_window() -> None:
    log = FrameLog((440.0,))
    log.disconnects += [Disconnect(1.0, "x"), Disconnect(5.0, "y")]
    assert log.disconnects_between(0.5, 2.0) == 1
    assert log.disconnects_between(0.0, 10.0) == 2


def test_reconnect_follows_the_client_schedule() -> None:
    rng = random.Random(3)
    assert 0.0 <= reconnect_delay(0, rng) <= 1.0
    assert 4.8 <= reconnect_delay(4, rng) <= 5.8
    assert 7.0 <= reconnect_delay(40, rng) <= 8.0
    assert reconnect_delay(2, rng, jitter_s=0) == 1.2
