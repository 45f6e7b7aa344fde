"""Where a stage's program begins in its Space's media time.

Media time counts from the Space's start (wall clock), not from the stage process's:
a stage that starts again after a crash carries on at "now" (a gap, not a reset), so
Ogg granule positions and fMP4 ``tfdt`` only move forward and LL-HLS numbering never
goes backwards. Any stage computes the same start from the same inputs, whichever
process runs it.

The start is rounded UP to a segment boundary: the first part of a restarted stage
then opens a fresh LL-HLS segment, so every audience process numbers segments from
part numbers alike (``seq // parts_per_segment``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from townhall.media.mixer import SAMPLE_RATE_HZ


@dataclass(frozen=True)
class MediaStart:
    samples: int  # the encoder's first pts, 48 kHz samples of media time
    first_part_seq: int  # the number of the first LL-HLS part
    discontinuity: bool  # a restart: the first part follows a gap

    @classmethod
    def origin(cls) -> MediaStart:
        return cls(0, 0, False)


def media_start(
    started_at_unix_s: float,
    now_unix_s: float,
    part_target_s: float,
    parts_per_segment: int,
    next_part_seq: int | None = None,
    restarted: bool = False,
) -> MediaStart:
    """The start for a stage (re)starting at ``now_unix_s``; ``next_part_seq`` is one past
    the last part any earlier stage of the Space published (None: unknown or none)."""
    part_samples = round(part_target_s * SAMPLE_RATE_HZ)
    segment_s = part_target_s * parts_per_segment
    elapsed_s = max(0.0, now_unix_s - started_at_unix_s)
    # A microsecond of slack so a start exactly on a boundary is not pushed one further.
    segments = math.ceil(elapsed_s / segment_s - 1e-6)
    seq = max(segments * parts_per_segment, _align_up(next_part_seq or 0, parts_per_segment))
    return MediaStart(seq * part_samples, seq, restarted)


def _align_up(seq: int, parts_per_segment: int) -> int:
    return -(-seq // parts_per_segment) * parts_per_segment
