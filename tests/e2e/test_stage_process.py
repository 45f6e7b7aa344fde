"""A stage process for real: spawned as the supervisor spawns it, a socketpair as its
link, a real aiortc speaker in the test. It answers Connect, mixes the speaker into the
program, streams the feed and its status down the link, ends cleanly on CloseStage,
exits when the link closes, and a second incarnation carries media time and LL-HLS
numbering on with a discontinuity."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from benchmarks.harness.audio import decode, tone_windows
from townhall.config import ServerConfig
from townhall.feed import ChannelEnded, HlsInit, HlsPart, OggHeader, OggPages
from townhall.media.ogg import parse_pages
from townhall.peers.sources import ToneSource
from townhall.stage.audio import PacedPcmTrack
from townhall.stage.ice import allow_loopback_candidates, rtc_configuration
from townhall.stage.process import run_stage_process
from townhall.supervise.link import Link, open_link
from townhall.supervise.messages import (
    CloseStage,
    Connect,
    OpenStage,
    SetProgram,
    StageReply,
    StageRequest,
    StageStatus,
)
from townhall.supervise.specs import StageSpec

SPACE = "sp-stage"
TONE_HZ = 440.0


@dataclass
class StageUnderTest:
    """The hub's side of one stage process."""

    process: multiprocessing.process.BaseProcess
    link: Link | None = None
    received: list[Any] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    next_request_id: int = 1

    def on_message(self, msg: Any) -> None:
        self.received.append(msg)
        self.arrived.set()

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.received if isinstance(m, kind)]

    async def wait_for(self, check: Callable[[Any], bool], timeout_s: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            found = next((m for m in self.received if check(m)), None)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"nothing matched in {timeout_s} s; got {len(self.received)}"
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)

    async def request(self, op: Any) -> StageReply:
        rid = self.next_request_id
        self.next_request_id += 1
        assert self.link is not None
        self.link.send(StageRequest(SPACE, rid, op))
        reply = await self.wait_for(lambda m: isinstance(m, StageReply) and m.request_id == rid)
        assert isinstance(reply, StageReply)
        return reply

    async def exited(self, timeout_s: float = 10.0) -> int | None:
        deadline = time.monotonic() + timeout_s
        while self.process.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.process.exitcode


async def spawn(spec: StageSpec) -> StageUnderTest:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ctx = multiprocessing.get_context("spawn")
    process = ctx.Process(target=run_stage_process, args=(spec, theirs), daemon=True)
    process.start()
    theirs.close()
    stage = StageUnderTest(process)
    stage.link = await open_link(ours, stage.on_message)
    return stage


def spec_for(started_at: float, incarnation: int, next_part_seq: int | None) -> StageSpec:
    return StageSpec(
        ServerConfig(),
        OpenStage(SPACE, started_at, frozenset({"alice"})),
        incarnation,
        next_part_seq,
    )


async def speak(stage: StageUnderTest, pid: str) -> RTCPeerConnection:
    """A real speaker: an aiortc offer through the stage's Connect, until connected."""
    allow_loopback_candidates()
    pc = RTCPeerConnection(rtc_configuration())
    pc.addTrack(PacedPcmTrack(ToneSource(TONE_HZ)))
    await pc.setLocalDescription(await pc.createOffer())
    reply = await stage.request(Connect(pid, pid.title(), pc.localDescription.sdp, "offer"))
    assert reply.ok, reply
    assert reply.kind == "answer" and reply.sdp.startswith("v=0")
    await pc.setRemoteDescription(RTCSessionDescription(reply.sdp, reply.kind))
    deadline = time.monotonic() + 15
    while pc.connectionState != "connected":
        assert time.monotonic() < deadline, pc.connectionState
        await asyncio.sleep(0.05)
    return pc


def program_of(stage: StageUnderTest) -> bytes:
    (header,) = stage.of(OggHeader)
    return header.data + b"".join(m.data for m in stage.of(OggPages))


def mic_checked(name: str) -> Callable[[Any], bool]:
    def check(m: Any) -> bool:
        return isinstance(m, StageStatus) and any(
            s.participant_id == name and s.mic_checked for s in m.members
        )

    return check


def test_a_stage_process_serves_a_speaker_and_a_restart_carries_on() -> None:
    asyncio.run(_scenario())


async def _scenario() -> None:
    started_at = time.time()
    first = await spawn(spec_for(started_at, 0, None))
    try:
        bad = await first.request(Connect("bob", "Bob", "not sdp", "offer"))
        assert not bad.ok and bad.error_status == 400
        pc = await speak(first, "alice")
        status = await first.wait_for(mic_checked("alice"))
        (alice,) = status.members
        assert alice.connection == "connected" and alice.level_dbfs > -30
        await asyncio.sleep(1.5)  # the tone reaches the program
        silenced = await first.request(SetProgram(frozenset()))
        assert silenced.ok
        # Pages from here on were encoded after the set emptied (one page of margin
        # for the page being filled).
        silent_from = len(first.of(OggPages)) + 1
        await asyncio.sleep(1.5)
        assert first.link is not None
        first.link.send(CloseStage(SPACE))
        await first.wait_for(lambda m: isinstance(m, ChannelEnded))
        assert await first.exited() == 0
        await pc.close()
    finally:
        first.process.kill()

    # The feed: the header first, the program carries the speaker while they were in the
    # program set and not after, media time from the start, statuses with a clock.
    kinds = [type(m) for m in first.received if not isinstance(m, StageStatus | StageReply)]
    assert kinds[0] is OggHeader and kinds[-1] is ChannelEnded
    assert HlsInit in kinds
    parts = first.of(HlsPart)
    seqs = [p.seq for p in parts]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] % 4 == 0
    assert not any(p.discontinuity for p in parts)
    signal = decode(program_of(first))
    windows = tone_windows(signal, TONE_HZ)
    assert windows.sum() >= 25, "the speaker's tone is in the program"
    pages_before = sum(len(parse_pages(m.data)[0]) for m in first.of(OggPages)[:silent_from])
    # 10 windows of 20 ms per 200 ms page; 300 ms of slack for page sizes, the codec's
    # delay and frames already in the tick when the set changed.
    after = windows[pages_before * 10 + 15 :]
    assert len(after) >= 30 and not after.any(), "nothing of them after the set emptied"
    statuses = first.of(StageStatus)
    assert len(statuses) >= 20 and statuses[-1].ticks >= 100
    assert 0.015 < statuses[-1].longest_tick_gap_s < 0.5

    # A restarted stage: numbering goes on from the last part, after a discontinuity,
    # and the Ogg stream is a new logical stream whose granules run on.
    second = await spawn(spec_for(started_at, 1, (seqs[-1] + 1)))
    try:
        await second.wait_for(lambda m: isinstance(m, HlsPart))
        await asyncio.sleep(1.0)
        assert second.link is not None
        second.link.close()  # the hub is gone: the stage exits at once
        assert await second.exited(5.0) == 0
    finally:
        second.process.kill()
    later = second.of(HlsPart)
    assert later[0].seq >= seqs[-1] + 1 and later[0].seq % 4 == 0 and later[0].discontinuity
    assert not any(p.discontinuity for p in later[1:])
    old_pages, _ = parse_pages(program_of(first))
    new_pages, _ = parse_pages(program_of(second))
    assert old_pages[0].data[14:18] != new_pages[0].data[14:18]  # a new serial
    new_granules = [p.granule for p in new_pages if not p.is_header]
    assert min(new_granules) > max(p.granule for p in old_pages)
