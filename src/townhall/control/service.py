"""The control plane's application layer: every route calls one method here.

It checks who asks (tokens, the admin key, rate limits), finds or rebuilds the Space in
question, lets its :class:`~townhall.live.LiveSpace` carry the request to the room and
the stage, and keeps the store in step with the lifecycle. It knows no HTTP: it takes
and returns domain values, and refuses with errors that carry their HTTP meaning.

Spaces are held in memory while they matter: a Space with a stage running or a stage
WebSocket open is always held; the others are kept in least-recently-used order up to
``ControlConfig.max_cached_spaces`` and rebuilt from the store when needed again.
Reads (``public_view``, ``room``, ``stage_status``) never add a Space to that cache or
anyone to a room.

Every change to a room is journaled (the store's ``room_journal``: the room's record as
JSON) before the request that made it is answered, so a rebuilt Space is the room as it
was: a control process that starts resumes every live Space from its journal, with the
same host, co-hosts, speakers, mutes, removals, hands and invitations, and opens its
stage again. A crash never ends a Space; only its host does.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from townhall.control.config import ControlConfig
from townhall.errors import Conflict, Forbidden
from townhall.feed import FeedSink
from townhall.live import (
    LiveSpace,
    Outcome,
    RoomChanged,
    SdpAnswer,
    StageFactory,
    Watcher,
    check_command,
)
from townhall.ratelimit import RateLimiter
from townhall.room.counting import CounterConfig, ListenerCounter
from townhall.room.events import ReactionSent, RoomEvent
from townhall.room.record import ParticipantRecord, RoomRecord, record_from_json, record_to_json
from townhall.room.roles import Role, SpaceState
from townhall.room.state import Room, RoomConfig
from townhall.store import SpaceRecord, Store
from townhall.tokens import Grant, TokenIssuer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreatedSpace:
    space: SpaceRecord
    host_token: str
    speaker_token: str


@dataclass(frozen=True)
class SignedIn:
    """A listener session: its token and the session id the audience port counts by."""

    token: str
    session_id: str


@dataclass(frozen=True)
class ListenerCounts:
    listening_now: int
    total_tuned_in: int


class SpaceService:
    def __init__(
        self,
        store: Store,
        issuer: TokenIssuer,
        admin_key: str,
        new_stage: StageFactory,
        feed: FeedSink,
        config: ControlConfig | None = None,
        room_config: RoomConfig | None = None,
        counter_config: CounterConfig | None = None,
        clock: Callable[[], float] = time.time,
        on_change: RoomChanged | None = None,
    ) -> None:
        self._store = store
        self._issuer = issuer
        self._admin_key = admin_key
        self._new_stage = new_stage
        self._feed = feed
        self._config = config or ControlConfig()
        self._room_config = room_config
        self._counter_config = counter_config
        self._clock = clock  # wall time: what the store and the room's events record
        self._on_change = on_change  # after the journal: what else follows a room
        self._actions = RateLimiter.of(self._config.actions_limit)
        self._signins = RateLimiter.of(self._config.signin_limit)
        self._address_reactions = RateLimiter.of(self._config.address_reactions_limit)
        self._address_hands = RateLimiter.of(self._config.address_hands_limit)
        self._address_heartbeats = RateLimiter.of(self._config.address_heartbeats_limit)
        self._heartbeats = RateLimiter.of(self._config.heartbeat_limit)
        self._offers = RateLimiter.of(self._config.offer_limit)
        # (space, participant) with an SDP offer being answered: one at a time each.
        self._offering: set[tuple[str, str]] = set()
        self._held: OrderedDict[str, LiveSpace] = OrderedDict()

    @property
    def config(self) -> ControlConfig:
        return self._config

    # -- spaces ---------------------------------------------------------------------
    def create_space(
        self, admin_key: str, title: str, description: str, scheduled_at: float | None
    ) -> CreatedSpace:
        if not secrets.compare_digest(admin_key.encode(), self._admin_key.encode()):
            raise Forbidden("a valid admin key is required to create spaces")
        space = self._store.create_space(title, description, scheduled_at)
        host = self._issuer.issue(space.id, Role.HOST, "Host", participant_id=space.host_id)
        speaker = self._issuer.issue(space.id, Role.SPEAKER, "Speaker")
        return CreatedSpace(space, host, speaker)

    def space(self, space_id: str) -> SpaceRecord:
        """The Space's record; ``NotFound`` for an unknown id."""
        return self._store.space(space_id)

    def authorize(self, space_id: str, token: str) -> Grant:
        self._store.space(space_id)  # 404 for an unknown space before any token question
        return self._issuer.verify(token, space_id)

    def public_view(self, space_id: str) -> tuple[SpaceRecord, dict[str, object]]:
        """The record and what listeners may see of the room."""
        record = self._store.space(space_id)
        return record, self._view(record).public_snapshot()

    def room(self, grant: Grant) -> dict[str, object]:
        """The whole room, for the people who run it; reading it joins nobody."""
        live = self._view(self._store.space(grant.space_id))
        if live.room.is_removed(grant.participant_id):
            raise Forbidden(f"{grant.participant_id} was removed from this space")
        return live.snapshot()

    # -- the lifecycle --------------------------------------------------------------
    async def start(self, grant: Grant) -> SpaceRecord:
        live = self._join(grant)
        now = self._clock()
        live.apply(live.room.start(grant.participant_id, now))
        live.open_stage(self._new_stage(live.room))
        self._store.set_state(live.space_id, "live", now)
        log.info("space %s started", live.space_id)
        return self._store.space(live.space_id)

    async def end(self, grant: Grant) -> SpaceRecord:
        live = self._join(grant)
        live.apply(live.room.end(grant.participant_id, self._clock()))
        await live.close_stage()
        self._store.set_state(live.space_id, "ended", self._clock())
        log.info("space %s ended; replay written", live.space_id)
        return self._store.space(live.space_id)

    def resume_live_spaces(self) -> list[LiveSpace]:
        """Hold every live Space again, as its journal left it, and reopen its stage.

        Called once when the process starts: the Spaces a dead process held go on, with
        their original start time (media time and the LL-HLS numbering count from it).
        """
        resumed = []
        for record in self._store.live_spaces():
            live = self._hold(record.id)
            if live.room.state is not SpaceState.LIVE:
                # Ended in the journal: the process died before the store heard of it.
                self._store.set_state(record.id, "ended", self._clock())
                log.warning("space %s had ended before the crash; marked ended", record.id)
                continue
            live.open_stage(self._new_stage(live.room))
            resumed.append(live)
            log.info("space %s resumed from its journal", record.id)
        return resumed

    async def shutdown(self) -> None:
        """Close every running stage; their Spaces end with the process."""
        running = [s for s in self._held.values() if s.stage is not None]
        closed = await asyncio.gather(*(s.close_stage() for s in running), return_exceptions=True)
        for live, result in zip(running, closed, strict=True):
            if isinstance(result, BaseException):
                log.error("space %s: the stage did not close cleanly: %r", live.space_id, result)
            self._store.set_state(live.space_id, "ended", self._clock())

    # -- the room -------------------------------------------------------------------
    def command(self, grant: Grant, name: str, target: str | None, address: str = "") -> Outcome:
        check_command(name, target)  # a malformed command costs no rate-limit token
        now = time.monotonic()
        if self._in_audience(grant):
            self._address_hands.take(address, now, "hand commands from this address")
        self._actions.take(grant.participant_id, now, "room actions")
        live = self._join(grant)
        return live.command(grant.participant_id, name, target, self._clock())

    def react(self, grant: Grant, emoji: str, address: str = "") -> Outcome:
        """Tally a reaction. A listener's reaction does not join them to the room (it
        asks for nothing): a crowd of reacting tokens takes no seats."""
        now = time.monotonic()
        self._address_reactions.take(address, now, "reactions from this address")
        self._actions.take(grant.participant_id, now, "reactions")
        live = self._hold(grant.space_id) if self._in_audience(grant) else self._join(grant)
        return live.react(grant.participant_id, emoji, self._clock())

    def invite(self, grant: Grant, role: Role, name: str) -> str:
        """A token that brings its holder on stage in ``role`` when they join."""
        self._moderator(grant)
        return self._issuer.issue(grant.space_id, role, name)

    # -- listeners ------------------------------------------------------------------
    def sign_in(self, space_id: str, name: str, address: str) -> SignedIn:
        record = self._store.space(space_id)
        self._signins.take(address, time.monotonic(), "sign-ins from this address")
        if self._view(record).room.state is SpaceState.ENDED:
            raise Conflict("the space has ended; the replay is available")
        token = self._issuer.issue(space_id, Role.LISTENER, name)
        return SignedIn(token, self._issuer.verify(token, space_id).participant_id)

    def rename_listener(self, grant: Grant, name: str, address: str) -> SignedIn:
        """Give a listener session a name, keeping its id: one person stays one count.

        Until a listener has joined the room (a raised hand) their name is only in
        their token, so a token re-issued with the same id is the rename.
        """
        if grant.role is not Role.LISTENER:
            raise Forbidden("only a listener session can be renamed here")
        self._signins.take(address, time.monotonic(), "sign-ins from this address")
        live = self._view(self._store.space(grant.space_id))
        if live.room.role_of(grant.participant_id) is not None:
            raise Conflict("this session already joined the room under its name")
        pid = grant.participant_id
        token = self._issuer.issue(grant.space_id, Role.LISTENER, name, participant_id=pid)
        return SignedIn(token, pid)

    def heartbeat(self, grant: Grant, address: str = "") -> ListenerCounts:
        now = time.monotonic()
        self._address_heartbeats.take(address, now, "heartbeats from this address")
        self._heartbeats.take(grant.participant_id, now, "heartbeats")
        counter = self._hold(grant.space_id).counter
        counter.heartbeat(grant.participant_id, now)
        return ListenerCounts(counter.listening_now(now), counter.total_tuned_in())

    def counter_of(self, space_id: str) -> ListenerCounter | None:
        """The listener counter of a held Space (the audience port reports into it)."""
        live = self._held.get(space_id)
        return live.counter if live is not None else None

    # -- the stage ------------------------------------------------------------------
    async def connect_stage(self, grant: Grant, sdp: str, kind: str) -> SdpAnswer:
        live = self._join(grant)
        if live.stage is None:
            raise Conflict(f"the space is {live.room.state.value}; the stage is not open")
        if not live.room.may_publish(grant.participant_id):
            raise Forbidden("only people on stage can send audio; raise a hand to be brought up")
        # Every offer costs the stage a peer connection and its sockets: one at a time
        # per participant, and a bounded rate of them.
        key = (grant.space_id, grant.participant_id)
        if key in self._offering:
            raise Conflict("an SDP offer of yours is still being answered; wait for its answer")
        self._offers.take(grant.participant_id, time.monotonic(), "SDP offers")
        self._offering.add(key)
        try:
            return await live.stage.connect(grant.participant_id, grant.name, sdp, kind)
        finally:
            self._offering.discard(key)

    def stage_status(self, grant: Grant) -> list[dict[str, object]]:
        """The stage's meters, for the host and co-hosts; reading them joins nobody."""
        live = self._view(self._store.space(grant.space_id))
        if live.room.is_removed(grant.participant_id):
            raise Forbidden(f"{grant.participant_id} was removed from this space")
        # The room's view of a participant wins over their token: they may have been
        # promoted or demoted since it was issued.
        role = live.room.role_of(grant.participant_id) or grant.role
        _check_moderator(role)
        return live.stage_status()

    def watch(self, space_id: str, token: str) -> Watcher:
        """Open a stage WebSocket's feed; opening it joins the room, as the page is there."""
        grant = self.authorize(space_id, token)
        return self._join(grant).watch(grant.participant_id)

    def unwatch(self, watcher: Watcher) -> None:
        live = self._held.get(watcher.space_id)  # a watched Space is never evicted
        if live is not None:
            live.unwatch(watcher)

    def held_spaces(self) -> list[LiveSpace]:
        return list(self._held.values())

    def held(self, space_id: str) -> LiveSpace | None:
        """The Space if this process holds it (news from a stage is for held Spaces)."""
        return self._held.get(space_id)

    # -- holding Spaces -------------------------------------------------------------
    def _join(self, grant: Grant) -> LiveSpace:
        live = self._hold(grant.space_id)
        live.join(grant.participant_id, grant.name, grant.role, self._clock())
        return live

    def _in_audience(self, grant: Grant) -> bool:
        """A listener (by the room's view when the Space is held, else by their token)."""
        live = self._held.get(grant.space_id)
        role = live.room.role_of(grant.participant_id) if live is not None else None
        return (role or grant.role) is Role.LISTENER

    def _moderator(self, grant: Grant) -> LiveSpace:
        live = self._join(grant)
        _check_moderator(live.room.role_of(grant.participant_id) or grant.role)
        return live

    def _hold(self, space_id: str) -> LiveSpace:
        live = self._held.get(space_id)
        if live is None:
            live = self._rebuild(self._store.space(space_id))
            self._evict(room_for=1)
            self._held[space_id] = live
        self._held.move_to_end(space_id)
        return live

    def _view(self, record: SpaceRecord) -> LiveSpace:
        """The held Space, or one rebuilt from its record for this read and then let go."""
        return self._held.get(record.id) or self._rebuild(record)

    def _evict(self, room_for: int) -> None:
        """Let go of the least recently used idle Spaces; running ones always stay."""
        excess = len(self._held) + room_for - self._config.max_cached_spaces
        if excess <= 0:
            return
        idle = [space_id for space_id, live in self._held.items() if live.idle]
        for space_id in idle[:excess]:
            del self._held[space_id]

    def _rebuild(self, record: SpaceRecord) -> LiveSpace:
        return LiveSpace(
            self._room(record),
            self._feed,
            ListenerCounter(self._counter_config),
            update_interval_s=self._config.room_update_interval_s,
            watcher_queue_messages=self._config.watcher_queue_messages,
            on_change=self._changed,
            watcher_push_interval_s=self._config.watcher_push_interval_s,
            max_watcher_connections=self._config.max_stage_socket_connections,
        )

    def _changed(self, live: LiveSpace, events: list[RoomEvent]) -> None:
        # Reactions alone change only the tallies: a lost tally is not worth a disk
        # commit per reaction; the next real change (or the end) journals them.
        if not all(isinstance(e, ReactionSent) for e in events):
            self._store.journal_room(
                live.space_id, record_to_json(live.room.record()), self._clock()
            )
        if self._on_change is not None:
            self._on_change(live, events)

    def _room(self, record: SpaceRecord) -> Room:
        if (journaled := self._journaled(record)) is not None:
            return journaled
        if record.state == "scheduled":
            return Room(
                record.id,
                record.host_id,
                record.title,
                description=record.description,
                scheduled_at=record.scheduled_at,
                config=self._room_config,
            )
        # No journal (a store from before it): the host alone, in the state the store says.
        host_only = RoomRecord(
            record.id,
            record.host_id,
            record.title,
            record.description,
            record.scheduled_at,
            SpaceState(record.state),
            record.started_at,
            participants=(ParticipantRecord(record.host_id, "Host", Role.HOST, stage_seq=1),),
        )
        return Room.restore(host_only, self._room_config)

    def _journaled(self, record: SpaceRecord) -> Room | None:
        """The room as last journaled, if that agrees with the store's lifecycle (or is
        one step ahead of it: ended in the journal, live in the store)."""
        text = self._store.journaled_room(record.id)
        if text is None:
            return None
        try:
            room = Room.restore(record_from_json(text), self._room_config)
        except ValueError:
            log.exception("space %s: the room journal is unreadable; rebuilt without it", record.id)
            return None
        if room.state.value == record.state or (
            record.state == "live" and room.state is SpaceState.ENDED
        ):
            return room
        return None


def _check_moderator(role: Role) -> None:
    if role not in (Role.HOST, Role.COHOST):
        raise Forbidden(f"a {role.value} cannot do this; the host or a co-host can")
