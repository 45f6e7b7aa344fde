"""The control plane's application layer over HTTP, in memory: the real app, a fake stage.

``create_app`` runs exactly as ``townhall serve`` builds it, with a temporary SQLite
store; only the stage is a fake implementing the real ``Stage`` protocol. It records
who connected and who was cut off, and reports every connected member as heard, so
the mic check passes as it does with a real microphone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.websockets import WebSocketDisconnect

from benchmarks.harness.metrics import scrape_async
from townhall.app import Townhall
from townhall.config import ServerConfig
from townhall.control.api import create_app
from townhall.control.config import ControlConfig, RateLimitConfig
from townhall.feed import FeedMessage, FeedSink, RoomUpdate
from townhall.live import Stage, StageFactory
from townhall.room.state import Room, RoomConfig
from townhall.stage.runtime import ProgramGate


@dataclass
class FakeSeat:
    mic_checked: bool = True
    level: float = -20.0

    def silent_for(self, now: float) -> float:
        return 0.0


@dataclass(frozen=True)
class FakeAnswer:
    sdp: str
    type: str = "answer"


@dataclass
class FakeStage:
    space_id: str
    gate: ProgramGate
    members: dict[str, FakeSeat] = field(default_factory=dict)
    ticks: int = 0
    clock_slips: int = 0
    started: bool = False
    ended: bool = False
    connects: list[str] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    on_air_at: float | None = None  # when the green room went live

    def start(self) -> None:
        self.started = True
        self.ticks = 50

    async def end(self) -> None:
        self.ended = True
        self.members.clear()

    def go_live(self, started_at_unix_s: float) -> None:
        self.on_air_at = started_at_unix_s

    async def connect(self, participant_id: str, name: str, sdp: str, kind: str) -> FakeAnswer:
        self.connects.append(participant_id)
        self.members[participant_id] = FakeSeat()
        return FakeAnswer(f"answer to {participant_id}")

    async def disconnect(self, participant_id: str) -> None:
        self.disconnects.append(participant_id)
        self.members.pop(participant_id, None)

    def status(self) -> list[dict[str, object]]:
        return [
            {
                "id": pid,
                "connected": True,
                "silent_s": 0.0,
                "level_dbfs": seat.level,
                "mic_checked": seat.mic_checked,
            }
            for pid, seat in self.members.items()
        ]


@dataclass
class Town:
    th: Townhall
    client: httpx.AsyncClient
    stages: dict[str, FakeStage]
    published: list[FeedMessage]

    async def create(self, title: str = "Town hall") -> dict[str, object]:
        resp = await self.client.post(
            "/api/spaces", json={"title": title}, headers=bearer(self.th.admin_key)
        )
        assert resp.status_code == 201, resp.text
        body: dict[str, object] = resp.json()
        return body

    async def post(
        self, space: dict[str, object], path: str, token: str, **kw: object
    ) -> httpx.Response:
        return await self.client.post(
            f"/api/spaces/{space['id']}{path}", headers=bearer(token), **kw
        )  # type: ignore[arg-type]

    async def get(self, space: dict[str, object], path: str, token: str) -> httpx.Response:
        return await self.client.get(f"/api/spaces/{space['id']}{path}", headers=bearer(token))

    async def command(
        self, space: dict[str, object], token: str, name: str, target: str | None = None
    ) -> httpx.Response:
        return await self.post(space, "/commands", token, json={"command": name, "target": target})

    async def sign_in(self, space: dict[str, object], name: str) -> tuple[str, str]:
        resp = await self.client.post(f"/api/spaces/{space['id']}/listeners", json={"name": name})
        assert resp.status_code == 201, resp.text
        return resp.json()["token"], resp.json()["session_id"]

    async def invite(self, space: dict[str, object], name: str = "Guest") -> str:
        resp = await self.post(space, "/invite", host(space), json={"name": name})
        assert resp.status_code == 201, resp.text
        token: str = resp.json()["token"]
        return token

    async def go_live(self, space: dict[str, object]) -> FakeStage:
        resp = await self.post(space, "/start", host(space))
        assert resp.status_code == 200, resp.text
        return self.stages[str(space["id"])]

    async def speak(self, space: dict[str, object], token: str) -> httpx.Response:
        return await self.post(
            space, "/stage/offer", token, json={"sdp": "v=0 m=audio", "type": "offer"}
        )

    async def room(self, space: dict[str, object], token: str | None = None) -> dict[str, object]:
        resp = await self.get(space, "/room", token or host(space))
        assert resp.status_code == 200, resp.text
        body: dict[str, object] = resp.json()
        return body

    def held(self) -> set[str]:
        return {live.space_id for live in self.th.service.held_spaces()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def host(space: dict[str, object]) -> str:
    return str(space["host_token"])


def seat(room: dict[str, object], pid: str) -> dict[str, object] | None:
    stage = room["stage"]
    assert isinstance(stage, list)
    return next((s for s in stage if s["id"] == pid), None)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def error_of(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"}, body
    return f"{body['error']}: {body['detail']}"


def town_config(tmp_path: Path, **control: object) -> ServerConfig:
    limits = {"room_update_interval_s": 0.01, "max_cached_spaces": 4, **control}
    return ServerConfig(data_dir=tmp_path, control=ControlConfig(**limits))


def fake_stages(stages: dict[str, FakeStage]) -> Callable[[ServerConfig, FeedSink], StageFactory]:
    def factory(_config: ServerConfig, _feed: FeedSink) -> StageFactory:
        def open_stage(room: Room) -> Stage:
            stage = stages[room.space_id] = FakeStage(room.space_id, room.in_program)
            return stage

        return open_stage

    return factory


class PublishedFeed(list[FeedMessage]):
    """A feed sink that keeps what it is given, in order."""

    def publish(self, msg: FeedMessage) -> None:
        self.append(msg)


async def open_town(config: ServerConfig) -> AsyncIterator[Town]:
    stages: dict[str, FakeStage] = {}
    th = Townhall(config, stage_factory=fake_stages(stages))
    published = PublishedFeed()
    th.feed.add(published)
    transport = httpx.ASGITransport(app=create_app(th))
    async with httpx.AsyncClient(transport=transport, base_url="http://town") as client:
        yield Town(th, client, stages, published)
    await th.shutdown()


@pytest.fixture
async def town(tmp_path: Path) -> AsyncIterator[Town]:
    async for t in open_town(town_config(tmp_path)):
        yield t


# -- spaces -------------------------------------------------------------------------


async def test_creating_a_space_takes_the_admin_key(town: Town) -> None:
    resp = await town.client.post("/api/spaces", json={"title": "x"}, headers=bearer("guess"))
    assert "admin key" in error_of(resp, 403)
    assert "Bearer" in error_of(await town.client.post("/api/spaces", json={"title": "x"}), 401)
    space = await town.create("Budget night")
    assert space["state"] == "scheduled" and space["title"] == "Budget night"
    assert str(space["host_link"]).startswith(f"http://127.0.0.1:8000/s/{space['id']}/host#t=")
    public = (await town.client.get(f"/api/spaces/{space['id']}")).json()
    assert public["room"]["state"] == "scheduled" and "hand_queue" not in public["room"]
    assert (await town.client.get("/api/config")).json() == {
        "audience_url": "http://127.0.0.1:8001"
    }


async def test_a_space_goes_live_and_ends(town: Town) -> None:
    space = await town.create()
    stage = await town.go_live(space)
    assert stage.started and not stage.ended
    assert any(isinstance(m, RoomUpdate) for m in town.published)  # the channel opens at once
    answer = await town.speak(space, host(space))
    assert answer.json() == {"sdp": f"answer to {stage.connects[0]}", "type": "answer"}

    async def host_heard() -> bool:
        room = await town.room(space)
        return room["state"] == "live" and room["stage"][0]["live"] is True  # type: ignore[index]

    await eventually(host_heard)  # the monitor passed the mic check the stage reported
    status = (await town.get(space, "/stage", host(space))).json()["members"]
    assert [(m["name"], m["dead_mic"]) for m in status] == [("Host", False)]
    metrics = await scrape_async(town.client, "", town.th.admin_key)
    assert f'townhall_stage_ticks_total{{space="{space["id"]}"}} 50.0' in metrics

    ended = await town.post(space, "/end", host(space))
    assert ended.status_code == 200 and ended.json()["state"] == "ended"
    assert ended.json()["replay"]["ogg"].endswith(f"/replay/{space['id']}.ogg")
    assert stage.ended
    assert "stage is not open" in error_of(await town.speak(space, host(space)), 409)
    assert "ended" in error_of(
        await town.client.post(f"/api/spaces/{space['id']}/listeners", json={}), 409
    )


# -- the room -----------------------------------------------------------------------


async def test_a_listener_is_brought_up_to_speak(town: Town) -> None:
    space = await town.create()
    stage = await town.go_live(space)
    token, session = await town.sign_in(space, "Caller")
    assert "only people on stage" in error_of(await town.speak(space, token), 403)

    raised = await town.command(space, token, "raise_hand")
    assert raised.json()["events"] == ["HandRaised"]
    # A listener sees their own hand in ``you``, never the queue (others' names).
    assert "hand_queue" not in raised.json()["room"]
    assert raised.json()["room"]["you"]["hand_raised"] is True
    assert (await town.room(space))["hand_queue"] == [{"id": session, "name": "Caller"}]
    invited = await town.command(space, host(space), "invite", session)
    assert invited.json()["events"] == ["SpeakerInvited"]
    assert (await town.room(space, token))["you"]["invited"] is True
    accepted = await town.command(space, token, "accept_invitation")
    assert accepted.json()["events"] == ["InvitationAccepted", "HandLowered", "SpeakerAdded"]
    assert seat(accepted.json()["room"], session) == {
        "id": session,
        "name": "Caller",
        "role": "speaker",
        "muted": False,
        "live": False,
        "connected": False,
    }
    assert (await town.speak(space, token)).status_code == 200
    assert stage.connects[-1] == session

    async def caller_in_program() -> bool:
        return stage.gate(session)

    await eventually(caller_in_program)


async def test_an_invited_speaker_joins_by_the_token(town: Town) -> None:
    space = await town.create()
    stage = await town.go_live(space)
    guest = await town.invite(space, "Guest")
    assert (await town.speak(space, guest)).status_code == 200
    [guest_id] = [pid for pid in stage.connects]
    assert (seat(await town.room(space), guest_id) or {})["role"] == "speaker"
    speaker_invites = await town.post(space, "/invite", guest, json={"name": "x"})
    assert "a speaker cannot do this" in error_of(speaker_invites, 403)


@pytest.mark.parametrize("command", ["move_to_audience", "remove"])
async def test_a_speaker_taken_off_stage_is_cut_from_the_stage(town: Town, command: str) -> None:
    space = await town.create()
    stage = await town.go_live(space)
    guest = await town.invite(space)
    await town.speak(space, guest)
    guest_id = stage.connects[-1]
    resp = await town.command(space, host(space), command, guest_id)
    assert resp.status_code == 200, resp.text
    assert seat(resp.json()["room"], guest_id) is None

    async def cut() -> bool:
        return stage.disconnects == [guest_id] and guest_id not in stage.members

    await eventually(cut)


BAD_COMMANDS = [
    ("listener", {"command": "fly"}, 400, "bad_request"),
    ("listener", {"command": "invite"}, 400, "needs a 'target'"),
    ("listener", {"command": "invite", "target": "x"}, 403, "a listener cannot invite"),
    ("host", {"command": "mute", "target": "nobody"}, 404, "no participant nobody"),
    ("host", {"command": "lower_hand"}, 403, "a host cannot lower a hand"),
    ("host", {"command": "raise_hand", "target": 5}, 400, "target"),
    ("listener", {"command": "accept_invitation"}, 409, "no pending invitation"),
]


@pytest.mark.parametrize(("who", "body", "status", "says"), BAD_COMMANDS)
async def test_bad_commands_are_refused_with_json(
    town: Town, who: str, body: dict[str, object], status: int, says: str
) -> None:
    space = await town.create()
    await town.go_live(space)
    token = host(space) if who == "host" else (await town.sign_in(space, "L"))[0]
    assert says in error_of(await town.post(space, "/commands", token, json=body), status)


async def test_requests_outside_the_rules_are_json_errors(town: Town) -> None:
    space = await town.create()
    assert "unknown space" in error_of(await town.client.get("/api/spaces/nope"), 404)
    assert "invalid token" in error_of(await town.command(space, "junk", "raise_hand"), 401)
    other = await town.create("other")
    assert "another space" in error_of(await town.command(space, host(other), "leave"), 403)
    scheduled = await town.command(space, host(space), "mute", "x")
    assert "cannot mute" in error_of(scheduled, 409)
    big = await town.post(space, "/reactions", host(space), content=b"x" * (70 * 1024))
    assert "over" in error_of(big, 413)
    bad_json = await town.post(space, "/commands", host(space), content=b"{nope")
    error_of(bad_json, 400)


async def test_reactions_are_rate_limited_per_participant(tmp_path: Path) -> None:
    limit = RateLimitConfig(rate_per_s=0.01, burst_actions=2)
    async for town in open_town(town_config(tmp_path, actions_limit=limit)):
        space = await town.create()
        await town.go_live(space)
        token, _ = await town.sign_in(space, "Fan")
        for _ in range(2):
            sent = await town.post(space, "/reactions", token, json={"emoji": "👏"})
            assert sent.status_code == 200, sent.text
        assert sent.json() == {"reaction_tallies": {"👏": 2}}
        refused = await town.post(space, "/reactions", token, json={"emoji": "👏"})
        assert "too many reactions" in error_of(refused, 429)
        assert int(refused.headers["Retry-After"]) >= 1
        other, _ = await town.sign_in(space, "Other")  # another participant's own bucket
        assert (
            await town.post(space, "/reactions", other, json={"emoji": "🔥"})
        ).status_code == 200


# -- reads --------------------------------------------------------------------------


async def test_reading_the_room_joins_nobody(town: Town) -> None:
    space = await town.create()
    await town.client.get(f"/api/spaces/{space['id']}")
    assert town.held() == set()  # a read rebuilds the Space for itself and lets it go
    await town.go_live(space)
    token, session = await town.sign_in(space, "Lurker")
    before = await town.room(space)
    await town.room(space, token)
    assert before["participant_count"] == 1  # the host
    meters = await town.get(space, "/stage", token)
    assert "a listener cannot do this" in error_of(meters, 403)
    assert (await town.room(space))["participant_count"] == 1
    await town.command(space, token, "raise_hand")  # a command does join
    assert (await town.room(space))["participant_count"] == 2
    await town.command(space, host(space), "remove", session)
    assert "removed" in error_of(await town.get(space, "/room", token), 403)


async def test_a_listener_is_renamed_until_they_join(town: Town) -> None:
    space = await town.create()
    await town.go_live(space)
    token, session = await town.sign_in(space, "Listener")
    renamed = await town.post(space, "/listeners/name", token, json={"name": "Ada"})
    assert renamed.status_code == 200 and renamed.json()["session_id"] == session
    new_token = renamed.json()["token"]
    await town.command(space, new_token, "raise_hand")
    assert (await town.room(space))["hand_queue"] == [{"id": session, "name": "Ada"}]
    again = await town.post(space, "/listeners/name", new_token, json={"name": "Bea"})
    assert "already joined" in error_of(again, 409)
    as_host = await town.post(space, "/listeners/name", host(space), json={"name": "H"})
    assert "only a listener" in error_of(as_host, 403)


# -- holding Spaces ---------------------------------------------------------------------


async def test_idle_spaces_are_let_go_but_a_live_one_never(town: Town) -> None:
    live = await town.create("live")
    await town.go_live(live)
    idle = [await town.create(f"idle {i}") for i in range(6)]
    for space in idle:
        token, _ = await town.sign_in(space, "L")
        assert (await town.post(space, "/heartbeat", token)).status_code == 200
    held = town.held()
    assert len(held) == 4  # ControlConfig.max_cached_spaces
    assert str(live["id"]) in held
    assert {str(s["id"]) for s in idle[-3:]} <= held  # the most recently used idle ones
    # A Space let go is rebuilt from the store when needed again.
    first = idle[0]
    assert str(first["id"]) not in held
    token, _ = await town.sign_in(first, "Back")
    beat = await town.post(first, "/heartbeat", token)
    assert beat.json() == {"listening_now": 1, "total_tuned_in": 1}
    assert str(live["id"]) in town.held()
    # ... and the live one still runs, with its room as it was.
    assert (await town.room(live))["state"] == "live"


async def test_an_ended_space_let_go_comes_back_ended(town: Town) -> None:
    space = await town.create()
    await town.go_live(space)
    guest = await town.invite(space)
    await town.post(space, "/end", host(space))
    for i in range(5):  # push it out of the cache
        other = await town.create(f"o{i}")
        await town.post(other, "/heartbeat", (await town.sign_in(other, "L"))[0])
    assert str(space["id"]) not in town.held()
    public = (await town.client.get(f"/api/spaces/{space['id']}")).json()
    assert public["state"] == public["room"]["state"] == "ended"
    assert [s["role"] for s in public["room"]["stage"]] == ["host"]
    assert "space is ended; cannot join" in error_of(await town.command(space, guest, "leave"), 409)


async def test_shutdown_ends_the_live_spaces(tmp_path: Path) -> None:
    async for town in open_town(town_config(tmp_path)):
        space = await town.create()
        stage = await town.go_live(space)
        await town.th.shutdown()
        assert stage.ended
        assert town.th.store.space(str(space["id"])).state == "ended"


# -- the stage WebSocket --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_the_stage_socket_joins_and_pushes_room_events(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    stages: dict[str, FakeStage] = {}
    th = Townhall(town_config(tmp_path, max_cached_spaces=1), stage_factory=fake_stages(stages))
    with TestClient(create_app(th)) as client:
        made = client.post("/api/spaces", json={"title": "ws"}, headers=bearer(th.admin_key))
        space = made.json()
        guest = client.post(
            f"/api/spaces/{space['id']}/invite", json={"name": "G"}, headers=bearer(host(space))
        ).json()["token"]
        with client.websocket_connect(f"/api/spaces/{space['id']}/ws?token={guest}") as ws:
            hello = ws.receive_json()
            assert hello["type"] == "hello"
            assert seat(hello["room"], hello["you"]) is not None  # opening the socket joined
            # A watched Space stays held, whatever else is asked for.
            other = client.post("/api/spaces", json={"title": "o"}, headers=bearer(th.admin_key))
            client.post(
                f"/api/spaces/{other.json()['id']}/heartbeat",
                headers=bearer(other.json()["host_token"]),
            )
            assert space["id"] in {s.space_id for s in th.service.held_spaces()}
            client.post(f"/api/spaces/{space['id']}/start", headers=bearer(host(space)))
            started, room = ws.receive_json(), ws.receive_json()
            assert (started["type"], started["event"], started["by"]) == (
                "event",
                "SpaceStarted",
                th.store.space(space["id"]).host_id,
            )
            assert room["type"] == "room" and room["room"]["state"] == "live"
        bad = f"/api/spaces/{space['id']}/ws?token=junk"
        with client.websocket_connect(bad) as ws, pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4401


# -- presence from the audience port --------------------------------------------------


async def test_streams_reported_by_the_audience_port_are_counted(town: Town) -> None:
    space = await town.create()
    await town.go_live(space)
    presence = town.th.audience.presence
    assert presence is not None
    space_id = str(space["id"])
    presence.stream_opened(space_id, "s1", "c1")
    presence.stream_opened(space_id, "s1", "c2")  # a second tab: the same person
    presence.stream_opened(space_id, "s2", "c3")
    presence.stream_opened("not-held", "s9", "c9")  # dropped, not an error
    room = await town.room(space)
    assert (room["listening_now"], room["total_tuned_in"]) == (2, 2)
    presence.stream_closed(space_id, "s2", "c3", session_ended=True)
    room = await town.room(space)
    assert (room["listening_now"], room["total_tuned_in"]) == (1, 2)


# -- health and resuming ----------------------------------------------------------------


async def test_healthz_lists_this_process(town: Town) -> None:
    health = (await town.client.get("/healthz")).json()
    assert health["status"] == "ok"
    assert [p["role"] for p in health["processes"]] == ["control"]


async def test_a_live_space_goes_on_in_the_next_process(tmp_path: Path) -> None:
    config = town_config(tmp_path)
    async for town in open_town(config):
        space = await town.create()
        await town.go_live(space)
        guest = await town.invite(space)
        await town.speak(space, guest)
        before = await town.room(space)
        stages: dict[str, FakeStage] = {}
        # The first process is not shut down: it died, as far as the store knows.
        again = Townhall(config, stage_factory=fake_stages(stages))
        try:
            resumed = again.service.held(str(space["id"]))
            # The room's seats, without what the stage adds (connected: a new stage's news).
            seats = [{k: v for k, v in s.items() if k != "connected"} for s in before["stage"]]
            assert resumed is not None and resumed.room.snapshot()["stage"] == seats
            assert stages[str(space["id"])].started
            assert again.store.space(str(space["id"])).state == "live"
        finally:
            await again.shutdown()


async def test_the_api_validates_with_the_configured_bounds(tmp_path: Path) -> None:
    room = RoomConfig(max_title_chars=10, max_name_chars=5)
    control = ControlConfig(max_emoji_chars=2, room_update_interval_s=0.01)
    async for town in open_town(ServerConfig(data_dir=tmp_path, room=room, control=control)):
        long_title = await town.client.post(
            "/api/spaces", json={"title": "x" * 11}, headers=bearer(town.th.admin_key)
        )
        assert "title" in error_of(long_title, 400)
        space = await town.create("ten chars!")
        signed = await town.client.post(
            f"/api/spaces/{space['id']}/listeners", json={"name": "Olivia"}
        )
        assert "name" in error_of(signed, 400)
        assert "emoji" in error_of(
            await town.post(space, "/reactions", host(space), json={"emoji": "🎉🎉🎉"}), 400
        )
        schema = (await town.client.get("/openapi.json")).json()["components"]["schemas"]
        assert schema["CreateSpace"]["properties"]["title"]["maxLength"] == 10
