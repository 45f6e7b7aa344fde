"""One Space while this process holds it: the room rules, the stage, counts, watchers.

The room (pure rules) decides; this adapter feeds it commands, applies what its events
mean to the media plane (a demoted or removed speaker is cut from the stage at once),
tells the people on stage over their WebSockets, and publishes a coalesced snapshot to
the audience's SSE stream a few times a second, never once per event.

A command goes one way: :meth:`LiveSpace.command` looks its name up in ``COMMANDS``,
calls the Room method the row names, and hands the events to :meth:`LiveSpace.apply`,
which returns them with the room as it is afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Protocol

from townhall.errors import BadRequest, Conflict
from townhall.feed import FeedSink, RoomUpdate
from townhall.room.counting import ListenerCounter
from townhall.room.events import (
    LinkReissued,
    LinkRevoked,
    ParticipantRemoved,
    ReactionSent,
    RoomEvent,
    SpeakerMovedToAudience,
)
from townhall.room.roles import Role, SpaceState
from townhall.room.state import AbandonPhase, Room, abandon_phase

# Someone on stage with no signal for this long shows as a dead microphone.
DEAD_MIC_AFTER_S = 3.0
# A level above this (dBFS) in the last moments counts as speaking (the indicator).
SPEAKING_DBFS = -45.0
# Silence shorter than this still counts as speaking (the gaps between words).
SPEAKING_GAP_S = 0.3


# -- the stage, as the control plane sees it -------------------------------------------
class StageSeat(Protocol):
    """One person connected to the stage (``stage.member.StageMember``)."""

    @property
    def mic_checked(self) -> bool: ...
    @property
    def level(self) -> float: ...
    def silent_for(self, now: float) -> float: ...


class SdpAnswer(Protocol):
    @property
    def sdp(self) -> str: ...
    @property
    def type(self) -> str: ...


class Stage(Protocol):
    """What the control plane asks of a Space's stage (``stage.runtime.StageRuntime``)."""

    @property
    def members(self) -> Mapping[str, StageSeat]: ...
    @property
    def ticks(self) -> int: ...
    @property
    def clock_slips(self) -> int: ...
    def start(self) -> None: ...
    async def end(self) -> None: ...
    async def connect(self, participant_id: str, name: str, sdp: str, kind: str) -> SdpAnswer: ...
    async def disconnect(self, participant_id: str) -> None: ...
    def status(self) -> list[dict[str, object]]: ...
    def go_live(self, started_at_unix_s: float) -> None:
        """A stage opened for the green room (mixing, publishing nothing) goes on the
        air: its program reaches the feed from now on, in media time from this start."""
        ...


class DeadMicrophones(Conflict):
    """Go live refused: people on stage would be silent. ``force`` goes live anyway."""

    code = "dead_microphones"

    def __init__(self, dead: list[dict[str, object]]) -> None:
        names = ", ".join(str(d["name"] or d["id"]) for d in dead)
        super().__init__(f"no sound from {names}; go live anyway with force: true")
        self.dead = dead

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "dead_mics": self.dead}


# Opens the stage of one Space, given its room (whose ``in_program`` gates the mix and
# whose ``started_at`` starts media time) -> a stage not yet started. The composition
# root decides what a stage is (the mixer in this process, or one in a stage process).
StageFactory = Callable[[Room], Stage]
# Called after events changed a Space's room (the journal, the stage's program set).
RoomChanged = Callable[["LiveSpace", list[RoomEvent]], None]


# -- commands ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OwnCommand:
    """A command about the caller themselves: ``method(room, by, now)``."""

    method: Callable[[Room, str, float], list[RoomEvent]]
    needs_target = False

    def run(self, room: Room, by: str, _target: str | None, now: float) -> list[RoomEvent]:
        return self.method(room, by, now)


