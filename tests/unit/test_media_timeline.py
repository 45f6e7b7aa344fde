"""Media time across stage restarts: where a (re)started stage's program begins."""

from __future__ import annotations

import asyncio
import itertools
import struct

import numpy as np

from townhall.feed import FeedMessage, HlsPart
from townhall.media.fmp4 import child
from townhall.media.ogg import parse_pages
from townhall.media.program import EncoderConfig, ProgramEncoder
from townhall.media.timeline import MediaStart, media_start
from townhall.stage.runtime import StageRuntime

T0 = 1_700_000_000.0


def test_a_first_start_begins_at_the_origin() -> None:
    assert media_start(T0, T0, 0.5, 4) == MediaStart(0, 0, False)
    # A stage that comes up a moment after the Space started begins at the next
    # boundary, so media time never trails the wall clock.
    assert media_start(T0, T0 + 0.05, 0.5, 4) == MediaStart(96_000, 4, False)


def test_a_restart_carries_on_at_the_next_segment_boundary() -> None:
    start = media_start(T0, T0 + 61.3, 0.5, 4, restarted=True)
    assert start.first_part_seq == 124  # 61.3 s rounded up to 62 s = 31 segments of 4
    assert start.samples == 62 * 48_000
    assert start.discontinuity


def test_numbering_never_goes_backwards_behind_parts_already_published() -> None:
    # Media time ran ahead of the wall clock (each start rounds up); the hub's count wins.
    start = media_start(T0, T0 + 10.0, 0.5, 4, next_part_seq=27, restarted=True)
    assert start.first_part_seq == 28  # 27 aligned up to a segment boundary
    assert start.samples == 28 * 24_000


def test_a_start_on_a_boundary_stays_there() -> None:
    assert media_start(T0, T0 + 4.0, 0.5, 4).first_part_seq == 8


def test_a_clock_behind_the_start_is_the_origin() -> None:
    assert media_start(T0, T0 - 3.0, 0.5, 4).first_part_seq == 0


def _encode(start_samples: int, frames: int = 60) -> ProgramEncoder:
    enc = ProgramEncoder(EncoderConfig(), start_samples)
    ogg, frags = [], []
    for i in range(frames):
        t = (np.arange(960) + i * 960) / 48_000
        out = enc.encode((np.sin(2 * np.pi * 440 * t) * 10_000).astype(np.int16))
        ogg += out.ogg_pages
        frags += out.fragments
    enc.ogg_pages, enc.frags = ogg, frags  # type: ignore[attr-defined]
    return enc


def _tfdt(fragment: bytes) -> int:
    (size,) = struct.unpack(">I", fragment[:4])
    traf = child(fragment[:size], b"traf")
    assert traf is not None
    tfdt = child(traf, b"tfdt")
    assert tfdt is not None
    if tfdt[8] == 1:
        return int(struct.unpack(">Q", tfdt[12:20])[0])
    return int(struct.unpack(">I", tfdt[12:16])[0])


def test_ogg_granules_and_fmp4_tfdt_count_on_from_the_start() -> None:
    offset = 62 * 48_000
    first, later = _encode(0), _encode(offset)
    g0 = [p.granule for p in first.ogg_pages]  # type: ignore[attr-defined]
    g1 = [p.granule for p in later.ogg_pages]  # type: ignore[attr-defined]
    assert g0 and [g - offset for g in g1] == g0
    t0 = [_tfdt(f.data) for f in first.frags]  # type: ignore[attr-defined]
    t1 = [_tfdt(f.data) for f in later.frags]  # type: ignore[attr-defined]
    assert t0[0] == 0 and t0[1] == 24_000
    # The restarted stream starts where media time is (less the encoder's 312-sample
    # priming, which the muxer keeps at a non-zero start) and runs on part by part.
    assert offset - 480 <= t1[0] <= offset
    assert [b - a for a, b in itertools.pairwise(t1)] == [24_000] * (len(t1) - 1)
    header_pages, _ = parse_pages(later.ogg_header)
    assert [p.granule for p in header_pages] == [0, 0]


def _stage_parts(start: MediaStart, ticks: int = 80) -> list[HlsPart]:
    class Kept:
        def __init__(self) -> None:
            self.messages: list[FeedMessage] = []

        def publish(self, msg: FeedMessage) -> None:
            self.messages.append(msg)

    async def scenario() -> Kept:
        kept = Kept()
        stage = StageRuntime("sp", kept, media_start=start)
        for _ in range(ticks):
            stage.tick()
        await stage.end()
        return kept

    return [m for m in asyncio.run(scenario()).messages if isinstance(m, HlsPart)]


def test_a_restarted_stage_numbers_on_and_marks_its_first_part() -> None:
    first = _stage_parts(MediaStart.origin())
    assert [p.seq for p in first] == list(range(len(first)))
    assert not any(p.discontinuity for p in first)
    later = _stage_parts(media_start(T0, T0 + 7.0, 0.5, 4, next_part_seq=9, restarted=True))
    assert [p.seq for p in later] == list(range(16, 16 + len(later)))
    assert [p.discontinuity for p in later] == [True] + [False] * (len(later) - 1)
