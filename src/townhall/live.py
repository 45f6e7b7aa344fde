"""One Space while this process holds it: the room rules, the stage, counts, watchers.

The room (pure rules) decides; this adapter feeds it commands, applies what its events
mean to the media plane (a demoted or removed speaker is cut from the stage at once),
tells the people on stage over their WebSockets, and publishes a coalesced snapshot to
the audience's SSE stream a few times a second, never once per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import time
from dataclasses import dataclass, field, fields
from typing import Any

from townhall.feed import FeedSink, RoomUpdate
from townhall.room.counting import ListenerCounter
from townhall.room.events import ParticipantRemoved, RoomEvent, SpeakerMovedToAudience
from townhall.room.state import Room, SpaceState
from townhall.stage.runtime import StageRuntime

# Someone on stage with no signal for this long shows as a dead microphone.
DEAD_MIC_AFTER_S = 3.0
# A level above this (dBFS) in the last moments counts as speaking (the indicator).
SPEAKING_DBFS = -45.0


@dataclass(eq=False)  # identity: each socket is its own watcher in a set
class Watcher:
    """A stage participant's WebSocket: a bounded queue of messages to send."""

    participant_id: str
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    dropped: bool = False

    def offer(self, message: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped = True  # too slow to keep up: the socket is closed and resyncs


@dataclass
class LiveSpace:
    room: Room
    feed: FeedSink
    counter: ListenerCounter = field(default_factory=ListenerCounter)
    stage: StageRuntime | None = None
    watchers: set[Watcher] = field(default_factory=set)
    update_interval_s: float = 0.25
    _monitor: asyncio.Task[None] | None = None
    _last_update: str = ""

    @property
    def space_id(self) -> str:
        return self.room.space_id

    # -- events ---------------------------------------------------------------------
    def apply(self, events: list[RoomEvent]) -> list[RoomEvent]:
        for event in events:
            if isinstance(event, SpeakerMovedToAudience | ParticipantRemoved) and self.stage:
                pid = event.participant_id
                asyncio.get_running_loop().create_task(self.stage.disconnect(pid))
            self._tell_watchers(
                {"type": "event", "event": type(event).__name__, **_event_json(event)}
            )
        if events:
            self._tell_watchers({"type": "room", "room": self.snapshot()})
        return events

    def _tell_watchers(self, message: dict[str, Any]) -> None:
        for watcher in list(self.watchers):
            watcher.offer(message)

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
            if member.mic_checked and self.room.may_publish(pid):
                self.apply(self.room.mic_check_passed(pid, now))

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
            if self.room.in_program(pid) and m.silent_for(now) < 0.3 and m.level > SPEAKING_DBFS
        ]

    def snapshot(self) -> dict[str, object]:
        snap = self.room.snapshot()
        now = time.monotonic()
        self.counter.expire(now)
        hands = [{"id": pid, "name": self.room.name_of(pid)} for pid in self.room.hand_queue()]
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
        keys = (
            "state",
            "title",
            "description",
            "stage",
            "speaking",
            "listening_now",
            "total_tuned_in",
            "reaction_tallies",
        )
        return {k: snap[k] for k in keys}

    def publish_update(self, force: bool = False) -> None:
        text = json.dumps(self.public_snapshot(), separators=(",", ":"), ensure_ascii=False)
        if force or text != self._last_update:
            self._last_update = text
            self.feed.publish(RoomUpdate(self.space_id, text, at_monotonic_s=time.monotonic()))


def _event_json(event: RoomEvent) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in fields(event):
        value = getattr(event, f.name)
        out[f.name] = value.value if isinstance(value, enum.Enum) else value
    return out