@dataclass(frozen=True)
class TargetedCommand:
    """A command about another participant: ``method(room, by, target, now)``."""

    method: Callable[[Room, str, str, float], list[RoomEvent]]
    needs_target = True

    def run(self, room: Room, by: str, target: str | None, now: float) -> list[RoomEvent]:
        assert target, "check_command refuses a targeted command without a target"
        return self.method(room, by, target, now)


RoomCommand = OwnCommand | TargetedCommand

# Commands a participant may send about the room, by their wire name.
COMMANDS: Mapping[str, RoomCommand] = MappingProxyType(
    {
        "raise_hand": OwnCommand(Room.raise_hand),
        "lower_hand": OwnCommand(Room.lower_hand),
        "invite": TargetedCommand(Room.invite),
        "withdraw_invitation": TargetedCommand(Room.withdraw_invitation),
        "accept_invitation": OwnCommand(Room.accept_invitation),
        "decline_invitation": OwnCommand(Room.decline_invitation),
        "move_to_audience": TargetedCommand(Room.move_to_audience),
        "mute": TargetedCommand(Room.mute),
        "unmute": TargetedCommand(Room.unmute),
        "remove": TargetedCommand(Room.remove),
        "add_cohost": TargetedCommand(Room.add_cohost),
        "leave": OwnCommand(Room.leave),
        "dismiss_hand": TargetedCommand(Room.dismiss_hand),
    }
)


def check_command(name: str, target: str | None) -> RoomCommand:
    """The row for ``name``, if it exists and has the target it needs."""
    row = COMMANDS.get(name)
    if row is None:
        raise BadRequest(f"unknown command {name!r}; known: {', '.join(COMMANDS)}")
    if row.needs_target and not target:
        raise BadRequest(f"command {name!r} needs a 'target' participant id")
    return row


@dataclass(frozen=True)
class Outcome:
    """What a command did: its events and the room right after them."""

    events: list[RoomEvent]
    room: dict[str, object]


# -- the people on stage -------------------------------------------------------------
# Messages where only the newest matters (the whole room, the meters): a socket holds
# one of each and sends it at most every ``push_interval_s``, however many changes a
# flood makes meanwhile.
COALESCED_MESSAGES = frozenset({"room", "levels"})


class WatcherEnd(enum.Enum):
    """Why the server closes a stage WebSocket."""

    TOO_SLOW = "too slow; reconnect to resync"
    SUPERSEDED = "a newer connection of yours took over"


_watcher_seq = itertools.count()


@dataclass(eq=False)  # identity: each socket is its own watcher in a set
class Watcher:
    """A stage participant's WebSocket: what is waiting to be sent to it, bounded.

    Discrete messages (events, news of the stage) queue in order up to ``max_messages``;
    a client that lets them pile up past that is stuck and is closed (it resyncs from the
    snapshot it gets on reconnect). Snapshots and meters are coalesced: only the newest
    of each waits, so a flood of changes costs a socket one message per interval.
    """

    space_id: str
    participant_id: str
    max_messages: int = 64
    push_interval_s: float = 0.1
    ending: WatcherEnd | None = None
    seq: int = field(default_factory=lambda: next(_watcher_seq))
    _messages: deque[dict[str, Any]] = field(default_factory=deque)
    _latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    _next_latest_at: float = 0.0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def dropped(self) -> bool:
        return self.ending is WatcherEnd.TOO_SLOW

    # (close code, reason) once a moderation decision cut this socket off.
    closed: tuple[int, str] | None = None

    def offer(self, message: dict[str, Any]) -> None:
        if self.ending is not None or self.closed is not None:
            return
        if message.get("type") in COALESCED_MESSAGES:
            self._latest[message["type"]] = message
        elif len(self._messages) >= self.max_messages:
            self.end(WatcherEnd.TOO_SLOW)
            return
        else:
            self._messages.append(message)
        self._wake.set()

    def cut_off(self, code: int, reason: str) -> None:
        """A moderation decision took this socket's view of the room away: nothing more
        is sent, and the socket is closed with ``code``."""
        self.closed = (code, reason)
        self._messages.clear()
        self._latest.clear()
        self._wake.set()

    def end(self, why: WatcherEnd) -> None:
        if self.ending is None:
            self.ending = why
            self._messages.clear()
            self._latest.clear()
        self._wake.set()

    def drain(self) -> list[dict[str, Any]]:
        """Everything waiting, the coalesced ones last, regardless of the interval."""
        out = [*self._messages, *self._latest.values()]
        self._messages.clear()
        self._latest.clear()
        return out

    def _ready(self, now: float) -> list[dict[str, Any]]:
        out = list(self._messages)
        self._messages.clear()
        if self._latest and now >= self._next_latest_at:
            out += self._latest.values()
            self._latest.clear()
            self._next_latest_at = now + self.push_interval_s
        return out

    async def next_batch(self) -> list[dict[str, Any]]:
        """The messages to send now, in order; empty once the socket is to be closed."""
        loop = asyncio.get_running_loop()
        while self.ending is None and self.closed is None:
            if batch := self._ready(loop.time()):
                return batch
            self._wake.clear()
            wait = self._next_latest_at - loop.time() if self._latest else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
        return []


