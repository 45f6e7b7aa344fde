"""The waiting rooms: what listeners who arrive before the start see, from the feed.

A listener who opens a link before the start holds the audience port's SSE stream, and
a player pointed at the live URLs is held there until the program begins (see
``audience/server.py``). For that, every audience worker needs the Space's channel
before its stage exists. So the control plane publishes each scheduled Space's public
snapshot on the feed, exactly as a live Space's monitor does (a ``RoomUpdate``: control
→ hub → audience workers): the title, the host, the scheduled time, the host's message
(``late_message``), how many are waiting (``waiting_now``), and over how long the
waiting pages start playing at Go live (``start_spread_s``: at least
``min_start_spread_s``, more for a bigger crowd).

``waiting_now`` is what the audience port serves for the Space before the start: its
SSE streams plus its held and open Ogg streams, summed over the workers, as their last
report said (about once a second), less the streams opened with ``?count=0``. A player
holds one Ogg stream; a web page holds its SSE stream and, where the browser plays
Ogg/Opus, an Ogg stream marked ``count=0`` with its signed session id; so each is one.
The stage page's SSE stream is marked too: a moderator is not waiting. An LL-HLS player
polls, and is not counted.

The pages that start at Go live are the SSE streams (unmarked) less the sessions holding
a marked Ogg stream. That subtraction sets the start's spread, so the port honours the
mark on Ogg only with a valid ``sid`` and counts each session once: a client without
one (``curl .../live/S.ogg?count=0``) takes nothing off, and each page taken off costs a
sign-in, which is rate-limited per address.

Cost, per tick: one store query (the scheduled Spaces, soonest first, bounded), and a
snapshot built only for a Space held in memory (cheap) or one whose count changed or
whose refresh is due. Nothing is published that did not change, except the periodic
refresh. A Space that leaves the list because it was cancelled gets ``ChannelEnded``:
its waiters are told, and its channel is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from townhall.audience.plane import AudienceStats, ChannelStats
from townhall.control.config import ControlConfig
from townhall.control.service import SpaceService
from townhall.feed import ChannelEnded, FeedSink, RoomUpdate
from townhall.store import SpaceRecord

log = logging.getLogger(__name__)


def waiting_counts(stats: AudienceStats) -> dict[str, tuple[int, int]]:
    """Per Space, the people waiting (the audience port's SSE, held and open Ogg streams,
    less those opened with ``?count=0``) and, of them, the web pages that hold no stream
    yet (SSE without a held Ogg stream): the ones that open a stream at Go live."""
    return {c.space_id: (_waiting(c), _pages_to_start(c)) for c in stats.channels}


def _waiting(c: ChannelStats) -> int:
    streams = c.event_listeners + c.ogg_listeners + c.held_listeners
    return max(0, streams - c.uncounted_ogg_listeners - c.uncounted_event_listeners)


def _pages_to_start(c: ChannelStats) -> int:
    # ``uncounted_ogg_listeners``: distinct signed sessions, not streams (see above).
    pages = c.event_listeners - c.uncounted_event_listeners
    return max(0, pages - c.uncounted_ogg_listeners)


def start_spread_s(pages: int, config: ControlConfig) -> float:
    """The window over which ``pages`` waiting pages start: a ramp the port keeps up with."""
    wanted = pages / config.start_joins_per_s
    return round(min(config.max_start_spread_s, max(config.min_start_spread_s, wanted)), 1)


@dataclass
class WaitingRooms:
    service: SpaceService
    feed: FeedSink
    audience: Callable[[], AudienceStats]
    config: ControlConfig = field(default_factory=ControlConfig)
    # Per Space published: (snapshot text, when, waiting count it showed).
    _published: dict[str, tuple[str, float, int]] = field(default_factory=dict)
    # Requests the control process answered (``CountedRequests``): the waiting room's
    # budget is that a waiting crowd adds none.
    control_requests: int = 0

    def tick(self, now: float) -> int:
        """Publish what changed; returns how many waiting rooms are open."""
        counts = waiting_counts(self.audience())
        records = self.service.waiting_rooms(self.config.max_waiting_spaces)
        open_ids = set()
        for record in records:
            open_ids.add(record.id)
            waiting, pages = counts.get(record.id, (0, 0))
            self._publish(record, waiting, start_spread_s(pages, self.config), now)
        for space_id in [s for s in self._published if s not in open_ids]:
            del self._published[space_id]
            self._closed(space_id)
        return len(records)

    def _publish(self, record: SpaceRecord, waiting: int, spread_s: float, now: float) -> None:
        last = self._published.get(record.id)
        held = self.service.held(record.id) is not None
        due = last is None or now - last[1] >= self.config.waiting_refresh_s
        if not (held or due or last is None or last[2] != waiting):
            return  # a room not held does not change but by its count
        text = json.dumps(
            self.service.waiting_snapshot(record, waiting, spread_s),
            separators=(",", ":"),
            ensure_ascii=False,
        )
        if last is not None and text == last[0] and not due:
            return
        self._published[record.id] = (text, now, waiting)
        self.feed.publish(RoomUpdate(record.id, text, at_monotonic_s=time.monotonic()))

    def _closed(self, space_id: str) -> None:
        """A Space left the list: live now (its stage publishes), or cancelled."""
        if self.service.space(space_id).state == "ended":
            self.feed.publish(ChannelEnded(space_id, at_unix_s=time.time()))

    async def run(self) -> None:
        """Tick until cancelled; a failing tick is logged, and the next one tries again."""
        while True:
            try:
                self.tick(time.monotonic())
            except Exception:
                log.exception("waiting rooms: a tick failed")
            await asyncio.sleep(self.config.waiting_update_interval_s)


class CountedRequests:
    """ASGI middleware: counts the control process's HTTP requests into ``rooms``."""

    def __init__(self, app: ASGIApp, rooms: WaitingRooms) -> None:
        self.app, self.rooms = app, rooms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.rooms.control_requests += 1
        await self.app(scope, receive, send)
