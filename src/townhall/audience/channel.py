"""One Space as the audience sees it: the Ogg fan-out, the LL-HLS window, room events.

Thin state around the pure cores (``Fanout``, ``HlsPackager``) plus the asyncio
futures that blocking LL-HLS requests wait on. Every request waiting for the same
playlist version or the same part awaits one future and is answered from one build of
the bytes: request collapsing inside the origin.

Before the program begins (a scheduled Space's waiting room, or the moment between Go
live and the stage's first page) the channel already exists, from the room snapshots:
Ogg listeners are held (``held``: their response head sent, no audio byte) and join
the fan-out with the stream's header; playlist requests wait on ``on_air``.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field

from townhall.audience.fanout import Fanout, FanoutConfig, Sink
from townhall.feed import (
    ChannelEnded,
    FeedMessage,
    HlsInit,
    HlsPart,
    OggHeader,
    OggPages,
    RoomUpdate,
)
from townhall.media.hls import HlsConfig, HlsPackager

WaitKey = tuple[int, int | None]  # (msn, part) of a blocking request


@dataclass(frozen=True)
class ChannelConfig:
    fanout: FanoutConfig = field(default_factory=FanoutConfig)
    events: FanoutConfig = field(
        default_factory=lambda: FanoutConfig(
            flush_interval_s=0.25, join_burst_s=0.0, fresh_page_wait_s=0.0
        )
    )
    hls: HlsConfig = field(default_factory=HlsConfig)
    max_waiters: int = 200_000
    # Retry-After for a player refused before the start: the time left to the schedule,
    # at least ``waiting_retry_after_s`` (also when late or unscheduled), jittered by as
    # much again so a refused crowd does not come back at one instant, and capped.
    waiting_retry_after_s: float = 5.0
    max_waiting_retry_after_s: float = 300.0


class Channel:
    def __init__(self, space_id: str, config: ChannelConfig) -> None:
        self.space_id = space_id
        self.config = config
        self.ogg = Fanout(config.fanout)
        self.events = Fanout(config.events)
        self.events.header = b"retry: 2000\n\n"
        self.hls = HlsPackager(config.hls)
        self.ended = False
        # When this process saw the end (monotonic); the server drops the channel later.
        self.ended_at: float | None = None
        self.last_room_json = "{}"
        # The playlist response per Cache-Control value, kept with the body it was built
        # from: the body's identity says whether it is still current.
        self.playlist_replies: dict[str, tuple[bytes, bytes]] = {}
        self._waiters: dict[WaitKey, asyncio.Future[None]] = {}
        self.waiting = 0
        # Ogg listeners who came before the program: their head is sent, they join the
        # fan-out once the stream's header arrives (the server releases them in slices).
        self.held: dict[int, Sink] = {}
        self.scheduled_at: float | None = None  # from the room snapshot, unix time
        # Streams (by key) that asked not to count among the waiting (``?count=0``). An
        # Ogg stream only with a signed session id (its value): it stands for a waiting
        # page that holds no stream to start, which one session can claim once.
        self.uncounted_ogg: dict[int, str] = {}
        self.uncounted_events: set[int] = set()
        self._on_air: asyncio.Future[None] | None = None

    def apply(self, msg: FeedMessage) -> None:
        if self.ended:
            return  # nothing after the end may reach listeners (or raise into the stage)
        match msg:
            case OggHeader(data=data):
                # A later header is a restarted stage's new logical stream (chained Ogg):
                # it reaches connected listeners in line with the pages.
                self.ogg.restart_stream(data, self.ogg.newest_at)
            case OggPages(data=data, at_monotonic_s=at):
                self.ogg.publish(data, at)
            case HlsInit(data=data):
                self.hls.init_segment = data
            case HlsPart(data=data, duration_s=d, at_unix_s=at, seq=seq, discontinuity=disc):
                self.hls.add_part(data, d, at, seq, disc)
                self._wake()
            case RoomUpdate(json=text, at_monotonic_s=at):
                self.last_room_json = text
                if not self.ogg.header:
                    self.scheduled_at = _scheduled_at(text)
                self.events.publish(f"event: room\ndata: {text}\n\n".encode(), at)
            case ChannelEnded():
                self.ended = True
                self.hls.end()
                self._wake()

    def wait_for(self, msn: int, part: int | None) -> asyncio.Future[None]:
        """A future that resolves once the playlist holds ``(msn, part)``; shared by key."""
        fut = self._waiters.get((msn, part))
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._waiters[(msn, part)] = fut
        return fut

    def _wake(self) -> None:
        ready = [k for k in self._waiters if self.hls.ready(*k)]
        for key in ready:
            fut = self._waiters.pop(key)
            if not fut.done():
                fut.set_result(None)
        if self._on_air is not None and self.hls_on_air and not self._on_air.done():
            self._on_air.set_result(None)

    @property
    def hls_on_air(self) -> bool:
        """A player can start: a complete segment is listed (a playlist of parts only is
        "empty" to hls.js), or the channel ended (the final playlist is the answer)."""
        return self.ended or (
            self.hls.init_segment is not None and any(s.complete for s in self.hls.segments)
        )

    def on_air(self) -> asyncio.Future[None]:
        """Resolves once ``hls_on_air``; one future shared by every waiting request."""
        if self._on_air is None:
            self._on_air = asyncio.get_running_loop().create_future()
            if self.hls_on_air:
                self._on_air.set_result(None)
        return self._on_air

    def retry_after_s(self, now_unix: float, rng: random.Random) -> float:
        """When a player refused before the start should come back: at the schedule."""
        c = self.config
        left = (self.scheduled_at or now_unix) - now_unix
        base = max(left, c.waiting_retry_after_s)
        return min(base + rng.uniform(0, c.waiting_retry_after_s), c.max_waiting_retry_after_s)


def _scheduled_at(room_json: str) -> float | None:
    try:
        value = json.loads(room_json).get("scheduled_at")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None
