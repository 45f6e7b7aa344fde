"""A speaker bot: joins the stage over WebRTC, sends a source, records its mix-minus.

This is a real WebRTC peer (aiortc, Opus), the same path a browser takes; the tests and
benchmarks use it to put known sounds on stage and to hear what a speaker hears.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from townhall.media.mixer import Pcm
from townhall.peers.links import StageLink
from townhall.stage.audio import PacedPcmTrack, PcmSource, read_pcm
from townhall.stage.ice import allow_loopback_candidates, rtc_configuration


@dataclass
class HeardAudio:
    """What a speaker hears (their mix-minus), with arrival times; bounded."""

    max_frames: int = 50 * 120
    frames: deque[tuple[float, Pcm]] = field(default_factory=deque)

    def add(self, at: float, pcm: Pcm) -> None:
        if len(self.frames) >= self.max_frames:
            self.frames.popleft()
        self.frames.append((at, pcm))

    def pcm(self, since: float = 0.0) -> Pcm:
        parts = [p for at, p in self.frames if at >= since]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


class Speaker:
    def __init__(self, link: StageLink, source: PcmSource) -> None:
        allow_loopback_candidates()
        self.link = link
        self.track = PacedPcmTrack(source)
        self.heard = HeardAudio()
        self.pc = RTCPeerConnection(rtc_configuration())
        self._reader: asyncio.Task[None] | None = None

    async def join(self, timeout_s: float = 10.0) -> None:
        self.pc.addTrack(self.track)

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._reader = asyncio.create_task(self._listen(track))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            resp = await client.post(
                f"{self.link.control_url}/api/spaces/{self.link.space_id}/stage/offer",
                json={"sdp": offer.sdp, "type": offer.type},
                headers={"Authorization": f"Bearer {self.link.token}"},
            )
        if resp.status_code != 200:
            raise RuntimeError(f"stage refused the offer: {resp.status_code} {resp.text}")
        answer = resp.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await self._wait_connected(timeout_s)

    async def _wait_connected(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pc.connectionState != "connected":
            if self.pc.connectionState == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"WebRTC connection {self.pc.connectionState}")
            await asyncio.sleep(0.02)

    async def _listen(self, track: MediaStreamTrack) -> None:
        await read_pcm(track, lambda pcm, at: self.heard.add(at, pcm))

    async def leave(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()
