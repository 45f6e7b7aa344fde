"""The green room and the abandon clock, in memory: the room's rules, and the live Space
adapter with a fake stage whose meters the test sets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from townhall.errors import Conflict, Forbidden
from townhall.feed import FeedMessage, RoomUpdate
from townhall.live import DeadMicrophones, LiveSpace
from townhall.room.events import GreenRoomOpened, MicCheckPassed, SpaceEnded
from townhall.room.record import record_from_json, record_to_json
from townhall.room.roles import Role, SpaceState
from townhall.room.state import AbandonPhase, Room, RoomConfig, abandon_phase

T = 100.0
CONFIG = RoomConfig(abandon_warning_s=20.0, abandon_end_s=300.0)


def green_room() -> Room:
    room = Room("sp1", "h", "Town hall", config=CONFIG)
    room.join("h", "Hana", Role.HOST, T)
    room.join("s", "Sam", Role.SPEAKER, T)
    room.join("l", "Lee", Role.LISTENER, T)
    return room


# -- the room's rules -----------------------------------------------------------------


def test_only_the_host_opens_the_green_room_and_only_before_the_start() -> None:
    room = green_room()
    with pytest.raises(Forbidden):
        room.open_green_room("s", T)
    assert [type(e) for e in room.open_green_room("h", T)] == [GreenRoomOpened]
    assert room.open_green_room("h", T) == []  # a retry is no error
    assert room.state is SpaceState.SCHEDULED and room.snapshot()["green_room"] is True
    room.start("h", T)
    with pytest.raises(Conflict, match="space is live"):
        room.open_green_room("h", T)


def test_in_the_green_room_the_stage_checks_mics_and_mutes_but_listeners_wait() -> None:
    room = green_room()
    assert not room.may_publish("h")
    with pytest.raises(Conflict, match="space is scheduled"):
        room.mic_check_passed("s", T)
    room.open_green_room("h", T)
    assert room.may_publish("h") and room.may_publish("s") and not room.may_publish("l")
    assert [type(e) for e in room.mic_check_passed("s", T)] == [MicCheckPassed]
    assert room.program() == ["s"]
    room.mute("s", "s", T)
    assert room.program() == []
    room.unmute("s", "s", T)
    with pytest.raises(Conflict, match="space is scheduled"):
        room.raise_hand("l", T)  # hands wait for the start


def test_mic_checks_passed_in_the_green_room_stand_at_the_start() -> None:
    room = green_room()
    room.open_green_room("h", T)
    room.mic_check_passed("h", T)
    room.start("h", T + 5)
    assert room.program() == ["h"] and room.snapshot()["green_room"] is False


def test_the_green_room_is_journaled_and_restored() -> None:
    room = green_room()
    room.open_green_room("h", T)
    room.mic_check_passed("s", T)
    again = Room.restore(record_from_json(record_to_json(room.record())), CONFIG)
    assert again.green_room and again.program() == ["s"]
    # A record without the key reads as "no green room open".
    raw = json.loads(record_to_json(green_room().record()))
    del raw["green_room"]
    assert Room.restore(record_from_json(json.dumps(raw))).green_room is False


def test_an_abandoned_space_ends_by_nobody_and_a_cancelled_one_cannot_be_abandoned() -> None:
    room = green_room()
    room.start("h", T)
    ended = room.end_abandoned(T + 300)
    assert [type(e) for e in ended] == [SpaceEnded]
    assert isinstance(ended[0], SpaceEnded) and ended[0].by == ""
    assert room.state is SpaceState.ENDED
    with pytest.raises(Conflict, match="space is ended"):
        room.end_abandoned(T + 301)


@pytest.mark.parametrize(
    ("unattended_s", "phase"),
    [
        (None, AbandonPhase.ATTENDED),
        (0.0, AbandonPhase.ATTENDED),
        (19.9, AbandonPhase.ATTENDED),
        (20.0, AbandonPhase.RECONNECTING),
        (299.9, AbandonPhase.RECONNECTING),
        (300.0, AbandonPhase.ABANDONED),
        (1e9, AbandonPhase.ABANDONED),
    ],
)
def test_abandon_phase(unattended_s: float | None, phase: AbandonPhase) -> None:
    assert abandon_phase(unattended_s, CONFIG) is phase


# -- the live Space: dead mics and the abandon clock ----------------------------------


@dataclass
class Meter:
    """One member's meters, as the test sets them."""

    connected: bool = True
    mic_checked: bool = True
    silent_s: float | None = 0.0
    level: float = -20.0

    def silent_for(self, now: float) -> float:
        return float("inf") if self.silent_s is None else self.silent_s


