"""The townhall process: the store, the live Spaces, the audience server, wired together.

This is the only place that knows every component. The control API calls into it; the
stage publishes into ``feed``, whose sinks are the recorder and the audience plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from townhall.audience.plane import AudiencePlane
from townhall.audience.server import AudienceServer
from townhall.config import ServerConfig
from townhall.errors import BadRequest, Conflict, Forbidden, Unavailable
from townhall.feed import FeedSinks
from townhall.live import LiveSpace
from townhall.ratelimit import RateLimiter
from townhall.recorder import Recorder, seal_after_crash
from townhall.room.events import RoomEvent
from townhall.room.state import Role, Room, SpaceState
from townhall.stage.runtime import StageRuntime
from townhall.store import SpaceRecord, Store
from townhall.tokens import Grant, TokenIssuer

log = logging.getLogger(__name__)

# Commands a participant may send about the room: name -> (Room method, takes a target).
COMMANDS: dict[str, tuple[str, bool]] = {
    "raise_hand": ("raise_hand", False),
    "lower_hand": ("lower_hand", False),
    "invite": ("invite", True),
    "withdraw_invitation": ("withdraw_invitation", True),
    "accept_invitation": ("accept_invitation", False),
    "decline_invitation": ("decline_invitation", False),
    "move_to_audience": ("move_to_audience", True),
    "mute": ("mute", True),
    "unmute": ("unmute", True),
    "remove": ("remove", True),
    "add_cohost": ("add_cohost", True),
    "leave": ("leave", False),
}


@dataclass
class Townhall:
    config: ServerConfig
    store: Store = field(init=False)
    issuer: TokenIssuer = field(init=False)
    admin_key: str = field(init=False)
    audience: AudienceServer = field(init=False)
    spaces: dict[str, LiveSpace] = field(default_factory=dict)
    # Every Space's stage publishes here; the recorder and the audience plane are sinks.
    feed: FeedSinks = field(default_factory=FeedSinks)
    recorder: Recorder = field(init=False)
    audience_plane: AudiencePlane | None = None  # set once the audience port is served
    actions_limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(rate_per_s=2.0, burst=10)
    )
    signin_limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(rate_per_s=5.0, burst=50)
    )

    def __post_init__(self) -> None:
        self.store = Store(self.config.db_path)
        self.admin_key = self.store.setting("admin_key", secrets.token_urlsafe(24))
        self.issuer = TokenIssuer(self.store.setting("token_secret", secrets.token_urlsafe(32)))
        self.config.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.audience = AudienceServer(self.config.audience, self.config.recordings_dir)
        self.recorder = Recorder(
            self.config.recordings_dir, self.config.audience.channel.hls, self.config.recorder
        )
        self.feed.add(self.recorder)
        self.audience.presence = self
        for space_id in self.store.end_orphaned(time.time()):
            seal_after_crash(self.config.recordings_dir, space_id)
            log.warning(
                "space %s was live when the last process died; its replay is sealed", space_id
            )

    # -- admin ---------------------------------------------------------------------
    def check_admin(self, key: str) -> None:
        if not secrets.compare_digest(key.encode(), self.admin_key.encode()):
            raise Forbidden("a valid admin key is required to create spaces")

    def create_space(
        self, title: str, description: str, scheduled_at: float | None
    ) -> dict[str, object]:
        space = self.store.create_space(title, description, scheduled_at)
        self.space(space.id)
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
        ended = space.state == "ended"
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
            if ended
            else None,
        }

    # -- the room ------------------------------------------------------------------
    def space(self, space_id: str) -> LiveSpace:
        live = self.spaces.get(space_id)
        if live is None:
            record = self.store.space(space_id)
            room = Room(
                record.id,
                record.host_id,
                record.title,
                description=record.description,
                scheduled_at=record.scheduled_at,
            )
            if record.state != "scheduled":
                # Held by no process any more (a restart): the room is over.
                room.join(record.host_id, "Host", Role.HOST, time.time())
                room.start(record.host_id, time.time())
                room.end(record.host_id, time.time())
            live = self.spaces[space_id] = LiveSpace(room, self.feed)
        return live

    def join(self, grant: Grant) -> LiveSpace:
        live = self.space(grant.space_id)
        if live.room.role_of(grant.participant_id) is None:
            live.apply(
                live.room.join(grant.participant_id, grant.name, Role(grant.role), time.time())
            )
        return live

    def command(self, grant: Grant, name: str, target: str | None) -> list[RoomEvent]:
        if name not in COMMANDS:
            raise BadRequest(f"unknown command {name!r}; known: {', '.join(COMMANDS)}")
        method, takes_target = COMMANDS[name]
        if takes_target and not target:
            raise BadRequest(f"command {name!r} needs a 'target' participant id")
        self.actions_limiter.take(grant.participant_id, time.monotonic(), "room actions")
        live = self.join(grant)
        call = getattr(live.room, method)
        now = time.time()
        events = (
            call(grant.participant_id, target, now)
            if takes_target
            else call(grant.participant_id, now)
        )
        return live.apply(events)

    def react(self, grant: Grant, emoji: str) -> list[RoomEvent]:
        self.actions_limiter.take(grant.participant_id, time.monotonic(), "reactions")
        live = self.join(grant)
        return live.apply(live.room.react(grant.participant_id, emoji, time.time()))

    def sign_in_listener(self, space_id: str, name: str, address: str) -> dict[str, str]:
        self.signin_limiter.take(address, time.monotonic(), "sign-ins from this address")
        live = self.space(space_id)
        if live.room.state is SpaceState.ENDED:
            raise Conflict("the space has ended; the replay is available")
        token = self.issuer.issue(space_id, "listener", name)
        grant = self.issuer.verify(token, space_id)
        return {"token": token, "session_id": grant.participant_id}

    def heartbeat(self, grant: Grant) -> dict[str, int]:
        live = self.space(grant.space_id)
        now = time.monotonic()
        live.counter.heartbeat(grant.participant_id, now)
        return {
            "listening_now": live.counter.listening_now(now),
            "total_tuned_in": live.counter.total_tuned_in(),
        }

    # -- presence reported by the audience port (ListenerPresence) -----------------
    def stream_opened(self, space_id: str, session_id: str, conn_id: str) -> None:
        live = self.spaces.get(space_id)
        if live is not None:
            with contextlib.suppress(Unavailable):  # past the count cap: served, not counted
                live.counter.connection_opened(session_id, conn_id, time.monotonic())

    def stream_closed(
        self, space_id: str, session_id: str, conn_id: str, session_ended: bool
    ) -> None:
        live = self.spaces.get(space_id)
        if live is not None:
            live.counter.connection_closed(session_id, conn_id, time.monotonic())
            if session_ended:
                live.counter.leave(session_id, time.monotonic())

    def seen(self, space_id: str, session_id: str) -> None:
        live = self.spaces.get(space_id)
        if live is not None:
            with contextlib.suppress(Unavailable):
                live.counter.heartbeat(session_id, time.monotonic())

    # -- lifecycle -----------------------------------------------------------------
    async def start_space(self, grant: Grant) -> SpaceRecord:
        live = self.join(grant)
        live.apply(live.room.start(grant.participant_id, time.time()))
        stage = StageRuntime(live.space_id, self.feed, self.config.stage, gate=live.room.in_program)
        stage.start()
        live.stage = stage
        # Opens the audience channel now: an early listener gets 503 + Retry-After
        # ("not started yet") rather than 404 in the moment before the first page.
        live.publish_update(force=True)
        live.start_monitor()
        self.store.set_state(live.space_id, "live", time.time())
        log.info("space %s started", live.space_id)
        return self.store.space(live.space_id)

    async def end_space(self, grant: Grant) -> SpaceRecord:
        live = self.join(grant)
        live.apply(live.room.end(grant.participant_id, time.time()))
        await self._close_stage(live)
        self.store.set_state(live.space_id, "ended", time.time())
        log.info("space %s ended; replay written", live.space_id)
        return self.store.space(live.space_id)

    async def _close_stage(self, live: LiveSpace) -> None:
        stage, live.stage = live.stage, None
        await live.stop_monitor()
        if stage is not None:
            await stage.end()

    async def connect_stage(self, grant: Grant, sdp: str, kind: str) -> tuple[str, str]:
        live = self.join(grant)
        if live.stage is None:
            raise Conflict(f"the space is {live.room.state.value}; the stage is not open")
        if not live.room.may_publish(grant.participant_id):
            raise Forbidden("only people on stage can send audio; raise a hand to be brought up")
        answer = await live.stage.connect(grant.participant_id, grant.name, sdp, kind)
        return answer.sdp, answer.type

    def require_moderator(self, grant: Grant) -> LiveSpace:
        live = self.join(grant)
        role = live.room.role_of(grant.participant_id)
        if role not in (Role.HOST, Role.COHOST):
            raise Forbidden(f"a {grant.role} cannot do this; the host or a co-host can")
        return live

    async def shutdown(self) -> None:
        live = [s for s in self.spaces.values() if s.stage is not None]
        await asyncio.gather(*(self._close_stage(s) for s in live), return_exceptions=True)
        for s in live:
            self.store.set_state(s.space_id, "ended", time.time())
