"""The audience plane as the rest of townhall sees it: a feed sink with stats and a close.

Two implementations: ``AudienceServer`` serves the audience port in this process;
``WorkerPool`` serves it from worker processes sharing the port (what ``townhall
serve``'s supervisor runs). Either is a sink of the feed, and /metrics reads its stats
without knowing which it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from townhall.feed import FeedMessage


@dataclass(frozen=True)
class ChannelStats:
    """One channel's fan-out at a glance, for /metrics; several processes' add up."""

    space_id: str
    ogg_listeners: int
    event_listeners: int
    interval_s: float  # the flush interval: above the configured one, it is coalescing
    pass_s: float  # the last full round's cost
    # Ogg streams held open before the program begins (the waiting room).
    held_listeners: int = 0
    # Of the streams above, those that asked not to be counted among the waiting
    # (``?count=0``): a waiting page's held Ogg stream (its SSE stream counts it) and a
    # moderator's SSE stream (not someone waiting).
    uncounted_ogg_listeners: int = 0
    uncounted_event_listeners: int = 0

    def merged(self, other: ChannelStats) -> ChannelStats:
        return ChannelStats(
            self.space_id,
            self.ogg_listeners + other.ogg_listeners,
            self.event_listeners + other.event_listeners,
            max(self.interval_s, other.interval_s),
            max(self.pass_s, other.pass_s),
            self.held_listeners + other.held_listeners,
            self.uncounted_ogg_listeners + other.uncounted_ogg_listeners,
            self.uncounted_event_listeners + other.uncounted_event_listeners,
        )


@dataclass(frozen=True)
class WorkerLoad:
    """One audience worker process as its last report described it."""

    pid: int
    loop_lag_s: float


@dataclass(frozen=True)
class AudienceStats:
    channels: tuple[ChannelStats, ...]
    # The worker processes serving the port; None when this process serves it itself.
    workers: tuple[WorkerLoad, ...] | None = None
    worker_restarts: int = 0


class AudiencePlane(Protocol):
    def publish(self, msg: FeedMessage) -> None: ...
    def stats(self) -> AudienceStats: ...
    async def close(self) -> None: ...


class ListenerPresence(Protocol):
    """Where the audience port reports who is listening (the honest counters).

    A session is one person's player: the web player names it (``?sid=``, the signed
    session id of its sign-in, shared by its tabs and reconnects); a stream without a
    valid one is an anonymous session of its own; a playlist poll without one is an
    anonymous session keyed by address and agent, so the many requests of one HLS
    player stay one session (``townhall.sessions``; docs/counting.md).
    """

    def stream_opened(self, space_id: str, session_id: str, conn_id: str) -> None: ...
    def stream_closed(
        self, space_id: str, session_id: str, conn_id: str, session_ended: bool
    ) -> None: ...
    def seen(self, space_id: str, session_id: str) -> None: ...
