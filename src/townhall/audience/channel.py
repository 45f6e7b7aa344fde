"""One Space as the audience sees it: the Ogg fan-out, the LL-HLS window, room events.

Thin state around the pure cores (``Fanout``, ``HlsPackager``) plus the asyncio
futures that blocking LL-HLS requests wait on. Every request waiting for the same
playlist version or the same part awaits one future and is answered from one build of
the bytes: request collapsing inside the origin.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from townhall.audience.fanout import Fanout, FanoutConfig
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