@dataclass
class LiveSpace:
    room: Room
    feed: FeedSink
    counter: ListenerCounter = field(default_factory=ListenerCounter)
    stage: Stage | None = None
    watchers: set[Watcher] = field(default_factory=set)
    update_interval_s: float = 0.25
    watcher_queue_messages: int = 64
    on_change: RoomChanged | None = None
    watcher_push_interval_s: float = 0.1
    max_watcher_connections: int = 3  # per participant
    # The recording's last news for the host and co-hosts (a paused one), re-sent to a
    # moderator's socket when it opens.
    recording: dict[str, Any] | None = None
    _monitor: asyncio.Task[None] | None = None
    _last_update: str = ""
    # Stage disconnects in flight, held so the loop does not drop them half done.
    _cutting: set[asyncio.Task[None]] = field(default_factory=set)
    # Called (once) when nobody on stage came back for ``room.abandon_end_s``: the owner
    # ends the Space. Not awaited: the monitor that notices is stopped by the end.
    on_abandoned: Callable[[LiveSpace], None] | None = None
    # Listeners are told the host is reconnecting (everyone on stage is gone or silent).
    reconnecting: bool = False
    # Since when (monotonic) nobody on stage is connected and audible; None: someone is.
    _unattended_since: float | None = None
    # Since when the stage process is away (lost, not yet restarted): the abandon clock
    # stands still meanwhile, since nobody can be connected to a stage that is not there.
    _stage_away_since: float | None = None
    _abandoned: bool = False
    # Listeners on the audience port waiting for the start, and the window over which
    # the waiting pages start playing at Go live (control/waiting.py sets both).
    waiting_now: int = 0
    start_spread_s: float = 0.0

    @property
    def space_id(self) -> str:
        return self.room.space_id

    @property
    def idle(self) -> bool:
        """Nothing but the room is held: no stage running, nobody watching."""
        return self.stage is None and not self.watchers

    # -- commands and events --------------------------------------------------------
    def join(self, pid: str, name: str, role: Role, now: float) -> list[RoomEvent]:
        """Admit ``pid`` with the role their token grants, unless already present."""
        if self.room.role_of(pid) is not None:
            return []
        return self.apply(self.room.join(pid, name, role, now)).events

    def command(self, by: str, name: str, target: str | None, now: float) -> Outcome:
        return self.apply(check_command(name, target).run(self.room, by, target, now))

    def react(self, by: str, emoji: str, now: float) -> Outcome:
        if self.room.role_of(by) is None:
            return self.apply(self.room.react_from_audience(by, emoji, now))
        return self.apply(self.room.react(by, emoji, now))

    def apply(self, events: list[RoomEvent]) -> Outcome:
        for event in events:
            if isinstance(event, _CUTS_FROM_STAGE):
                self._cut_from_stage(event.participant_id)
            if (close := _closes_sockets(event)) is not None:
                self._close_sockets(*close)
            if isinstance(event, ReactionSent):
                continue  # the tallies travel in the (coalesced) room snapshot
            self._tell_watchers(
                {"type": "event", "event": type(event).__name__, **_event_json(event)}
            )
        room = self.snapshot()
        if events:
            self._tell_watchers({"type": "room", "room": room})
            if self.on_change is not None:
                self.on_change(self, events)
        return Outcome(events, room)

    def _cut_from_stage(self, pid: str) -> None:
        if self.stage is None:
            return
        task = asyncio.get_running_loop().create_task(self.stage.disconnect(pid))
        self._cutting.add(task)
        task.add_done_callback(self._cutting.discard)

    def _close_sockets(self, pid: str, code: int, reason: str) -> None:
        """Stop telling ``pid``'s sockets anything, now, and have them closed: a person
        moderation took off the stage or out of the Space keeps no view of the room."""
        for watcher in [w for w in self.watchers if w.participant_id == pid]:
            self.watchers.discard(watcher)
            watcher.cut_off(code, reason)

    def _tell_watchers(self, message: dict[str, Any]) -> None:
        for watcher in list(self.watchers):
            watcher.offer(message)

    def _tell_moderators(self, message: dict[str, Any]) -> None:
        for watcher in list(self.watchers):
            if self._is_moderator(watcher.participant_id):
                watcher.offer(message)

    def _is_moderator(self, pid: str) -> bool:
        return self.room.role_of(pid) in (Role.HOST, Role.COHOST)

    # -- news from the other processes ----------------------------------------------
    def stage_lost(self) -> None:
        """The stage process died; pages reconnect at once instead of waiting to notice."""
        if self._stage_away_since is None:
            self._stage_away_since = time.monotonic()
        self._tell_watchers({"type": "stage", "state": "restarting"})

    def stage_restarted(self, now: float) -> list[RoomEvent]:
        """A new stage process took over: nobody on stage is heard until their audio
        reaches it again (a fresh mic check)."""
        self._resume_abandon_clock(time.monotonic())
        self._tell_watchers({"type": "stage", "state": "restarting"})
        return self.apply(self.room.reset_mic_checks(now)).events

    def recording_changed(self, state: str, detail: str) -> None:
        """Tell the host and co-hosts what happens to the recording (a full disk pauses
        it; the live audio goes on)."""
        if state == "recording" and self.recording is None:
            return  # nothing was said about it, so there is nothing to take back
        self.recording = {"type": "recording", "state": state, "detail": detail}
        self._tell_moderators(self.recording)

    # -- watchers -------------------------------------------------------------------
    def watch(self, pid: str) -> Watcher:
        """A new socket for ``pid``; it starts with the whole room, to sync from.

        Past ``max_watcher_connections`` of theirs the oldest is closed, not the new one:
        a reloaded page or a changed network leaves a dead socket the server has not
        noticed yet, and the person must get back in at once.
        """
        watcher = Watcher(
            self.space_id, pid, self.watcher_queue_messages, self.watcher_push_interval_s
        )
        self.watchers.add(watcher)
        theirs = sorted((w for w in self.watchers if w.participant_id == pid), key=_seq)
        for old in theirs[: max(0, len(theirs) - self.max_watcher_connections)]:
            old.end(WatcherEnd.SUPERSEDED)
            self.watchers.discard(old)
        watcher.offer({"type": "hello", "you": pid, "room": self.snapshot()})
        if self.recording is not None and self._is_moderator(pid):
            watcher.offer(self.recording)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    # -- the stage ------------------------------------------------------------------
    def open_stage(self, stage: Stage) -> None:
        self.stage = stage
        stage.start()
        # Opens the audience channel now: an early listener gets 503 + Retry-After
        # ("not started yet") rather than 404 in the moment before the first page.
        self.publish_update(force=True)
        self.start_monitor()

    def open_green_room(self, stage: Stage) -> None:
        """The stage opens before the start: it mixes for the people on stage and
        publishes nothing until :meth:`go_live`."""
        if self.stage is None:
            self.open_stage(stage)

    def go_live(self, started_at_unix_s: float) -> None:
        """The green room's stage goes on the air (the room has started)."""
        if self.stage is not None:
            self.stage.go_live(started_at_unix_s)
            self.publish_update(force=True)

    def dead_mics(self) -> list[dict[str, object]]:
        """The people on stage the audience would not hear: not connected to the stage,
        no mic check passed, or silent; a seat muted on purpose is not a dead mic."""
        status = {str(s["id"]): s for s in self.stage_status()}
        dead = []
        for seat in self._seats():
            if seat["muted"]:
                continue
            why = _why_unheard(status.get(str(seat["id"])))
            if why:
                dead.append({"id": seat["id"], "name": seat["name"], "reason": why})
        return dead

    async def close_stage(self) -> None:
        stage, self.stage = self.stage, None
        await self.stop_monitor()
        if stage is not None:
            await stage.end()

    # -- the monitor: mic checks, meters, coalesced audience updates -----------------
    def start_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = asyncio.create_task(
                self._run_monitor(), name=f"monitor-{self.space_id}"
            )

    async def stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        self.publish_update(force=True)

    async def _run_monitor(self) -> None:
        while True:
            self.check_microphones(time.monotonic())
            self.check_attendance(time.monotonic())
            self._tell_watchers({"type": "levels", "members": self.stage_status()})
            self.publish_update()
            await asyncio.sleep(self.update_interval_s)

    def check_microphones(self, now: float) -> None:
        """The server has really received this person's audio: pass their mic check."""
        if self.stage is None or not (self.room.state is SpaceState.LIVE or self.room.green_room):
            return
        for pid, member in list(self.stage.members.items()):
            if not (member.mic_checked and self.room.may_publish(pid)):
                continue
            if events := self.room.mic_check_passed(pid, now):
                self.apply(events)

    # -- abandoned Spaces -------------------------------------------------------------
    def check_attendance(self, now: float) -> None:
        """Run the abandon clock: nobody on stage connected and audible for
        ``room.abandon_warning_s`` -> ``reconnecting``; for ``abandon_end_s`` -> ended.

        The clock is derived from the stage's status, held in this process only: a
        control process that restarts starts it again from zero."""
        if self.stage is None or self.room.state is not SpaceState.LIVE:
            return
        if self._stage_away_since is not None:
            return  # a restarting stage: nobody can be connected; the clock stands still
        if self._attended():
            self._unattended_since = None
        elif self._unattended_since is None:
            self._unattended_since = now
        since = self._unattended_since
        phase = abandon_phase(None if since is None else now - since, self.room.config)
        self.reconnecting = phase is not AbandonPhase.ATTENDED
        if phase is AbandonPhase.ABANDONED and not self._abandoned:
            self._abandoned = True
            if self.on_abandoned is not None:
                self.on_abandoned(self)

    def _attended(self) -> bool:
        status = {str(s["id"]): s for s in self.stage_status()}
        return any(
            _connected(status.get(str(seat["id"])))
            and (seat["muted"] or not _why_unheard(status.get(str(seat["id"]))))
            for seat in self._seats()
        )

    def _resume_abandon_clock(self, now: float) -> None:
        away_since, self._stage_away_since = self._stage_away_since, None
        if away_since is not None and self._unattended_since is not None:
            self._unattended_since += now - away_since

    def _seats(self) -> list[dict[str, Any]]:
        stage = self.room.snapshot()["stage"]
        assert isinstance(stage, list)
        return stage

    def stage_status(self) -> list[dict[str, object]]:
        if self.stage is None:
            return []
        out = []
        for status in self.stage.status():
            silent = status["silent_s"]
            dead = silent is None or (isinstance(silent, float) and silent >= DEAD_MIC_AFTER_S)
            out.append({**status, "dead_mic": dead, "name": self.room.name_of(str(status["id"]))})
        return out

    def speaking(self) -> list[str]:
        if self.stage is None:
            return []
        now = time.monotonic()
        return [
            pid
            for pid, m in self.stage.members.items()
            if self.room.in_program(pid)
            and m.silent_for(now) < SPEAKING_GAP_S
            and m.level > SPEAKING_DBFS
        ]

    # -- views ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, object]:
        snap = self.room.snapshot()
        now = time.monotonic()
        self.counter.expire(now)
        listed = snap["hand_queue"]
        assert isinstance(listed, list)
        hands = [{"id": pid, "name": self.room.name_of(pid)} for pid in listed]
        connected = {str(s["id"]) for s in self.stage_status() if _connected(s)}
        seats = snap["stage"]
        assert isinstance(seats, list)
        return {
            **snap,
            "stage": [{**seat, "connected": seat["id"] in connected} for seat in seats],
            # Only a Space on the air can be waiting for its host to come back.
            "reconnecting": self.reconnecting and self.room.state is SpaceState.LIVE,
            "hand_queue": hands,
            "speaking": self.speaking(),
            "listening_now": self.counter.listening_now(now),
            "total_tuned_in": self.counter.total_tuned_in(),
            "waiting_now": self.waiting_now if self.room.state is SpaceState.SCHEDULED else 0,
            "host_name": self.room.name_of(self.room.host_id) or "",
            "start_spread_s": self.start_spread_s,
        }

    def public_snapshot(self) -> dict[str, object]:
        """Only what listeners need: no hand queue, no pending invitations."""
        snap = self.snapshot()
        return {k: snap[k] for k in _PUBLIC_KEYS}

    def publish_update(self, force: bool = False) -> None:
        text = json.dumps(self.public_snapshot(), separators=(",", ":"), ensure_ascii=False)
        if force or text != self._last_update:
            self._last_update = text
            self.feed.publish(RoomUpdate(self.space_id, text, at_monotonic_s=time.monotonic()))


