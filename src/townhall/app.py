"""The control plane, composed: the store, the Space service, its views and its reports.

``Control`` is what every composition shares; it knows no stage and no feed of its
own, only the factory and the sink it is given. Two compositions use it:

- ``control.process.ControlProcess``: the control process of ``townhall serve``; each
  Space's stage runs in a stage process behind the supervisor, the room snapshots go to
  the supervisor's link, and the audience and recorder report back through it.
- ``Townhall`` (this module): everything in one process, the mixer included, with the
  recorder and the audience plane as sinks of the feed. Tests run it with a fake stage.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from townhall.audience.plane import AudiencePlane, AudienceStats
from townhall.audience.server import AudienceServer
from townhall.config import ServerConfig
from townhall.control.presence import CountedPresence
from townhall.control.reports import Reports
from townhall.control.service import SpaceService
from townhall.control.views import SpaceViews
from townhall.control.waiting import WaitingRooms
from townhall.feed import FeedSink, FeedSinks
from townhall.live import RoomChanged, Stage, StageFactory
from townhall.recording.recorder import Recorder
from townhall.room.state import Room
from townhall.sessions import SessionSigner, node_session_key
from townhall.stage.runtime import StageRuntime
from townhall.store import Store
from townhall.tokens import TokenIssuer

log = logging.getLogger(__name__)


class Control:
    """The store, the keys, the Space service and its views; ``/metrics`` and
    ``/healthz`` read the methods at the bottom, which a composition may override."""

    def __init__(
        self,
        config: ServerConfig,
        new_stage: StageFactory,
        feed: FeedSink,
        on_change: RoomChanged | None = None,
    ) -> None:
        self.config = config
        self.store = Store(config.db_path)
        self.admin_key = self.store.setting("admin_key", secrets.token_urlsafe(24))
        # Shared by every origin node of a cluster when configured (cluster.token_secret).
        secret = config.cluster.token_secret or self.store.setting(
            "token_secret", secrets.token_urlsafe(32)
        )
        issuer = TokenIssuer(secret)
        # Listener session ids, signed so the audience port counts only the ones issued.
        self.sessions = SessionSigner(node_session_key(secret, config.cluster.session_key_file))
        self.service = SpaceService(
            self.store,
            issuer,
            self.admin_key,
            new_stage,
            feed,
            config.control,
            room_config=config.room,
            counter_config=config.counter,
            on_change=on_change,
            sessions=self.sessions,
        )
        self.views = SpaceViews(config.control_url, config.audience_url)
        self.reports = Reports()
        # Scheduled Spaces' snapshots to the audience port (``waiting.run`` publishes them).
        self.waiting = WaitingRooms(self.service, feed, self.audience_stats, config.control)

    def audience_stats(self) -> AudienceStats:
        return self.reports.audience

    def feed_errors(self) -> int:
        """Feed messages a sink in this process raised on."""
        return 0

    def recording_write_errors(self) -> int:
        return self.reports.recording_write_errors

    def recordings_paused(self) -> dict[str, bool]:
        return {sid: s.state == "paused" for sid, s in self.reports.recordings.items()}

    def longest_tick_gaps(self) -> dict[str, float]:
        """Per Space, the stage clock's longest gap between two ticks (its health)."""
        return {}

    def recent_tick_gaps(self) -> dict[str, float]:
        """The same over the last ``stage.tick_gap_window_s``."""
        return {}


def mixing_stage(config: ServerConfig, feed: FeedSink) -> StageFactory:
    """The real stage in this process: the 20 ms mixer, publishing into ``feed``."""

    def open_stage(room: Room) -> Stage:
        on_air = room.started_at is not None  # else the green room: off the air
        return StageRuntime(room.space_id, feed, config.stage, gate=room.in_program, on_air=on_air)

    return open_stage


class Townhall(Control):
    """Everything in one process: the stage, the recorder and the audience plane too."""

    def __init__(
        self,
        config: ServerConfig,
        # Opens a Space's stage given its feed; the real one unless a test fakes it.
        stage_factory: Callable[[ServerConfig, FeedSink], StageFactory] = mixing_stage,
    ) -> None:
        # Every Space's stage publishes here; the recorder and the audience plane are sinks.
        self.feed = FeedSinks()
        super().__init__(config, stage_factory(config, self.feed), self.feed)
        config.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.audience = AudienceServer(config.audience, config.recordings_dir)
        self.audience.presence = CountedPresence(self.service.counter_of)
        self.audience.sessions = self.sessions
        self.recorder = Recorder(
            config.recordings_dir, config.audience.channel.hls, config.recorder
        )
        self.feed.add(self.recorder)
        self.audience_plane: AudiencePlane | None = None  # set once the audience port is served
        # A process that died left its live Spaces live: they go on from their journals.
        self.service.resume_live_spaces()

    async def shutdown(self) -> None:
        await self.service.shutdown()

    def audience_stats(self) -> AudienceStats:
        # With workers, this process serves nobody: their reports (at most a second old)
        # are the truth.
        plane = self.audience_plane
        return plane.stats() if plane is not None else AudienceStats(())

    def feed_errors(self) -> int:
        return self.feed.errors

    def recording_write_errors(self) -> int:
        return self.recorder.write_errors

    def recordings_paused(self) -> dict[str, bool]:
        return {sid: rec.paused for sid, rec in self.recorder.recordings.items()}
