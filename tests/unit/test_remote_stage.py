"""``RemoteStage``: a Space's stage in another process, asked over a link and answered
by request id. The link is a fake with the real ``send`` that keeps what it is given;
the test plays the hub and the stage process."""

from __future__ import annotations

import asyncio

import pytest

from townhall.control.remote import RemoteStage, RemoteStages, error_of
from townhall.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    PayloadTooLarge,
    TownhallError,
    Unavailable,
)
from townhall.room.roles import Role
from townhall.room.state import Room
from townhall.supervise.messages import (
    CloseStage,
    Connect,
    Disconnect,
    MemberStatus,
    OpenStage,
    SetProgram,
    StageReply,
    StageRequest,
    StageStatus,
)


class FakeLink:
    """The supervisor link's sending side: keeps every message; ``up`` False drops them."""

    def __init__(self) -> None:
        self.sent: list[object] = []
        self.up = True

    def send(self, msg: object) -> bool:
        if self.up:
            self.sent.append(msg)
        return self.up

    def requests(self) -> list[StageRequest]:
        return [m for m in self.sent if isinstance(m, StageRequest)]

    def programs(self) -> list[frozenset[str]]:
        return [r.op.participant_ids for r in self.requests() if isinstance(r.op, SetProgram)]


def live_room() -> Room:
    room = Room("sp", "h", "Town hall")
    room.join("h", "Hana", Role.HOST, 1.0)
    room.start("h", 1000.0)
    return room


def member(pid: str, checked: bool = True) -> MemberStatus:
    return MemberStatus(pid, pid.upper(), checked, -20.0, 0.1 if checked else None, "connected")


def open_stage(timeout_s: float = 1.0) -> tuple[RemoteStage, FakeLink, Room]:
    link, room = FakeLink(), live_room()
    stage = RemoteStages(link, timeout_s).open(room)
    return stage, link, room


async def test_start_opens_the_stage_with_the_original_start_time_and_program() -> None:
    stage, link, room = open_stage()
    room.mic_check_passed("h", 1001.0)
    stage.start()
    assert link.sent == [OpenStage("sp", 1000.0, frozenset({"h"}))]
    stage.sync_program()
    assert link.programs() == []  # unchanged since the OpenStage said it


async def test_a_connect_is_answered_by_its_request_id() -> None:
    stage, link, _ = open_stage()

    async def stage_process() -> None:
        while not link.requests():
            await asyncio.sleep(0)
        [req] = link.requests()
        assert req.op == Connect("h", "Hana", "v=0 offer", "offer")
        stage.replied(StageReply("sp", req.request_id + 100, ok=True, sdp="someone else's"))
        stage.replied(StageReply("sp", req.request_id, ok=True, sdp="v=0 answer", kind="answer"))

    answered, _ = await asyncio.gather(stage.connect("h", "Hana", "v=0 offer", "offer"),
                                       stage_process())  # fmt: skip
    assert (answered.sdp, answered.type) == ("v=0 answer", "answer")


async def test_a_stage_that_does_not_answer_is_a_503() -> None:
    stage, link, _ = open_stage(timeout_s=0.05)
    with pytest.raises(Unavailable, match="the stage is not answering") as err:
        await stage.connect("h", "Hana", "v=0", "offer")
    assert err.value.status == 503 and err.value.retry_after_s >= 1
    link.up = False  # the link is closed: refused at once, not after the timeout
    with pytest.raises(Unavailable, match="not answering"):
        await asyncio.wait_for(stage.connect("h", "Hana", "v=0", "offer"), 0.04)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, BadRequest), (403, Forbidden), (409, Conflict), (413, PayloadTooLarge),
     (503, Unavailable), (500, TownhallError), (502, TownhallError)],
)  # fmt: skip
async def test_a_refusal_is_the_error_of_its_status(status: int, kind: type) -> None:
    stage, link, _ = open_stage()

    async def refuse() -> None:
        while not link.requests():
            await asyncio.sleep(0)
        rid = link.requests()[0].request_id
        stage.replied(StageReply("sp", rid, ok=False, error_status=status, error_detail="no"))

    with pytest.raises(kind) as err:
        await asyncio.gather(stage.connect("h", "Hana", "v=0", "offer"), refuse())
    assert type(err.value) is kind and err.value.detail == "no"
    assert err.value.status == (500 if kind is TownhallError else status)


def test_error_of_a_bare_refusal_still_says_something() -> None:
    assert error_of(StageReply("sp", 1, ok=False, error_status=409)).detail


async def test_a_lost_stage_fails_the_requests_in_flight_with_503() -> None:
    stage, link, _ = open_stage(timeout_s=10)
    asking = asyncio.ensure_future(stage.connect("h", "Hana", "v=0", "offer"))
    while not link.requests():
        await asyncio.sleep(0)
    stage.lost()
    with pytest.raises(Unavailable, match="restarting"):
        await asyncio.wait_for(asking, 1)


async def test_members_and_clock_come_from_the_latest_status() -> None:
    stage, link, _ = open_stage()
    stage.start()
    stage.reported(StageStatus("sp", (member("h"), member("x", checked=False)), 500, 2, 0.03))
    assert set(stage.members) == {"h", "x"}
    assert stage.members["h"].mic_checked and not stage.members["x"].mic_checked
    assert stage.members["x"].silent_for(5.0) == float("inf")
    assert (stage.ticks, stage.clock_slips) == (500, 2)
    assert [(s["id"], s["mic_checked"]) for s in stage.status()] == [("h", True), ("x", False)]
    await stage.disconnect("x")
    assert set(stage.members) == {"h"}
    assert link.requests()[-1].op == Disconnect("x")
    stage.started()  # a new stage process knows nobody
    assert stage.members == {}


async def test_the_program_set_is_sent_when_it_changes_and_to_a_new_stage() -> None:
    stage, link, room = open_stage()
    stage.start()
    stage.sync_program()
    assert link.programs() == []
    room.mic_check_passed("h", 1001.0)
    stage.sync_program()
    stage.sync_program()
    assert link.programs() == [frozenset({"h"})]
    room.mute("h", "h", 1002.0)
    stage.reported(StageStatus("sp", (member("h"),), 10, 0, 0.02))  # checked on each status
    assert link.programs() == [frozenset({"h"}), frozenset()]
    stage.sync_program(force=True)  # a new stage process is told even if nothing changed
    assert link.programs()[-1] == frozenset()
    ids = [r.request_id for r in link.requests()]
    assert len(set(ids)) == len(ids)  # every request its own id


async def test_the_end_closes_the_stage_and_nothing_more_is_asked() -> None:
    link = FakeLink()
    stages = RemoteStages(link, 1.0)
    stage = stages.open(live_room())
    stage.start()
    await stage.end()
    assert link.sent[-1] == CloseStage("sp")
    assert stages.get("sp") is None and stages.all() == []
    with pytest.raises(Conflict, match="ended"):
        await stage.connect("h", "Hana", "v=0", "offer")
    sent = len(link.sent)
    stage.sync_program(force=True)
    stage.reported(StageStatus("sp", (member("h"),), 10, 0, 0.02))
    assert len(link.sent) == sent and stage.members == {}


def test_request_ids_are_unique_across_the_stages_of_a_process() -> None:
    link = FakeLink()
    stages = RemoteStages(link, 1.0)
    rooms = [live_room() for _ in range(2)]
    opened = [stages.open(r) for r in rooms]
    for stage in opened:
        stage.sync_program(force=True)
        stage.sync_program(force=True)
    ids = [r.request_id for r in link.requests()]
    assert len(ids) == 4 and len(set(ids)) == 4