@dataclass(frozen=True)
class Answer:
    sdp: str = "answer"
    type: str = "answer"


@dataclass
class MeteredStage:
    meters: dict[str, Meter] = field(default_factory=dict)
    on_air_at: float | None = None
    ticks: int = 0
    clock_slips: int = 0

    @property
    def members(self) -> Mapping[str, Meter]:
        return self.meters

    def start(self) -> None:
        pass

    async def end(self) -> None:
        self.meters.clear()

    async def connect(self, participant_id: str, name: str, sdp: str, kind: str) -> Answer:
        self.meters[participant_id] = Meter()
        return Answer()

    async def disconnect(self, participant_id: str) -> None:
        self.meters.pop(participant_id, None)

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "id": pid,
                "connected": m.connected,
                "mic_checked": m.mic_checked,
                "silent_s": m.silent_s,
                "level_dbfs": m.level,
            }
            for pid, m in self.meters.items()
        ]

    def go_live(self, started_at_unix_s: float) -> None:
        self.on_air_at = started_at_unix_s


class Feed(list[FeedMessage]):
    def publish(self, msg: FeedMessage) -> None:
        self.append(msg)


def live_space(room: Room, stage: MeteredStage) -> tuple[LiveSpace, list[LiveSpace], Feed]:
    abandoned: list[LiveSpace] = []
    feed = Feed()
    live = LiveSpace(room, feed, on_abandoned=abandoned.append)
    live.stage = stage  # the monitor is not run: the test drives the clock
    return live, abandoned, feed


def test_dead_mics_names_each_seat_the_audience_would_not_hear() -> None:
    room = green_room()
    room.join("m", "Mo", Role.SPEAKER, T)
    room.join("q", "Quinn", Role.SPEAKER, T)
    room.join("z", "Zed", Role.SPEAKER, T)
    room.open_green_room("h", T)
    room.mute("z", "z", T)
    stage = MeteredStage(
        {
            "h": Meter(),
            "s": Meter(mic_checked=False, silent_s=None),
            "m": Meter(silent_s=4.0),
            "z": Meter(silent_s=None, mic_checked=False),  # muted on purpose: not dead
        }
    )
    live, _, _ = live_space(room, stage)
    dead = live.dead_mics()
    assert dead == [
        {"id": "s", "name": "Sam", "reason": "no sound received yet"},
        {"id": "m", "name": "Mo", "reason": "silent for 4.0 s"},
        {"id": "q", "name": "Quinn", "reason": "not connected to the stage"},
    ]
    err = DeadMicrophones(dead)
    assert err.status == 409 and err.to_json()["dead_mics"] == dead
    assert "Sam, Mo, Quinn" in err.detail


def test_the_abandon_clock_warns_then_ends_once_and_a_voice_resets_it() -> None:
    room = green_room()
    room.start("h", T)
    stage = MeteredStage({"h": Meter()})
    live, abandoned, _ = live_space(room, stage)
    live.check_attendance(0.0)
    assert not live.reconnecting and live.public_snapshot()["reconnecting"] is False
    stage.meters["h"].connected = False
    live.check_attendance(1.0)
    live.check_attendance(20.9)
    assert not live.reconnecting
    live.check_attendance(21.0)
    assert live.reconnecting and live.public_snapshot()["reconnecting"] is True
    seat = live.public_snapshot()["stage"]
    assert isinstance(seat, list) and seat[0]["connected"] is False
    stage.meters["h"].connected = True  # back, and heard
    live.check_attendance(22.0)
    assert not live.reconnecting
    stage.meters["h"].silent_s = 5.0  # connected, but a dead microphone
    live.check_attendance(23.0)
    live.check_attendance(322.9)
    assert live.reconnecting and abandoned == []
    live.check_attendance(323.0)
    live.check_attendance(324.0)
    assert abandoned == [live]  # once
    room.end_abandoned(T + 324)
    assert live.public_snapshot()["reconnecting"] is False  # ended, not reconnecting


