"""The townhall process, composed: the store, the Space service, the feed and its sinks.

This is the only place that knows every component. It builds them and hands each the
few others it needs: the control API calls the service (``control/service.py``); every
Space's stage publishes into ``feed``, whose sinks are the recorder and the audience
plane (registered once the audience port is served).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from townhall.audience.plane import AudiencePlane
from townhall.audience.server import AudienceServer
from townhall.config import ServerConfig
from townhall.control.presence import CountedPresence
from townhall.control.service import SpaceService
from townhall.control.views import SpaceViews
from townhall.feed import FeedSink, FeedSinks
from townhall.live import Stage, StageFactory
from townhall.recording.recorder import Recorder, seal_after_crash
from townhall.stage.runtime import ProgramGate, StageRuntime
from townhall.store import Store
from townhall.tokens import TokenIssuer

log = logging.getLogger(__name__)


def mixing_stage(config: ServerConfig, feed: FeedSink) -> StageFactory:
    """The real stage: the 20 ms mixer, publishing the program into the feed."""

    def open_stage(space_id: str, gate: ProgramGate) -> Stage:
        return StageRuntime(space_id, feed, config.stage, gate=gate)

    return open_stage


@dataclass
class Townhall:
    config: ServerConfig
    # Opens a Space's stage given its feed; the real one unless a test fakes it.
    stage_factory: Callable[[ServerConfig, FeedSink], StageFactory] = mixing_stage
    store: Store = field(init=False)
    admin_key: str = field(init=False)
    service: SpaceService = field(init=False)
    views: SpaceViews = field(init=False)
    audience: AudienceServer = field(init=False)
    # Every Space's stage publishes here; the recorder and the audience plane are sinks.
    feed: FeedSinks = field(default_factory=FeedSinks)
    recorder: Recorder = field(init=False)
    audience_plane: AudiencePlane | None = None  # set once the audience port is served

    def __post_init__(self) -> None:
        config = self.config
        self.store = Store(config.db_path)
        self.admin_key = self.store.setting("admin_key", secrets.token_urlsafe(24))
        issuer = TokenIssuer(self.store.setting("token_secret", secrets.token_urlsafe(32)))
        self.service = SpaceService(
            self.store,
            issuer,
            self.admin_key,
            self.stage_factory(config, self.feed),
            self.feed,
            config.control,
            room_config=config.room,
            counter_config=config.counter,
        )
        self.views = SpaceViews(config.control_url, config.audience_url)
        config.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.audience = AudienceServer(config.audience, config.recordings_dir)
        self.audience.presence = CountedPresence(self.service.counter_of)
        self.recorder = Recorder(
            config.recordings_dir, config.audience.channel.hls, config.recorder
        )
        self.feed.add(self.recorder)
        for space_id in self.store.end_orphaned(time.time()):
            seal_after_crash(config.recordings_dir, space_id)
            log.warning(
                "space %s was live when the last process died; its replay is sealed", space_id
            )

    async def shutdown(self) -> None:
        await self.service.shutdown()
