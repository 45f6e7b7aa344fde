"""The speaker bot against a fake stage on a real socket: a lost stage is rejoined with
a new PeerConnection through a 503, and a 403 takes it off stage for good."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from townhall.media.mixer import Pcm, silence
from townhall.peers.links import StageLink
from townhall.peers.sources import ToneSource
from townhall.peers.speak import Speaker, StageRefused, WatchdogConfig
from townhall.stage.audio import PacedPcmTrack, PcmSource
from townhall.stage.ice import rtc_configuration


class Silence(PcmSource):
    def next_frame(self, now: float) -> Pcm:
        return silence()


class FakeStage:
    """Answers stage offers as scripted: "answer" (a real aiortc peer sending a
    mix-minus of silence), or an HTTP status."""

    def __init__(self, script: list[str | int]) -> None:
        self.script = script
        self.offers = 0
        self.peers: list[RTCPeerConnection] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.lower().split("\r\n")
        length = next(int(x.split(":")[1]) for x in lines if x.startswith("content-length"))
        offer = json.loads(await reader.readexactly(length))
        step = self.script[min(self.offers, len(self.script) - 1)]
        self.offers += 1
        if step == "answer":
            status, headers, body = 200, "", json.dumps(await self._answer(offer)).encode()
        else:
            status, headers, body = int(step), "Retry-After: 0\r\n", b'{"detail":"scripted"}'
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    async def _answer(self, offer: dict[str, str]) -> dict[str, str]:
        pc = RTCPeerConnection(rtc_configuration())
        self.peers.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        pc.addTrack(PacedPcmTrack(Silence()))
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def freeze(self) -> None:
        """The stage process hangs or dies without a goodbye: nothing more is sent."""
        for pc in self.peers:
            for sender in pc.getSenders():
                if sender.track is not None:
                    sender.track.stop()

    async def close(self) -> None:
        """The stage closes its connections (a goodbye the speaker can see)."""
        for pc in self.peers:
            await pc.close()


@asynccontextmanager
async def fake_stage(stage: FakeStage) -> AsyncIterator[StageLink]:
    server = await asyncio.start_server(stage.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield StageLink(f"http://127.0.0.1:{port}", "s1", "token")
    await stage.close()


async def wait_for(predicate, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_a_lost_stage_is_rejoined_through_a_503_and_a_403_stops_it() -> None:
    stage = FakeStage(["answer", 503, "answer", 403])
    watchdog = WatchdogConfig(silence_limit_s=0.6)
    async with fake_stage(stage) as link:
        speaker = Speaker(link, ToneSource(440), watchdog, random.Random(3))
        await speaker.join()
        try:
            await asyncio.sleep(0.5)
            assert len(speaker.heard.pcm()) > 0, "the fake stage's mix-minus never arrived"
            first_pc = speaker.pc
            await stage.freeze()
            await wait_for(lambda: speaker.rejoins == 1, 10.0)
            assert stage.offers == 3  # the answer, the 503, the new answer
            assert speaker.pc is not first_pc
            assert speaker.lost_reason is not None and "no audio" in speaker.lost_reason
            assert speaker.last_rejoin_s is not None and speaker.last_rejoin_s < 4.0
            since = time.monotonic()
            await asyncio.sleep(0.5)
            assert len(speaker.heard.pcm(since)) > 0, "nothing heard after the rejoin"
            assert speaker.stopped is None

            await stage.close()
            await asyncio.wait_for(speaker.gone.wait(), 10.0)
            assert speaker.stopped is not None and "403" in speaker.stopped
            assert speaker.rejoins == 1
        finally:
            await speaker.leave()


async def test_joining_waits_out_a_restarting_stage_but_not_a_refusal() -> None:
    stage = FakeStage([503, 409, "answer"])
    async with fake_stage(stage) as link:
        speaker = Speaker(link, ToneSource(440), rng=random.Random(4))
        try:
            await speaker.join_patiently(within_s=10.0)
            assert stage.offers == 3 and speaker.pc.connectionState == "connected"
        finally:
            await speaker.leave()

    stage = FakeStage([404])
    async with fake_stage(stage) as link:
        speaker = Speaker(link, ToneSource(440))
        started = time.monotonic()
        with pytest.raises(StageRefused, match="404"):
            await speaker.join_patiently(within_s=10.0)
        assert stage.offers == 1 and time.monotonic() - started < 2.0
        await speaker.leave()
