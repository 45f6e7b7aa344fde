"""The stage process's message handling, in process: a real StageRuntime, the hub's
side of the link as a list."""

from __future__ import annotations

import asyncio
from typing import Any

from townhall.config import ServerConfig
from townhall.feed import OggHeader
from townhall.stage.process import ProgramSet, StageHost, start_for
from townhall.stage.runtime import StageRuntime
from townhall.supervise.link import LinkFeed
from townhall.supervise.messages import (
    CloseStage,
    Connect,
    Disconnect,
    OpenStage,
    SetProgram,
    StageReply,
    StageRequest,
    StageStatus,
)
from townhall.supervise.specs import StageSpec

T0 = 1_700_000_000.0


async def host_and_sent() -> tuple[StageHost, list[Any]]:
    sent: list[Any] = []
    program = ProgramSet(frozenset({"alice"}))
    runtime = StageRuntime("sp", LinkFeed(sent.append), gate=program)
    return StageHost(runtime, program, sent.append), sent


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_set_program_applies_at_once_and_is_answered() -> None:
    async def scenario() -> None:
        host, sent = await host_and_sent()
        assert host.runtime.gate("alice") and not host.runtime.gate("bob")
        host.on_message(StageRequest("sp", 7, SetProgram(frozenset({"bob"}))))
        assert host.runtime.gate("bob") and not host.runtime.gate("alice")
        assert sent == [StageReply("sp", 7, True)]

    asyncio.run(scenario())


def test_a_bad_offer_is_answered_with_its_http_meaning() -> None:
    async def scenario() -> None:
        host, sent = await host_and_sent()
        host.on_message(StageRequest("sp", 1, Connect("bob", "Bob", "nonsense", "offer")))
        host.on_message(StageRequest("sp", 2, Connect("bob", "Bob", "v=0", "answer")))
        host.on_message(StageRequest("sp", 3, Disconnect("nobody")))
        await settle()
        replies = {r.request_id: r for r in sent if isinstance(r, StageReply)}
        assert not replies[1].ok and replies[1].error_status == 400
        assert "malformed" in replies[1].error_detail
        assert not replies[2].ok and replies[2].error_status == 400
        assert replies[3].ok

    asyncio.run(scenario())


def test_a_request_for_another_space_is_not_found() -> None:
    async def scenario() -> None:
        host, sent = await host_and_sent()
        host.on_message(StageRequest("other", 4, SetProgram(frozenset())))
        assert sent == [StageReply("other", 4, False, error_status=404,
                                   error_detail="no such space on this stage")]  # fmt: skip
        assert host.runtime.gate("alice")

    asyncio.run(scenario())


def test_close_stage_ends_the_program_and_publishes_the_end() -> None:
    async def scenario() -> list[Any]:
        host, sent = await host_and_sent()
        host.on_message(CloseStage("other"))
        assert not host.closing.done()
        for _ in range(30):
            host.runtime.tick()
        host.on_message(CloseStage("sp"))
        assert host.closing.done()
        await host.close()
        return sent

    sent = asyncio.run(scenario())
    names = [type(m).__name__ for m in sent]
    assert names[0] == "OggHeader" and names[-1] == "ChannelEnded"
    assert isinstance(sent[0], OggHeader)


def test_status_reports_the_clock() -> None:
    async def scenario() -> StageStatus:
        host, _ = await host_and_sent()
        for _ in range(3):
            host.runtime.tick()
        return host.status()

    status = asyncio.run(scenario())
    assert status == StageStatus("sp", (), 3, 0, 0.0)


def test_each_incarnation_starts_where_media_time_is() -> None:
    config = ServerConfig()
    first = StageSpec(config, OpenStage("sp", T0), 0)
    assert start_for(first, T0).first_part_seq == 0
    assert not start_for(first, T0).discontinuity
    again = StageSpec(config, OpenStage("sp", T0), 2, next_part_seq=41)
    start = start_for(again, T0 + 10.0)
    assert start.first_part_seq == 44 and start.discontinuity  # 41 up to a segment of 4
    assert start.samples == 44 * 24_000
