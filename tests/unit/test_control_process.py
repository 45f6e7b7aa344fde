"""The control process in memory: the real app over a fake supervisor link.

``Hub`` implements the link's ``send`` and plays the supervisor and every stage process:
it answers each stage request by its id, and the test tells it when to report a stage's
members, start a stage or lose one. A "crash" is a second ``ControlProcess`` opened on
the same data directory while the first is simply dropped, as ``kill -9`` would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.harness.metrics import scrape_async
from townhall.audience.framing import StreamOpened
from townhall.audience.plane import AudienceStats, ChannelStats
from townhall.config import ServerConfig
from townhall.control.api import create_app
from townhall.control.config import ControlConfig
from townhall.control.process import ControlProcess, Inbox
from townhall.feed import RoomUpdate
from townhall.live import LiveSpace, Watcher
from townhall.room.record import RoomRecord, record_from_json
from townhall.supervise.messages import (
    AudienceReport,
    CloseStage,
    Connect,
    MemberStatus,
    OpenStage,
    Presence,
    ProcessInfo,
    ProcessTable,
    RecordingStatus,
    ResyncPresence,
    SetProgram,
    StageLost,
    StageReply,
    StageRequest,
    StageStarted,
    StageStatus,
)


@dataclass
class Hub:
    """The supervisor and the stage processes, as the control process's link sees them."""

    sent: list[object] = field(default_factory=list)
    connected: dict[str, set[str]] = field(default_factory=dict)  # space -> participants
    answering: bool = True
    control: ControlProcess | None = None

    def send(self, msg: object) -> bool:
        self.sent.append(msg)
        if isinstance(msg, StageRequest) and self.answering:
            asyncio.get_running_loop().call_soon(self._answer, msg)
        return True

    def _answer(self, req: StageRequest) -> None:
        assert self.control is not None
        if isinstance(req.op, Connect):
            self.connected.setdefault(req.space_id, set()).add(req.op.participant_id)
        reply = StageReply(req.space_id, req.request_id, ok=True, sdp=f"answer {req.request_id}")
        self.control.receive(reply)

    def report(self, space_id: str, heard: bool = True) -> None:
        """The stage's status: everyone connected, mic-checked if ``heard``."""
        assert self.control is not None
        members = tuple(
            MemberStatus(pid, pid, heard, -20.0, 0.1 if heard else None, "connected")
            for pid in sorted(self.connected.get(space_id, ()))
        )
        self.control.receive(StageStatus(space_id, members, 100, 0, 0.021))

    def restart_stage(self, space_id: str, incarnation: int) -> None:
        assert self.control is not None
        self.connected.pop(space_id, None)  # a new process knows nobody
        self.control.receive(StageLost(space_id, 4321, "killed by signal 9"))
        self.control.receive(StageStarted(space_id, 4322, incarnation))

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]

    def programs(self) -> list[frozenset[str]]:
        return [r.op.participant_ids for r in self.of(StageRequest) if isinstance(r.op, SetProgram)]


@dataclass
class Town:
    control: ControlProcess
    hub: Hub
    client: httpx.AsyncClient

    async def post(self, space_id: str, path: str, token: str, **kw: Any) -> httpx.Response:
        return await self.client.post(f"/api/spaces/{space_id}{path}", headers=auth(token), **kw)

    async def command(
        self, space_id: str, token: str, name: str, target: str | None = None
    ) -> httpx.Response:
        resp = await self.command_raw(space_id, token, name, target)
        assert resp.status_code == 200, resp.text
        return resp

    async def command_raw(
        self, space_id: str, token: str, name: str, target: str | None = None
    ) -> httpx.Response:
        return await self.post(
            space_id, "/commands", token, json={"command": name, "target": target}
        )

    async def sign_in(self, space_id: str, name: str) -> tuple[str, str]:
        resp = await self.client.post(f"/api/spaces/{space_id}/listeners", json={"name": name})
        assert resp.status_code == 201, resp.text
        return resp.json()["token"], resp.json()["session_id"]

    async def speak(self, space_id: str, token: str) -> httpx.Response:
        return await self.post(
            space_id, "/stage/offer", token, json={"sdp": "v=0", "type": "offer"}
        )

    def live(self, space_id: str) -> LiveSpace:
        live = self.control.service.held(space_id)
        assert live is not None
        return live

    async def close(self) -> None:
        # A crash: nothing is ended or closed; only this test's tasks are stopped.
        for live in self.control.service.held_spaces():
            await live.stop_monitor()
        await self.client.aclose()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def config_in(tmp_path: Path) -> ServerConfig:
    control = ControlConfig(room_update_interval_s=0.01, stage_reply_timeout_s=0.5)
    return ServerConfig(data_dir=tmp_path, control=control)


