"""The replay's HLS playlist (RFC 8216bis): written as segments complete, read back when
an interrupted recording resumes.

While the Space is live it is an EVENT playlist (segments are only ever appended); the
seal makes it a VOD with ENDLIST. A segment after a gap in media time (a restarted stage,
a recorder that was down, a paused disk) carries EXT-X-DISCONTINUITY (4.4.4.2), and one
after a changed init segment a new EXT-X-MAP (4.4.4.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

FIRST_MAP_URI = "init.mp4"
_ENDLIST = "#EXT-X-ENDLIST"


@dataclass(frozen=True)
class VodSegment:
    uri: str
    duration_s: float
    discontinuity: bool = False
    map_uri: str | None = None  # a new init segment from this one on


def render(segments: Sequence[VodSegment], target_s: float, ended: bool) -> str:
    target = math.ceil(max([target_s, *(s.duration_s for s in segments)]))
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target}",
        f"#EXT-X-PLAYLIST-TYPE:{'VOD' if ended else 'EVENT'}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        f'#EXT-X-MAP:URI="{FIRST_MAP_URI}"',
    ]
    for seg in segments:
        if seg.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        if seg.map_uri is not None:
            lines.append(f'#EXT-X-MAP:URI="{seg.map_uri}"')
        lines += [f"#EXTINF:{seg.duration_s:.3f},", seg.uri]
    if ended:
        lines.append(_ENDLIST)
    return "\n".join(lines) + "\n"


def parse(text: str) -> list[VodSegment]:
    """The segments of a playlist ``render`` wrote (a torn last entry is left out)."""
    segments: list[VodSegment] = []
    discontinuity, map_uri, duration = False, None, None
    header_map_seen = False
    for line in text.splitlines():
        if line == "#EXT-X-DISCONTINUITY":
            discontinuity = True
        elif line.startswith("#EXT-X-MAP:URI="):
            uri = line.split("=", 1)[1].strip('"')
            if header_map_seen:
                map_uri = uri
            header_map_seen = True
        elif line.startswith("#EXTINF:"):
            try:
                duration = float(line[8:].split(",", 1)[0])
            except ValueError:
                duration = None
        elif line and not line.startswith("#") and duration is not None:
            segments.append(VodSegment(line, duration, discontinuity, map_uri))
            discontinuity, map_uri, duration = False, None, None
    return segments


def is_sealed(text: str) -> bool:
    return text.rstrip().endswith(_ENDLIST)


def seal(text: str) -> str:
    """An EVENT playlist as the VOD it became (the Space ended)."""
    text = text.replace("#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-PLAYLIST-TYPE:VOD")
    return text if is_sealed(text) else text + _ENDLIST + "\n"
