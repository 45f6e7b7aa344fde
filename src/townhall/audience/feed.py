"""Messages from the stage to the audience plane.

The stage produces these once per Space; every audience process (in-process, or a
worker on the same port) applies them to its own copy of the channel. They are plain
picklable dataclasses so the same stream can cross a process boundary unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OggHeader:
    space_id: str
    data: bytes


@dataclass(frozen=True)
class OggPages:
    space_id: str
    data: bytes
    at: float


@dataclass(frozen=True)
class HlsInit:
    space_id: str
    data: bytes


@dataclass(frozen=True)
class HlsPart:
    space_id: str
    data: bytes
    duration_s: float
    at: float


@dataclass(frozen=True)
class RoomUpdate:
    """A coalesced room snapshot (JSON text) for the listeners' SSE stream."""

    space_id: str
    json: str
    at: float


@dataclass(frozen=True)
class ChannelEnded:
    space_id: str
    at: float


FeedMessage = OggHeader | OggPages | HlsInit | HlsPart | RoomUpdate | ChannelEnded