def test_a_muted_seat_is_attended_and_silence_before_the_start_is_not_counted() -> None:
    room = green_room()
    room.open_green_room("h", T)
    stage = MeteredStage({"h": Meter(connected=False)})
    live, abandoned, _ = live_space(room, stage)
    live.check_attendance(0.0)
    live.check_attendance(1000.0)
    assert not live.reconnecting and abandoned == []  # a green room is not on the air
    room.start("h", T)
    room.mute("h", "h", T)
    stage.meters["h"] = Meter(silent_s=100.0)
    live.check_attendance(1001.0)
    live.check_attendance(2000.0)
    assert not live.reconnecting and abandoned == []


def test_the_abandon_clock_stands_still_while_the_stage_process_restarts() -> None:
    room = green_room()
    room.start("h", T)
    stage = MeteredStage({})
    live, abandoned, _ = live_space(room, stage)

    async def run() -> None:
        live.check_attendance(0.0)  # nobody yet: the clock runs from 0
        live.stage_lost()
        live.check_attendance(1e6)  # away: not counted, whatever the time
        assert not live.reconnecting and abandoned == []

    asyncio.run(run())
    assert live._stage_away_since is not None
    live._stage_away_since -= 1000.0  # the stage was away for (at least) 1000 s
    live.stage_restarted(T)
    unattended = live._unattended_since
    assert unattended is not None and unattended >= 1000.0  # moved on by the time away


def test_go_live_from_the_green_room_puts_the_stage_on_the_air() -> None:
    room = green_room()
    room.open_green_room("h", T)
    stage = MeteredStage({"h": Meter()})
    live, _, feed = live_space(room, stage)
    live.go_live(123.0)
    assert stage.on_air_at == 123.0
    assert isinstance(feed[-1], RoomUpdate)


# -- the stage off the air -------------------------------------------------------------


def test_a_stage_off_the_air_publishes_nothing_until_go_on_air_then_starts_at_go_live() -> None:
    from townhall.config import ServerConfig
    from townhall.feed import ChannelEnded, HlsPart, OggHeader, OggPages
    from townhall.stage.process import ProgramSet, StageHost, on_air_start
    from townhall.stage.runtime import StageRuntime
    from townhall.supervise.link import LinkFeed
    from townhall.supervise.messages import GoOnAir, OpenStage, StageReply, StageRequest
    from townhall.supervise.specs import StageSpec

    go_live_at = 1_700_000_000.0
    spec = StageSpec(ServerConfig(), OpenStage("sp", 0.0, on_air=False), incarnation=0)

    async def scenario() -> list[object]:
        sent: list[object] = []
        program = ProgramSet(frozenset())
        runtime = StageRuntime("sp", LinkFeed(sent.append), gate=program, on_air=False)
        host = StageHost(
            runtime, program, sent.append, lambda at: on_air_start(spec, at, go_live_at + 0.3)
        )
        for _ in range(100):  # 2 s in the green room
            runtime.tick()
        assert sent == [] and runtime.ticks == 100
        host.on_message(StageRequest("sp", 1, GoOnAir(go_live_at)))
        assert sent == [StageReply("sp", 1, True)] and runtime.on_air
        for _ in range(100):
            runtime.tick()
        await runtime.end()
        return sent

    sent = asyncio.run(scenario())
    assert [type(m) for m in sent[1:3]] == [OggHeader, OggPages]
    parts = [m for m in sent if isinstance(m, HlsPart)]
    # Media time counts from Go live (the next segment boundary after it), not from the
    # 2 s in the green room and not from 1970: the first part is number 4 (2 s).
    assert parts and parts[0].seq == 4 and not parts[0].discontinuity
    assert isinstance(sent[-1], ChannelEnded)


