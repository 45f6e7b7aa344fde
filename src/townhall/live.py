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

from townhall.errors import BadRequest
from townhall.feed import FeedSink, RoomUpdate
from townhall.room.counting import ListenerCounter
from townhall.room.events import (
    ParticipantRemoved,
    ReactionSent,
    RoomEvent,
    SpeakerMovedToAudience,
)
from townhall.room.roles import Role, SpaceState
from townhall.room.state import Room

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

    def offer(self, message: dict[str, Any]) -> None:
        if self.ending is not None:
            return
        if message.get("type") in COALESCED_MESSAGES:
            self._latest[message["type"]] = message
        elif len(self._messages) >= self.max_messages:
            self.end(WatcherEnd.TOO_SLOW)
            return
        else:
            self._messages.append(message)
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
        while self.ending is None:
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
            if isinstance(event, SpeakerMovedToAudience | ParticipantRemoved):
                self._cut_from_stage(event.participant_id)
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
        self._tell_watchers({"type": "stage", "state": "restarting"})

    def stage_restarted(self, now: float) -> list[RoomEvent]:
        """A new stage process took over: nobody on stage is heard until their audio
        reaches it again (a fresh mic check)."""
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
            self._tell_watchers({"type": "levels", "members": self.stage_status()})
            self.publish_update()
            await asyncio.sleep(self.update_interval_s)

    def check_microphones(self, now: float) -> None:
        """The server has really received this person's audio: pass their mic check."""
        if self.stage is None or self.room.state is not SpaceState.LIVE:
            return
        for pid, member in list(self.stage.members.items()):
            if not (member.mic_checked and self.room.may_publish(pid)):
                continue
            if events := self.room.mic_check_passed(pid, now):
                self.apply(events)

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
        return {
            **snap,
            "hand_queue": hands,
            "speaking": self.speaking(),
            "listening_now": self.counter.listening_now(now),
            "total_tuned_in": self.counter.total_tuned_in(),
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
)


def _seq(watcher: Watcher) -> int:
    return watcher.seq


def _event_json(event: RoomEvent) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in fields(event):
        value = getattr(event, f.name)
        out[f.name] = value.value if isinstance(value, enum.Enum) else value
    return out
