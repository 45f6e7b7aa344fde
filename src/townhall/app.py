"""The townhall process: the store, the stages, the audience server, wired together.

This is the only place that knows every component. The control API calls into it; the
stage publishes into the audience server through ``publish``, which is where audience
worker processes would be fed when there are several.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from townhall.audience.feed import FeedMessage
from townhall.audience.server import AudienceServer
from townhall.config import ServerConfig
from townhall.errors import Conflict, Forbidden
from townhall.recorder import Recorder
from townhall.stage.runtime import StageRuntime
from townhall.store import SpaceRecord, Store
from townhall.tokens import Grant, TokenIssuer

log = logging.getLogger(__name__)


@dataclass
class Townhall:
    config: ServerConfig
    store: Store = field(init=False)
    issuer: TokenIssuer = field(init=False)
    admin_key: str = field(init=False)
    audience: AudienceServer = field(init=False)
    stages: dict[str, StageRuntime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = Store(self.config.db_path)
        self.admin_key = self.store.setting("admin_key", secrets.token_urlsafe(24))
        self.issuer = TokenIssuer(self.store.setting("token_secret", secrets.token_urlsafe(32)))
        self.config.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.audience = AudienceServer(self.config.audience, self.config.recordings_dir)

    # -- admin ---------------------------------------------------------------------
    def check_admin(self, key: str) -> None:
        if not secrets.compare_digest(key.encode(), self.admin_key.encode()):
            raise Forbidden("a valid admin key is required to create spaces")

    def create_space(self, title: str, description: str, scheduled_at: float | None) -> dict[str, object]:
        space = self.store.create_space(title, description, scheduled_at)
        host_token = self.issuer.issue(space.id, "host", "Host", participant_id=space.host_id)
        speaker_token = self.issuer.issue(space.id, "speaker", "Speaker")
        return {
            **self.describe(space),
            "host_link": self.link(space.id, "host", host_token),
            "speaker_link": self.link(space.id, "speak", speaker_token),
            "host_token": host_token,
        }

    def link(self, space_id: str, page: str, token: str) -> str:
        return f"{self.config.control_url}/s/{space_id}/{page}#t={quote(token)}"

    def describe(self, space: SpaceRecord) -> dict[str, object]:
        audience = self.config.audience_url
        return {
            "id": space.id,
            "title": space.title,
            "description": space.description,
            "state": space.state,
            "scheduled_at": space.scheduled_at,
            "started_at": space.started_at,
            "ended_at": space.ended_at,
            "listen_link": f"{self.config.control_url}/s/{space.id}",
            "audience": {
                "ogg": f"{audience}/live/{space.id}.ogg",
                "hls": f"{audience}/live/{space.id}/index.m3u8",
                "events": f"{audience}/events/{space.id}",
            },
            "replay": {
                "ogg": f"{audience}/replay/{space.id}.ogg",
                "hls": f"{audience}/replay/{space.id}/index.m3u8",
            }
            if space.state == "ended"
            else None,
        }

    # -- lifecycle -----------------------------------------------------------------
    def start_space(self, grant: Grant) -> SpaceRecord:
        space = self.store.space(grant.space_id)
        if grant.role != "host":
            raise Forbidden("only the host can start the space")
        if space.state != "scheduled":
            raise Conflict(f"the space is {space.state}; it cannot be started")
        recorder = Recorder(
            self.config.recordings_dir, space.id, self.config.audience.channel.hls, self.config.recorder
        )
        stage = StageRuntime(space.id, self.publish, recorder, self.config.stage)
        stage.start()
        self.stages[space.id] = stage
        self.store.set_state(space.id, "live", time.time())
        log.info("space %s started", space.id)
        return self.store.space(space.id)

    async def end_space(self, grant: Grant) -> SpaceRecord:
        space = self.store.space(grant.space_id)
        if grant.role != "host":
            raise Forbidden("only the host can end the space")
        if space.state != "live":
            raise Conflict(f"the space is {space.state}; only a live space can be ended")
        stage = self.stages.pop(space.id)
        await stage.end()
        self.store.set_state(space.id, "ended", time.time())
        log.info("space %s ended; replay written", space.id)
        return self.store.space(space.id)

    def live_stage(self, space_id: str) -> StageRuntime:
        space = self.store.space(space_id)
        stage = self.stages.get(space_id)
        if stage is None:
            raise Conflict(f"the space is {space.state}; the stage is not open")
        return stage

    def require_moderator(self, grant: Grant) -> None:
        if grant.role not in ("host", "cohost"):
            raise Forbidden(f"a {grant.role} cannot do this; the host or a co-host can")

    def require_stage_role(self, grant: Grant) -> None:
        if grant.role == "listener":
            raise Forbidden("a listener cannot publish audio; raise a hand to be brought up")

    def publish(self, msg: FeedMessage) -> None:
        self.audience.apply(msg)

    async def shutdown(self) -> None:
        await asyncio.gather(*(s.end() for s in self.stages.values()), return_exceptions=True)