async def open_control(config: ServerConfig) -> Town:
    hub = Hub()
    control = ControlProcess(config, hub)
    hub.control = control
    control.resume()
    transport = httpx.ASGITransport(app=create_app(control))
    return Town(control, hub, httpx.AsyncClient(transport=transport, base_url="http://control"))


@pytest.fixture
async def town(tmp_path: Path) -> AsyncIterator[Town]:
    town = await open_control(config_in(tmp_path))
    yield town
    await town.close()


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def drain(watcher: Watcher) -> list[dict[str, Any]]:
    return watcher.drain()


@dataclass
class BusySpace:
    """A live Space with every kind of room state a restart must keep."""

    id: str
    host: str
    speaker: str
    speaker_id: str
    cohost_id: str
    troll: str
    troll_id: str
    hand_id: str


async def busy_space(town: Town) -> BusySpace:
    made = await town.client.post(
        "/api/spaces", json={"title": "Budget night"}, headers=auth(town.control.admin_key)
    )
    assert made.status_code == 201, made.text
    space_id, host = made.json()["id"], made.json()["host_token"]
    assert (await town.post(space_id, "/start", host)).status_code == 200
    invited = await town.post(space_id, "/invite", host, json={"name": "Sam"})
    speaker = invited.json()["token"]
    assert (await town.speak(space_id, host)).status_code == 200
    assert (await town.speak(space_id, speaker)).status_code == 200
    speaker_id = next(iter(town.hub.connected[space_id] - {town.live(space_id).room.host_id}))
    cohost_token, cohost_id = await town.sign_in(space_id, "Cora")
    await town.command(space_id, cohost_token, "raise_hand")
    await town.command(space_id, host, "add_cohost", cohost_id)
    await town.command(space_id, host, "mute", cohost_id)
    troll, troll_id = await town.sign_in(space_id, "Troll")
    await town.command(space_id, troll, "raise_hand")
    await town.command(space_id, host, "remove", troll_id)
    hand, hand_id = await town.sign_in(space_id, "Hal")
    await town.command(space_id, hand, "raise_hand")
    town.hub.report(space_id)  # host and speaker heard: their mic checks pass
    live = town.live(space_id)
    await eventually(lambda: len(live.room.program()) == 2)
    return BusySpace(space_id, host, speaker, speaker_id, cohost_id, troll, troll_id, hand_id)


def roles(record: RoomRecord) -> list[tuple[str, str, bool, bool]]:
    return [(p.name, p.role.value, p.muted, p.live) for p in record.participants]


# -- the journal and resuming ---------------------------------------------------------