_PUBLIC_KEYS = (
    "state",
    "title",
    "description",
    "stage",
    "speaking",
    "listening_now",
    "total_tuned_in",
    "reaction_tallies",
    "green_room",
    "reconnecting",
    "scheduled_at",
    "late_message",
    "waiting_now",
    "host_name",
    "start_spread_s",
)


def _connected(status: Mapping[str, object] | None) -> bool:
    return status is not None and bool(status.get("connected"))


def _why_unheard(status: Mapping[str, object] | None) -> str:
    """Why the audience would not hear this seat ("" when it would), from its meters."""
    if not _connected(status):
        return "not connected to the stage"
    assert status is not None
    if not status.get("mic_checked"):
        return "no sound received yet"
    if status.get("dead_mic"):
        return f"silent for {status.get('silent_s')} s"
    return ""


# Events after which a person's stage connection must go at once.
_CUTS_FROM_STAGE = (SpeakerMovedToAudience, ParticipantRemoved, LinkRevoked, LinkReissued)


def _closes_sockets(event: RoomEvent) -> tuple[str, int, str] | None:
    """Whose sockets an event closes, with the close code (4000 + HTTP status) and the
    reason, if it takes their view of the room away; None if it does not."""
    match event:
        case ParticipantRemoved(participant_id=pid):
            return pid, 4403, "you were removed from this space"
        case SpeakerMovedToAudience(participant_id=pid, by=by) if by != pid:
            return pid, 4403, "a moderator moved you to the audience"
        case LinkRevoked(participant_id=pid):
            return pid, 4401, "this link was revoked by the host"
        case LinkReissued(participant_id=pid):
            return pid, 4401, "this link was replaced by a new one; ask the host for it"
    return None


def _seq(watcher: Watcher) -> int:
    return watcher.seq


def _event_json(event: RoomEvent) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in fields(event):
        value = getattr(event, f.name)
        out[f.name] = value.value if isinstance(value, enum.Enum) else value
    return out