def test_a_green_room_closed_without_going_live_ends_with_nothing_but_the_end() -> None:
    from townhall.feed import ChannelEnded
    from townhall.stage.runtime import StageRuntime

    async def scenario() -> list[object]:
        kept: list[object] = []

        class Kept:
            def publish(self, msg: object) -> None:
                kept.append(msg)

        runtime = StageRuntime("sp", Kept(), on_air=False)  # type: ignore[arg-type]
        runtime.tick()
        await runtime.end()
        return kept

    assert [type(m) for m in asyncio.run(scenario())] == [ChannelEnded]


# -- over HTTP, in memory (the real app, a fake stage) ---------------------------------


async def test_the_api_opens_the_green_room_refuses_a_dead_mic_and_goes_live(
    tmp_path: Path,
) -> None:
    from tests.unit.test_control_app import host, open_town, town_config

    async for town in open_town(town_config(tmp_path)):
        space = await town.create()
        guest = await town.invite(space, "Gia")
        refused = await town.post(space, "/green-room", guest)
        assert refused.status_code == 403, refused.text
        opened = await town.post(space, "/green-room", host(space))
        assert opened.status_code == 200, opened.text
        assert opened.json()["green_room"] is True
        public = (await town.client.get(f"/api/spaces/{space['id']}")).json()["room"]
        assert public["state"] == "scheduled" and public["green_room"] is True
        stage = town.stages[str(space["id"])]

        # Both join the stage; Gia's microphone sends nothing.
        assert (await town.speak(space, host(space))).status_code == 200
        assert (await town.speak(space, guest)).status_code == 200
        gia = stage.connects[1]
        stage.members[gia].mic_checked = False
        live = await town.post(space, "/start", host(space))
        assert live.status_code == 409, live.text
        body = live.json()
        assert body["error"] == "dead_microphones" and "Gia" in body["detail"]
        assert body["dead_mics"] == [{"id": gia, "name": "Gia", "reason": "no sound received yet"}]
        assert stage.on_air_at is None
        assert (await town.room(space))["state"] == "scheduled"

        bad = await town.post(space, "/start", host(space), json={"force": [1]})
        assert bad.status_code == 400 and bad.json()["error"] == "bad_request", bad.text
        forced = await town.post(space, "/start", host(space), json={"force": True})
        assert forced.status_code == 200, forced.text
        assert forced.json()["state"] == "live" and stage.on_air_at is not None
        room = await town.room(space)
        assert room["green_room"] is False and room["reconnecting"] is False
        assert town.stages[str(space["id"])] is stage  # the same stage, now on the air


# -- across processes: the control side and the hub -------------------------------------


def test_the_remote_stage_opens_off_the_air_and_go_live_updates_the_hubs_spec() -> None:
    from tests.unit.test_remote_stage import FakeLink
    from townhall.control.remote import RemoteStages
    from townhall.supervise.hub import CONTROL, SUPERVISOR, Delivery, Hub, stage_name
    from townhall.supervise.messages import GoOnAir, OpenStage, StageRequest

    room = green_room()
    room.open_green_room("h", T)
    room.mic_check_passed("h", T)
    link = FakeLink()
    stage = RemoteStages(link, 1.0).open(room)
    stage.start()
    assert link.sent == [OpenStage("sp1", 0.0, frozenset({"h"}), on_air=False)]
    room.start("h", 2000.0)
    stage.go_live(2000.0)
    opened, request = link.sent[1:]
    assert opened == OpenStage("sp1", 2000.0, frozenset({"h"}), on_air=True)
    assert isinstance(request, StageRequest) and request.op == GoOnAir(2000.0)

    hub = Hub()
    hub.route(CONTROL, link.sent[0])
    hub.stage_up("sp1")
    # The hub keeps the newest spec (a stage restarted after Go live is on the air),
    # and GoOnAir reaches the stage that runs.
    assert hub.route(CONTROL, opened) == [Delivery(SUPERVISOR, opened)]
    assert hub.open_spaces["sp1"].on_air
    assert hub.route(CONTROL, request) == [Delivery(stage_name("sp1"), request)]
