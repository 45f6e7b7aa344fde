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
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from townhall.control.config import ControlConfig
from townhall.errors import Conflict, Forbidden, NotFound, TownhallError, Unavailable
from townhall.feed import FeedSink
from townhall.live import (
    DeadMicrophones,
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
from townhall.room.record import (
    LinkRecord,
    ParticipantRecord,
    RoomRecord,
    record_from_json,
    record_to_json,
)
from townhall.room.roles import Role, SpaceState
from townhall.room.state import Room, RoomConfig
from townhall.sessions import SessionSigner
from townhall.store import SpaceRecord, Store
from townhall.tokens import Grant, TokenIssuer, link_ttl_s

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


@dataclass(frozen=True)
class IssuedLink:
    """A link's token and its record (who it is for, as what)."""

    token: str
    link: LinkRecord


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
        sessions: SessionSigner | None = None,
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
        # Live Spaces another node holds now (it took them over): their requests go
        # there; this node's journal of them is older. At most one per Space in the store.
        self._handed_over: set[str] = set()
        # Ends of abandoned Spaces in flight, held so the loop does not drop them.
        self._ending: set[asyncio.Task[None]] = set()
        # Signs listener session ids (a random one per test service if none is given).
        self._sessions = sessions or SessionSigner(secrets.token_bytes(32))
        # Awaited once a Space's end is journaled, before the end is answered: in a
        # cluster, until the ended room's copy is in the cluster, so that a node dying
        # right after answering leaves no live copy another node would take over.
        self.ended_copied: Callable[[str], Awaitable[object]] | None = None

    @property
    def config(self) -> ControlConfig:
        return self._config

    # -- spaces ---------------------------------------------------------------------
    def create_space(
        self,
        admin_key: str,
        title: str,
        description: str,
        scheduled_at: float | None,
        listed: bool = True,
        host_name: str = "Host",
        speaker_name: str = "Speaker",
    ) -> CreatedSpace:
        if not secrets.compare_digest(admin_key.encode(), self._admin_key.encode()):
            raise Forbidden("a valid admin key is required to create spaces")
        space = self._store.create_space(title, description, scheduled_at, listed, host_name)
        host = self._issuer.issue(
            space.id, Role.HOST, host_name, participant_id=space.host_id, ttl_s=self._ttl_s(space)
        )
        # Registered in the room (journaled), which is then let go like any read.
        name = speaker_name[: (self._room_config or RoomConfig()).max_name_chars]
        speaker = self._issue_link(self._view(space), space.host_id, Role.SPEAKER, name)
        return CreatedSpace(space, host, speaker.token)

    def space(self, space_id: str) -> SpaceRecord:
        """The Space's record; ``NotFound`` for an unknown id."""
        return self._store.space(space_id)

    def knows(self, space_id: str) -> bool:
        """Whether the Space is this node's (created or taken over here, not handed over)."""
        if space_id in self._handed_over:
            return False
        try:
            self._store.space(space_id)
        except NotFound:
            return False
        return True

    def authorize(self, space_id: str, token: str, holder: str | None = None) -> Grant:
        """The token's grant. A link's token must be of the link's current generation
        and, once a client claimed the link, come with that client's ``holder`` key."""
        record = self._store.space(space_id)  # 404 for an unknown space before any token
        grant = self._issuer.verify(token, space_id)
        if grant.role in (Role.SPEAKER, Role.COHOST):
            room = self._view(record).room
            room.check_link(grant.participant_id, grant.link_generation)
            room.check_holder(grant.participant_id, _digest(holder))
        return grant

    def public_view(self, space_id: str) -> tuple[SpaceRecord, dict[str, object]]:
        """The record and what listeners may see of the room."""
        record = self._store.space(space_id)
        return record, self._view(record).public_snapshot()

    def listed_spaces(self, state: str) -> list[SpaceRecord]:
        """The public front page's list: listed Spaces in ``state``, bounded. Not those
        handed over to another node: this node's record of them is older (the holder's
        front page lists them)."""
        limit = self._config.max_listed_spaces
        records = self._store.listed_spaces(state, limit + len(self._handed_over))
        return [r for r in records if r.id not in self._handed_over][:limit]

    def listeners(self, grant: Grant) -> list[dict[str, object]]:
        """The listeners the room knows by name (a hand, a reaction), for moderators;
        reading them joins nobody."""
        live = self._view(self._store.space(grant.space_id))
        if live.room.is_removed(grant.participant_id):
            raise Forbidden(f"{grant.participant_id} was removed from this space")
        _check_moderator(live.room.role_of(grant.participant_id) or grant.role)
        hands = set(live.room.hand_queue())
        return [
            {"id": pid, "name": name, "hand_raised": pid in hands}
            for pid, name in live.room.audience()[: self._config.max_listed_listeners]
        ]

    def room(self, grant: Grant) -> dict[str, object]:
        """The room as ``grant`` may see it, with ``you``; reading it joins nobody.

        Listeners get the public snapshot (no hand queue, no invitations: who else
        raised a hand is not theirs to know) and their own state in ``you``; the
        people on stage and the moderators get the whole room.
        """
        live = self._view(self._store.space(grant.space_id))
        if live.room.is_removed(grant.participant_id):
            raise Forbidden(f"{grant.participant_id} was removed from this space")
        return self._room_for(live, grant)

    def _room_for(
        self, live: LiveSpace, grant: Grant, full: dict[str, object] | None = None
    ) -> dict[str, object]:
        pid, room = grant.participant_id, live.room
        role = room.role_of(pid) or grant.role
        if role is Role.LISTENER:
            snap = live.public_snapshot()
        else:
            snap = full if full is not None else live.snapshot()
        you = {
            "participant_id": pid,
            "role": role.value,
            "name": room.name_of(pid) or grant.name,
            "hand_raised": pid in room.hand_queue(),
            "invited": pid in room.pending_invitations(),
        }
        return {**snap, "you": you}

    # -- the lifecycle --------------------------------------------------------------
    async def start(self, grant: Grant, force: bool = False) -> SpaceRecord:
        """Go live. From the green room, the stage already running goes on the air; a
        seat the audience would not hear refuses it (409 listing them) unless ``force``."""
        live = self._join(grant)
        host = live.room.role_of(grant.participant_id) is Role.HOST
        dead = live.dead_mics() if live.room.green_room and host and not force else []
        if dead:
            raise DeadMicrophones(dead)
        now = self._clock()
        live.apply(live.room.start(grant.participant_id, now))
        if live.stage is None:
            live.open_stage(self._new_stage(live.room))
        else:
            live.go_live(now)
        self._store.set_state(live.space_id, "live", now)
        log.info("space %s started", live.space_id)
        return self._store.space(live.space_id)

    def open_green_room(self, grant: Grant) -> dict[str, object]:
        """Open the stage before the start (the host): the people on stage check their
        microphones and hear each other; listeners keep waiting and hear nothing."""
        live = self._join(grant)
        live.apply(live.room.open_green_room(grant.participant_id, self._clock()))
        live.open_green_room(self._new_stage(live.room))
        log.info("space %s: green room open", live.space_id)
        return live.snapshot()

    def _abandoned(self, live: LiveSpace) -> None:
        task = asyncio.get_running_loop().create_task(self._end_abandoned(live))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end_abandoned(self, live: LiveSpace) -> None:
        if live.room.state is not SpaceState.LIVE:
            return
        live.apply(live.room.end_abandoned(self._clock()))
        if self.ended_copied is not None:
            await self.ended_copied(live.space_id)
        await live.close_stage()
        self._store.set_state(live.space_id, "ended", self._clock())
        log.warning(
            "space %s ended by itself: nobody on stage for %.0f s; replay written",
            live.space_id,
            live.room.config.abandon_end_s,
        )

    async def end(self, grant: Grant) -> SpaceRecord:
        live = self._join(grant)
        live.apply(live.room.end(grant.participant_id, self._clock()))
        if self.ended_copied is not None:
            await self.ended_copied(live.space_id)
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
            if record.id in self._handed_over:
                continue
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

    def adopt(self, space: SpaceRecord, room_json: str) -> LiveSpace | None:
        """Hold a live Space another node held, as its copy in the cluster says, and open
        its stage; None if this node has the Space already or its room is not live."""
        room = record_from_json(room_json)
        if room.state is not SpaceState.LIVE or room.space_id != space.id:
            return None
        record = replace(space, state=room.state.value, started_at=room.started_at)
        if not self._store.adopt_space(record) and space.id not in self._handed_over:
            return None
        self._handed_over.discard(space.id)
        self._store.journal_room(space.id, room_json, self._clock())
        live = self._hold(space.id)
        live.open_stage(self._new_stage(live.room))
        log.warning("space %s taken over from another node", space.id)
        return live

    def hand_over(self, space_id: str) -> LiveSpace | None:
        """Another node holds ``space_id`` now: this node stops answering for it (its
        requests go to the holder) and lets its room go, without ending it. The stage
        sockets open here are closed (their clients reconnect, and reach the holder).
        Returns the Space if it was held here, for its stage to be closed."""
        self._handed_over.add(space_id)
        live = self._held.pop(space_id, None)
        if live is not None:
            for watcher in list(live.watchers):
                live.watchers.discard(watcher)
                watcher.cut_off(1012, "this Space is held by another node now; reconnect")
        return live

    def end_as_copied(self, space_id: str, room_json: str) -> None:
        """Mark a Space ended as the cluster's copy of its ended room says (it ended on
        the node that took it over)."""
        self._handed_over.discard(space_id)
        self._held.pop(space_id, None)
        self._store.journal_room(space_id, room_json, self._clock())
        self._store.set_state(space_id, "ended", self._clock())

    def handed_over(self, space_id: str) -> bool:
        return space_id in self._handed_over

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
        outcome = live.command(grant.participant_id, name, target, self._clock())
        # The answer shows the room as the caller may see it (a listener: the public one).
        return replace(outcome, room=self._room_for(live, grant, outcome.room))

    def react(self, grant: Grant, emoji: str, address: str = "") -> Outcome:
        """Tally a reaction. A listener's reaction does not join them to the room (it
        asks for nothing): a crowd of reacting tokens takes no seats."""
        now = time.monotonic()
        self._address_reactions.take(address, now, "reactions from this address")
        self._actions.take(grant.participant_id, now, "reactions")
        live = self._hold(grant.space_id) if self._in_audience(grant) else self._join(grant)
        return live.react(grant.participant_id, emoji, self._clock())

    def invite(self, grant: Grant, role: Role, name: str) -> str:
        """A link's token that brings one new person on stage in ``role`` when they join;
        only the host makes co-hosts this way (the room's rules)."""
        live = self._moderator(grant)
        return self._issue_link(live, grant.participant_id, role, name).token

    def post_late_message(self, grant: Grant, message: str) -> Outcome:
        """The host's (or a co-host's) word to the listeners waiting for the start; it
        reaches them with the next snapshot, published at once."""
        self._actions.take(grant.participant_id, time.monotonic(), "room actions")
        live = self._moderator(grant)
        posted = live.room.post_late_message(grant.participant_id, message, self._clock())
        outcome = live.apply(posted)
        live.publish_update()
        return outcome

    def waiting_rooms(self, limit: int) -> list[SpaceRecord]:
        """The scheduled Spaces whose listeners may be waiting, soonest first."""
        return self._store.scheduled_spaces(limit)

    def waiting_snapshot(
        self, record: SpaceRecord, waiting_now: int, start_spread_s: float
    ) -> dict[str, object]:
        """A scheduled Space's public snapshot with its waiting count; holds nobody."""
        live = self._view(record)
        live.waiting_now, live.start_spread_s = waiting_now, start_spread_s
        return live.public_snapshot()

    # -- listeners ------------------------------------------------------------------
    def sign_in(
        self, space_id: str, name: str, address: str, previous: str | None = None
    ) -> SignedIn:
        """A new listener session; ``previous``, the token of the session this client had
        (if it sends one), must not be one the room removed."""
        record = self._store.space(space_id)
        self._signins.take(address, time.monotonic(), "sign-ins from this address")
        if self._view(record).room.state is SpaceState.ENDED:
            raise Conflict("the space has ended; the replay is available")
        self._refuse_removed_session(record, previous)
        # The listener's participant id is their signed session id: the audience port
        # counts it only because the server issued it (townhall.sessions).
        session_id = self._sessions.issue(space_id)
        token = self._issuer.issue(space_id, Role.LISTENER, name, participant_id=session_id)
        return SignedIn(token, session_id)

    def rename_listener(self, grant: Grant, name: str, address: str) -> SignedIn:
        """Give a listener session a name, keeping its id: one person stays one count.

        Until a listener has joined the room (a raised hand) their name is only in
        their token, so a token re-issued with the same id is the rename.
        """
        if grant.role is not Role.LISTENER:
            raise Forbidden("only a listener session can be renamed here")
        self._signins.take(address, time.monotonic(), "sign-ins from this address")
        live = self._view(self._store.space(grant.space_id))
        if live.room.is_removed(grant.participant_id):
            raise Forbidden(f"{grant.participant_id} was removed from this space")
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
    async def connect_stage(
        self, grant: Grant, sdp: str, kind: str, holder: str | None = None
    ) -> SdpAnswer:
        """Connect to the stage; ``holder`` is the client's key for a link's single holder."""
        self._claim(grant, holder)
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

    def watch(self, space_id: str, token: str, holder: str | None = None) -> Watcher:
        """Open a stage WebSocket's feed; opening it joins the room, as the page is there.

        Only the people on stage and the moderators hold one: it carries the whole room.
        A listener (by the room's view, which wins over the token) is refused.
        """
        grant = self.authorize(space_id, token, holder)
        live = self._hold(space_id)
        if (live.room.role_of(grant.participant_id) or grant.role) is Role.LISTENER:
            raise Forbidden(
                "the stage socket is for people on stage and moderators; listeners read"
                " GET /room and the audience port's events"
            )
        self._claim(grant, holder)
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

    # -- links ----------------------------------------------------------------------
    def links(self, grant: Grant) -> list[LinkRecord]:
        """The invitation links of the Space, for the host and co-hosts."""
        live = self._moderator(grant)
        return live.room.links(grant.participant_id)

    def revoke_link(self, grant: Grant, participant_id: str) -> LinkRecord:
        """The host stops a link for good; whoever holds it is signed out at once."""
        live = self._join(grant)
        live.apply(live.room.revoke_link(grant.participant_id, participant_id, self._clock()))
        return self._link_record(live, participant_id)

    def reissue_link(self, grant: Grant, participant_id: str) -> IssuedLink:
        """A new link for the same person; the old one stops working at once."""
        live = self._join(grant)
        live.apply(live.room.reissue_link(grant.participant_id, participant_id, self._clock()))
        return self._link_token(live, self._link_record(live, participant_id))

    def _issue_link(self, live: LiveSpace, by: str, role: Role, name: str) -> IssuedLink:
        pid = secrets.token_urlsafe(9)
        live.apply(live.room.issue_link(by, pid, role, name, self._clock()))
        return self._link_token(live, self._link_record(live, pid))

    def _link_token(self, live: LiveSpace, link: LinkRecord) -> IssuedLink:
        token = self._issuer.issue(
            live.space_id,
            link.role,
            link.name,
            participant_id=link.participant_id,
            ttl_s=self._ttl_s(self._store.space(live.space_id)),
            link_generation=link.generation,
        )
        return IssuedLink(token, link)

    @staticmethod
    def _link_record(live: LiveSpace, pid: str) -> LinkRecord:
        link = live.room.link_of(pid)
        assert link is not None, "the room just issued or changed it"
        return link

    def _ttl_s(self, record: SpaceRecord) -> float:
        return link_ttl_s(
            self._issuer.default_ttl_s,
            self._clock(),
            record.scheduled_at,
            self._config.max_space_duration_s,
        )

    def _claim(self, grant: Grant, holder: str | None) -> None:
        """Bind a link to the first client that takes the stage with it (by a digest of
        the key it keeps), refuse any other; before joining, so a refused second opener
        changes nothing in the room."""
        live = self._hold(grant.space_id)
        if events := live.room.claim_link(grant.participant_id, _digest(holder), self._clock()):
            live.apply(events)

    def _refuse_removed_session(self, record: SpaceRecord, previous: str | None) -> None:
        if not previous:
            return
        try:
            grant = self._issuer.verify(previous, record.id)
        except TownhallError:
            return  # an expired or foreign session is no session of this Space
        if self._view(record).room.is_removed(grant.participant_id):
            raise Forbidden("you were removed from this space")

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
        self._refuse_handed_over(space_id)
        live = self._held.get(space_id)
        if live is None:
            live = self._rebuild(self._store.space(space_id))
            self._evict(room_for=1)
            self._held[space_id] = live
            if live.room.green_room:
                # A green room this process did not open (it restarted): open the stage
                # again; a stage process still running ignores the OpenStage.
                live.open_green_room(self._new_stage(live.room))
        self._held.move_to_end(space_id)
        return live

    def _view(self, record: SpaceRecord) -> LiveSpace:
        """The held Space, or one rebuilt from its record for this read and then let go."""
        self._refuse_handed_over(record.id)
        return self._held.get(record.id) or self._rebuild(record)

    def _refuse_handed_over(self, space_id: str) -> None:
        # This node's room of it is older than the holder's: never answer from it.
        if space_id in self._handed_over:
            raise Unavailable("another node holds this Space now; ask again", 2.0)

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
            on_abandoned=self._abandoned,
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


def _digest(holder: str | None) -> str:
    """What the room keeps of a holder key: enough to compare, not the key."""
    return hashlib.sha256(holder.encode()).hexdigest()[:32] if holder else ""


def _check_moderator(role: Role) -> None:
    if role not in (Role.HOST, Role.COHOST):
        raise Forbidden(f"a {role.value} cannot do this; the host or a co-host can")
