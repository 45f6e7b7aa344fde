"""The feed: what the stage produces for a Space, and the one type that consumes it.

The stage encodes the program once and publishes it as these messages. Every consumer
is a ``FeedSink``: the audience plane (in this process or in worker processes, each
applying the messages to its own copy of the channel) and the recorder. The messages
are plain picklable dataclasses so the same stream can cross a process boundary
unchanged.

Times are named for their clock: ``at_monotonic_s`` paces the fan-out (it only ever
compares with other monotonic readings of the same process), ``at_unix_s`` is wall
time, which LL-HLS publishes (program date-time) and a replay keeps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OggHeader:
    space_id: str
    data: bytes


@dataclass(frozen=True)
class OggPages:
    space_id: str
    data: bytes
    at_monotonic_s: float


@dataclass(frozen=True)
class HlsInit:
    space_id: str
    data: bytes


@dataclass(frozen=True)
class HlsPart:
    space_id: str
    data: bytes
    duration_s: float
    at_unix_s: float
    # The part's number since the channel began: a process that joins mid-stream numbers
    # its segments from it, exactly as the processes that saw every part.
    seq: int | None = None
    # The first part of a restarted stage: media time jumped (a gap), so the LL-HLS
    # playlist and the replay mark EXT-X-DISCONTINUITY before it (RFC 8216bis 4.4.4.2).
    discontinuity: bool = False


@dataclass(frozen=True)
class RoomUpdate:
    """A coalesced room snapshot (JSON text) for the listeners' SSE stream."""

    space_id: str
    json: str
    at_monotonic_s: float


@dataclass(frozen=True)
class ChannelEnded:
    space_id: str
    at_unix_s: float


FeedMessage = OggHeader | OggPages | HlsInit | HlsPart | RoomUpdate | ChannelEnded


class FeedSink(Protocol):
    """Anything the stage's feed is published to. ``publish`` is called on the stage's
    20 ms clock: it must not block, and should not raise (``FeedSinks`` and the stage
    contain it if it does)."""

    def publish(self, msg: FeedMessage) -> None: ...


class FeedSinks:
    """One sink that publishes to several, in order. A sink that raises is logged (once)
    and counted, and the others still get the message: one broken consumer must not cost
    the listeners or the recording."""

    def __init__(self, *sinks: FeedSink) -> None:
        self.sinks: list[FeedSink] = list(sinks)
        self.errors = 0  # messages some sink raised on
        self._failed: set[int] = set()  # ids of sinks already logged

    def add(self, sink: FeedSink) -> None:
        self.sinks.append(sink)

    def remove(self, sink: FeedSink) -> None:
        self.sinks.remove(sink)

    def publish(self, msg: FeedMessage) -> None:
        for sink in self.sinks:
            try:
                sink.publish(msg)
            except Exception:
                self.errors += 1
                if id(sink) not in self._failed:
                    self._failed.add(id(sink))
                    log.exception("feed sink %r raised on %s; it keeps its place",
                                  sink, type(msg).__name__)  # fmt: skip
