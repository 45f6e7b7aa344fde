"""The LL-HLS packager: fMP4 fragments in; parts, segments and playlists out.

Implements the server side of RFC 8216bis (HLS 2nd edition) low-latency mode:

* every fMP4 fragment from the encoder is one Partial Segment (section 4.4.4.9,
  EXT-X-PART). Audio-only parts are all INDEPENDENT=YES;
* ``parts_per_segment`` parts make one Media Segment (EXTINF), whose bytes are the
  concatenation of its parts, so a segment is never encoded twice;
* the playlist advertises the next part with EXT-X-PRELOAD-HINT (4.4.5.3) and blocking
  reload with EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES (4.4.3.8);
* ``ready(msn, part)`` answers the blocking-reload question of section 6.2.5.2: does
  the playlist now contain segment ``msn`` (and its part ``part``)?
* a part whose number jumps ahead, or that says so (a restarted stage: media time
  jumped), closes the open segment short and starts segment ``seq // parts_per_segment``
  after an EXT-X-DISCONTINUITY (4.4.4.2); EXT-X-DISCONTINUITY-SEQUENCE (4.4.3.3) counts
  the ones that left the window. The segments nobody produced in between are listed
  with EXT-X-GAP (4.4.4.7): a playlist's media sequence numbers must be consecutive,
  and the gap's duration keeps the playlist's time in step with media time. Numbers
  never go backwards: a part behind is dropped.

Pure and synchronous: the caller passes ``now`` (wall-clock seconds, used only for
EXT-X-PROGRAM-DATE-TIME) and decides how to wait. The window is bounded: only the last
``window_segments`` segments (and parts of the last few) are kept.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from townhall.errors import BadRequest


@dataclass(frozen=True)
class HlsConfig:
    part_target_s: float = 0.5
    parts_per_segment: int = 4
    window_segments: int = 8
    # Parts are listed only for recent segments (8216bis 4.4.4.9: remove parts older
    # than three target durations from the live edge).
    parts_window_segments: int = 2

    @property
    def segment_target_s(self) -> float:
        return self.part_target_s * self.parts_per_segment


@dataclass(frozen=True)
class Part:
    msn: int
    index: int
    data: bytes
    duration_s: float


@dataclass
class Segment:
    msn: int
    started_at: float
    parts: list[Part] = field(default_factory=list)
    complete: bool = False
    # Media time jumped before this segment: players reset their decoder and timeline.
    discontinuity: bool = False
    # No stage produced this segment (it was down): listed as EXT-X-GAP so media
    # sequence numbers stay consecutive and the playlist's time matches media time.
    gap: bool = False
    gap_duration_s: float = 0.0
    _data: bytes | None = None

    @property
    def duration_s(self) -> float:
        return self.gap_duration_s if self.gap else sum(p.duration_s for p in self.parts)

    @property
    def data(self) -> bytes:
        if self._data is None or not self.complete:
            self._data = b"".join(p.data for p in self.parts)
        return self._data


@dataclass(frozen=True)
class PartAdded:
    part: Part


@dataclass(frozen=True)
class SegmentCompleted:
    segment: Segment


HlsEvent = PartAdded | SegmentCompleted


def part_uri(msn: int, index: int) -> str:
    return f"p{msn}.{index}.m4s"


def segment_uri(msn: int) -> str:
    return f"s{msn}.m4s"


def _pdt(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HlsPackager:
    def __init__(self, config: HlsConfig | None = None) -> None:
        self.config = config or HlsConfig()
        self.init_segment: bytes | None = None
        self.segments: deque[Segment] = deque()
        self.ended = False
        self._next_msn = 0
        self._next_seq: int | None = None  # the part number expected next
        # EXT-X-DISCONTINUITY tags that slid out of the window with their segments.
        self.discontinuity_sequence = 0
        self._playlist: bytes | None = None

    # -- input -------------------------------------------------------------------
    def add_part(
        self,
        data: bytes,
        duration_s: float,
        now: float,
        seq: int | None = None,
        discontinuity: bool = False,
    ) -> list[HlsEvent]:
        """Add the next part. ``seq`` is its number since the stream began: a packager
        that joins mid-stream starts at the next segment boundary and numbers segments
        from there, as every packager that saw the whole stream does. A part numbered
        ahead of the next one, or marked ``discontinuity``, starts a new segment
        ``seq // parts_per_segment`` after a discontinuity; one numbered behind is
        dropped."""
        if self.ended:
            raise RuntimeError("packager has ended")
        pps = self.config.parts_per_segment
        events: list[HlsEvent] = []
        if seq is None:
            seq = self._next_seq if self._next_seq is not None else self._next_msn * pps
        elif self._next_seq is None:
            msn, index = divmod(seq, pps)
            if index and not discontinuity:
                return []  # mid-segment: its first parts are not ours to number
            self._next_msn = msn
        elif seq < self._next_seq:
            return []  # never backwards: a stale stage's part, or a duplicate
        elif seq > self._next_seq or discontinuity:
            events += self._break_at(seq, now)
            discontinuity = True
        self._next_seq = seq + 1
        current = self._open_segment(now)
        if discontinuity:
            # Marked even as a fresh packager's first segment: every process then counts
            # the same discontinuities for the same segments (4.4.3.3).
            current.discontinuity = True
        part = Part(current.msn, len(current.parts), data, duration_s)
        current.parts.append(part)
        events.append(PartAdded(part))
        if len(current.parts) >= pps:
            events.append(self._complete(current))
        self._playlist = None
        return events

    def _break_at(self, seq: int, now: float) -> list[HlsEvent]:
        """Media time jumped: close the open segment short; the next one starts at
        ``seq``'s segment (or later, never reusing a number) after a discontinuity, with
        gap segments for the numbers in between."""
        events = self._close_open_segment()
        target = max(self._next_msn, seq // self.config.parts_per_segment)
        segment_s = self.config.segment_target_s
        # Only a window's worth: any more would slide straight out again.
        for msn in range(max(self._next_msn, target - self.config.window_segments), target):
            started_at = now - (target - msn) * segment_s
            gap = Segment(msn, started_at, complete=True, gap=True, gap_duration_s=segment_s)
            self._append(gap)
        self._next_msn = target
        return events

    def end(self) -> list[HlsEvent]:
        """Close the last (possibly short) segment and mark the playlist ended."""
        events = self._close_open_segment()
        self.ended = True
        self._playlist = None
        return events

    def _close_open_segment(self) -> list[HlsEvent]:
        """Complete the open segment as it is (short); one with no part yet is dropped and
        its number is free again."""
        if not self.segments or self.segments[-1].complete:
            return []
        last = self.segments[-1]
        if last.parts:
            return [self._complete(last)]
        self.segments.pop()
        self._next_msn = last.msn
        return []

    def _open_segment(self, now: float) -> Segment:
        if not self.segments or self.segments[-1].complete:
            self._append(Segment(self._next_msn, now))
            self._next_msn += 1
        return self.segments[-1]

    def _append(self, segment: Segment) -> None:
        self.segments.append(segment)
        while len(self.segments) > self.config.window_segments:
            if self.segments.popleft().discontinuity:
                self.discontinuity_sequence += 1

    def _complete(self, segment: Segment) -> SegmentCompleted:
        segment.complete = True
        return SegmentCompleted(segment)

    # -- lookups -----------------------------------------------------------------
    def _segment(self, msn: int) -> Segment | None:
        if not self.segments:
            return None
        i = msn - self.segments[0].msn
        return self.segments[i] if 0 <= i < len(self.segments) else None

    def part(self, msn: int, index: int) -> Part | None:
        seg = self._segment(msn)
        return seg.parts[index] if seg and 0 <= index < len(seg.parts) else None

    def segment(self, msn: int) -> Segment | None:
        seg = self._segment(msn)
        return seg if seg and seg.complete and not seg.gap else None

    @property
    def next_part(self) -> tuple[int, int]:
        """The (msn, index) of the part that will be produced next: the preload hint."""
        if not self.segments or self.segments[-1].complete:
            return self._next_msn, 0
        last = self.segments[-1]
        return last.msn, len(last.parts)

    def ready(self, msn: int, part: int | None) -> bool:
        """8216bis 6.2.5.2: does the playlist contain segment ``msn`` / its part ``part``?"""
        if self.ended:
            return True
        nmsn, npart = self.next_part
        if part is None:
            return msn < nmsn
        return (msn, part) < (nmsn, npart)

    def check_blocking_request(self, msn: int | None, part: int | None) -> None:
        if part is not None and msn is None:
            raise BadRequest("_HLS_part requires _HLS_msn")
        if msn is None:
            return
        if msn < 0 or (part is not None and part < 0):
            raise BadRequest("_HLS_msn and _HLS_part must be non-negative")
        # 6.2.5.2: a request more than two segments ahead of the last one is a 400.
        if msn > self.next_part[0] + 2:
            raise BadRequest(f"_HLS_msn={msn} is too far ahead of the live edge")

    def part_is_future(self, msn: int, index: int) -> bool:
        """True when ``(msn, index)`` has not been produced yet and may still be."""
        return not self.ended and (msn, index) >= self.next_part and msn <= self.next_part[0] + 1

    # -- playlist ----------------------------------------------------------------
    def playlist(self) -> bytes:
        if self._playlist is None:
            self._playlist = self._render().encode()
        return self._playlist

    def _render(self) -> str:
        c = self.config
        target = math.ceil(max([c.segment_target_s] + [s.duration_s for s in self.segments]))
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:9",
            f"#EXT-X-TARGETDURATION:{target}",
            f"#EXT-X-PART-INF:PART-TARGET={c.part_target_s:.3f}",
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * c.part_target_s:.3f}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.segments[0].msn if self.segments else 0}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuity_sequence}",
            '#EXT-X-MAP:URI="init.mp4"',
        ]
        parts_from = self._next_msn - c.parts_window_segments
        for seg in self.segments:
            if seg.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(seg.started_at)}")
            if seg.msn >= parts_from:
                lines += [
                    f'#EXT-X-PART:DURATION={p.duration_s:.3f},URI="{part_uri(p.msn, p.index)}",'
                    "INDEPENDENT=YES"
                    for p in seg.parts
                ]
            if seg.gap:
                lines.append("#EXT-X-GAP")
            if seg.complete:
                lines += [f"#EXTINF:{seg.duration_s:.3f},", segment_uri(seg.msn)]
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        else:
            msn, index = self.next_part
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{part_uri(msn, index)}"')
        return "\n".join(lines) + "\n"


def vod_playlist(
    durations_s: list[float], target_s: float, discontinuities: Collection[int] = ()
) -> str:
    """A complete VOD playlist for a recording (8216bis 4.4.3.5, PLAYLIST-TYPE:VOD);
    ``discontinuities``: the segments (by index) that follow a gap in media time."""
    target = math.ceil(max([target_s, *durations_s]))
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-MEDIA-SEQUENCE:0",
        '#EXT-X-MAP:URI="init.mp4"',
    ]
    for msn, duration in enumerate(durations_s):
        if msn in discontinuities:
            lines.append("#EXT-X-DISCONTINUITY")
        lines += [f"#EXTINF:{duration:.3f},", segment_uri(msn)]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
