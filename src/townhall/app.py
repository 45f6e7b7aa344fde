"""The townhall process, composed: the store, the Space service, the audience server.

This is the only place that knows every component. It builds them and hands each the
few others it needs; the control API calls the service (``control/service.py``), the
stage publishes into the audience plane through ``publish``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from townhall.audience.feed import FeedMessage
from townhall.audience.server import AudienceServer
from townhall.audience.workers import WorkerPool
from townhall.config import ServerConfig
from townhall.control.presence import CountedPresence
from townhall.control.service import SpaceService
from townhall.control.views import SpaceViews
from townhall.live import Stage, StageFactory
from townhall.recorder import Recorder, seal_after_crash
from townhall.stage.runtime import ProgramGate, Publish, StageRuntime
from townhall.store import Store
from townhall.tokens import TokenIssuer

log = logging.getLogger(__name__)


def recording_stage(config: ServerConfig, publish: Publish) -> StageFactory:
    """The real stage: the 20 ms mixer, publishing the program and recording it."""

    def open_stage(space_id: str, gate: ProgramGate) -> Stage:
        recorder = Recorder(
            config.recordings_dir, space_id, config.audience.channel.hls, config.recorder
        )
        return StageRuntime(space_id, publish, recorder, config.stage, gate=gate)

    return open_stage


@dataclass
class Townhall:
    config: ServerConfig
    # Opens a Space's stage given where to publish; the real one unless a test fakes it.
    stage_factory: Callable[[ServerConfig, Publish], StageFactory] = recording_stage
    store: Store = field(init=False)
    admin_key: str = field(init=False)
    service: SpaceService = field(init=False)
    views: SpaceViews = field(init=False)
    audience: AudienceServer = field(init=False)
    feed_sinks: list[Callable[[FeedMessage], None]] = field(default_factory=list)
    audience_pool: WorkerPool | None = None  # the audience worker processes, if any

    def __post_init__(self) -> None:
        config = self.config
        self.store = Store(config.db_path)
        self.admin_key = self.store.setting("admin_key", secrets.token_urlsafe(24))
        issuer = TokenIssuer(self.store.setting("token_secret", secrets.token_urlsafe(32)))
        self.service = SpaceService(
            self.store,
            issuer,
            self.admin_key,
            self.stage_factory(config, self.publish),
            self.publish,
            config.control,
            room_config=config.room,
            counter_config=config.counter,
        )
        self.views = SpaceViews(config.control_url, config.audience_url)
        config.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.audience = AudienceServer(config.audience, config.recordings_dir)
        self.feed_sinks.append(self.audience.apply)
        self.audience.presence = CountedPresence(self.service.counter_of)
        for space_id in self.store.end_orphaned(time.time()):
            seal_after_crash(config.recordings_dir, space_id)
            log.warning(
                "space %s was live when the last process died; its replay is sealed", space_id
            )

    def publish(self, msg: FeedMessage) -> None:
        for sink in self.feed_sinks:
            sink(msg)

    async def shutdown(self) -> None:
        await self.service.shutdown()