async def test_a_live_space_resumes_as_it_was_after_a_crash(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    first = await open_control(config)
    space = await busy_space(first)
    before = first.live(space.id).room.record()
    started_at = first.control.store.space(space.id).started_at
    assert roles(before) == [
        ("Host", "host", False, True),
        ("Sam", "speaker", False, True),
        ("Cora", "cohost", True, False),
        ("Hal", "listener", False, False),
    ]
    await first.close()  # killed: nothing ended, nothing closed

    second = await open_control(config)
    try:
        after = second.live(space.id).room.record()
        assert after == before
        assert after.removed == frozenset({space.troll_id})
        assert after.hands[0][0] == space.hand_id
        # The stage is opened again from the original start, with who may be heard.
        [opened] = second.hub.of(OpenStage)
        assert opened == OpenStage(space.id, before.started_at or 0.0, frozenset(
            {after.host_id, space.speaker_id}))  # fmt: skip
        assert second.hub.of(ResyncPresence) == [ResyncPresence()]
        # A stage that kept running is told the journaled program (it ignores OpenStage).
        assert second.hub.programs() == [opened.program]
        record = second.control.store.space(space.id)
        assert (record.state, record.started_at) == ("live", started_at)
        # The removed stays removed; the others go on in their roles.
        refused = await second.command_raw(space.id, space.troll, "raise_hand")
        assert refused.status_code == 403 and "removed" in refused.text
        assert (await second.speak(space.id, space.speaker)).status_code == 200
        await second.command(space.id, space.host, "invite", space.hand_id)
        assert second.live(space.id).room.pending_invitations() == [space.hand_id]
        # The hub was restarted too (a whole ``townhall serve`` restart): its first stage
        # for the Space is new and has heard nobody.
        second.control.receive(StageStarted(space.id, 77, 0))
        assert second.live(space.id).room.program() == []
        assert second.hub.programs()[-1] == frozenset()
    finally:
        await second.close()


async def test_a_live_space_without_a_journal_resumes_with_its_host(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    first = await open_control(config)
    made = await first.client.post(
        "/api/spaces", json={"title": "old"}, headers=auth(first.control.admin_key)
    )
    space_id = made.json()["id"]
    await first.close()
    first.control.store.set_state(space_id, "live", 123.0)  # as a store from before journals
    second = await open_control(config)
    try:
        room = second.live(space_id).room
        assert (room.state.value, room.started_at) == ("live", 123.0)
        assert roles(room.record()) == [("Host", "host", False, False)]
        assert second.hub.of(OpenStage) == [OpenStage(space_id, 123.0, frozenset())]
    finally:
        await second.close()


async def test_a_space_ended_in_the_journal_is_not_reopened(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    first = await open_control(config)
    space = await busy_space(first)
    assert (await first.post(space.id, "/end", space.host)).status_code == 200
    await first.close()
    first.control.store.set_state(space.id, "live", 5.0)  # the crash came before the store
    second = await open_control(config)
    try:
        assert second.hub.of(OpenStage) == []
        assert second.control.store.space(space.id).state == "ended"
    finally:
        await second.close()


async def test_every_change_is_journaled_before_the_answer(town: Town) -> None:
    space = await busy_space(town)
    await town.command(space.id, space.host, "invite", space.hand_id)
    text = town.control.store.journaled_room(space.id)
    assert text is not None
    assert record_from_json(text) == town.live(space.id).room.record()


# -- the stage restarting ----------------------------------------------------------------


async def test_a_restarted_stage_calls_for_fresh_mic_checks(town: Town) -> None:
    space = await busy_space(town)
    live = town.live(space.id)
    host_socket = town.control.service.watch(space.id, space.host)
    drain(host_socket)
    programs_before = len(town.hub.programs())

    town.hub.restart_stage(space.id, incarnation=1)
    told = drain(host_socket)
    assert told[0] == {"type": "stage", "state": "restarting"}  # the loss
    assert {"type": "stage", "state": "restarting"} in told[1:]  # and the new stage
    resets = [m["participant_id"] for m in told if m.get("event") == "MicCheckReset"]
    assert sorted(resets) == sorted([live.room.host_id, space.speaker_id])
    assert live.room.program() == []
    assert town.hub.programs()[-1] == frozenset()  # the new stage mixes nobody yet
    assert len(town.hub.programs()) > programs_before

    # They reconnect; the new stage hears the speaker first, then the host.
    assert (await town.speak(space.id, space.speaker)).status_code == 200
    town.hub.report(space.id)
    await eventually(lambda: live.room.program() == [space.speaker_id])
    assert town.hub.programs()[-1] == frozenset({space.speaker_id})
    assert (await town.speak(space.id, space.host)).status_code == 200
    town.hub.report(space.id)
    await eventually(lambda: len(live.room.program()) == 2)
    passed = [m["participant_id"] for m in drain(host_socket) if m.get("event") == "MicCheckPassed"]
    assert passed == [space.speaker_id, live.room.host_id]
    # Roles, the mute and the removal went through the restart untouched.
    assert roles(live.room.record())[2] == ("Cora", "cohost", True, False)
    assert live.room.is_removed(space.troll_id)


async def test_the_first_stage_of_a_space_keeps_its_mic_checks(town: Town) -> None:
    space = await busy_space(town)
    live = town.live(space.id)
    town.control.receive(StageStarted(space.id, 99, 0))
    assert len(live.room.program()) == 2


async def test_a_lost_stage_fails_the_offers_in_flight(town: Town) -> None:
    space = await busy_space(town)
    town.hub.answering = False
    asking = asyncio.ensure_future(town.speak(space.id, space.speaker))
    await eventually(lambda: len(town.hub.of(StageRequest)) > 0 and not asking.done())
    await asyncio.sleep(0.01)
    town.control.receive(StageLost(space.id, 1, "exit code 1"))
    resp = await asking
    assert resp.status_code == 503 and "restarting" in resp.text
    assert int(resp.headers["Retry-After"]) >= 1
    timed_out = await town.speak(space.id, space.speaker)
    assert timed_out.status_code == 503 and "not answering" in timed_out.text


# -- reports: healthz, metrics, presence, recordings ---------------------------------------


async def test_healthz_lists_every_process_and_this_one(town: Town) -> None:
    alone = (await town.client.get("/healthz")).json()
    assert alone["status"] == "ok"
    assert [(p["role"], p["pid"]) for p in alone["processes"]] == [
        ("control", town.control.reports.pid)
    ]
    table = (
        ProcessInfo("supervisor", "supervisor", 10, 1.0, 0),
        ProcessInfo("stage", "stage:sp", 11, 2.0, 2, "killed by signal 9"),
        ProcessInfo("audience", "audience:1", 12, 3.0, 0),
    )
    town.control.receive(ProcessTable(table))
    listed = (await town.client.get("/healthz")).json()["processes"]
    assert [p["name"] for p in listed] == ["control", "supervisor", "stage:sp", "audience:1"]
    assert listed[2] == {"role": "stage", "name": "stage:sp", "pid": 11, "started_at": 2.0,
                         "restarts": 2, "last_exit": "killed by signal 9"}  # fmt: skip
    with_control = (*table, ProcessInfo("control", "control", 13, 4.0, 1, "exit code 1"))
    town.control.receive(ProcessTable(with_control))
    listed = (await town.client.get("/healthz")).json()["processes"]
    assert [(p["role"], p["restarts"]) for p in listed if p["role"] == "control"] == [
        ("control", 1)
    ]


async def test_presence_and_audience_reports_reach_the_counts_and_metrics(town: Town) -> None:
    space = await busy_space(town)
    town.control.receive(Presence(StreamOpened(space.id, "s1", "w1:1")))
    town.control.receive(Presence(StreamOpened(space.id, "s2", "w1:2")))
    town.control.receive(Presence(StreamOpened("not-held", "s3", "w1:3")))
    assert town.live(space.id).counter.listening_now(time.monotonic()) == 2
    stats = AudienceStats((ChannelStats(space.id, 1234, 56, 0.05, 0.002),))
    town.control.receive(AudienceReport(stats))
    metrics = await scrape_async(town.client, "", town.control.admin_key)
    assert f'townhall_stream_listeners{{space="{space.id}"}} 1234.0' in metrics
    assert f'townhall_listening_now{{space="{space.id}"}} 2.0' in metrics
    assert f'townhall_stage_ticks_total{{space="{space.id}"}} 100.0' in metrics
    assert f'townhall_stage_members{{space="{space.id}"}} 2.0' in metrics
    assert f'townhall_stage_longest_tick_gap_seconds{{space="{space.id}"}} 0.021' in metrics


async def test_a_paused_recording_is_told_to_the_host_and_cohosts(town: Town) -> None:
    space = await busy_space(town)
    host_socket = town.control.service.watch(space.id, space.host)
    speaker_socket = town.control.service.watch(space.id, space.speaker)
    drain(host_socket), drain(speaker_socket)
    town.control.receive(RecordingStatus(space.id, "recording"))
    assert drain(host_socket) == []  # nothing was wrong: nothing to say

    town.control.receive(RecordingStatus(space.id, "paused", "No space left on device", 1))
    paused = {"type": "recording", "state": "paused", "detail": "No space left on device"}
    assert drain(host_socket) == [paused]
    assert drain(speaker_socket) == []
    metrics = await scrape_async(town.client, "", town.control.admin_key)
    assert f'townhall_recording_paused{{space="{space.id}"}} 1.0' in metrics
    assert "townhall_recording_write_errors_total 1.0" in metrics
    # A host page that opens (or reconnects) now learns it after the room.
    again = town.control.service.watch(space.id, space.host)
    assert [m["type"] for m in drain(again)] == ["hello", "recording"]

    town.control.receive(RecordingStatus(space.id, "recording", "", 1))
    assert drain(host_socket) == [{"type": "recording", "state": "recording", "detail": ""}]
    assert f'townhall_recording_paused{{space="{space.id}"}} 0.0' in (
        await scrape_async(town.client, "", town.control.admin_key)
    )
    town.control.receive(RecordingStatus(space.id, "sealed", "", 2))
    assert drain(host_socket)[0]["state"] == "sealed"
    metrics = await scrape_async(town.client, "", town.control.admin_key)
    assert "townhall_recording_paused{" not in metrics
    assert "townhall_recording_write_errors_total 2.0" in metrics


async def test_the_end_closes_the_stage_and_the_room_goes_to_the_link(town: Town) -> None:
    space = await busy_space(town)
    assert (await town.post(space.id, "/end", space.host)).status_code == 200
    assert town.hub.of(CloseStage) == [CloseStage(space.id)]
    updates = town.hub.of(RoomUpdate)
    assert updates and '"state":"ended"' in updates[-1].json


def test_the_inbox_keeps_what_came_before_its_handler() -> None:
    got: list[object] = []
    inbox = Inbox()
    inbox.deliver(1)
    inbox.deliver(2)
    inbox.hand_to(got.append)
    inbox.deliver(3)
    assert got == [1, 2, 3]
