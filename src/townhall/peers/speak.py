"""A speaker bot: joins the stage over WebRTC, sends a source, records its mix-minus.

This is a real WebRTC peer (aiortc, Opus), the same path a browser takes; the tests and
benchmarks use it to put known sounds on stage and to hear what a speaker hears.

It stays on stage by itself: the stage sends every speaker their mix-minus every 20 ms
(silence included), so a connection that delivers nothing for ``silence_limit_s`` is
a lost stage (its process died or restarted). aiortc has no ICE restart, so the speaker
closes that connection and joins again with a new one, on the reconnect schedule, with
the same source and the same record of what it heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from townhall.media.mixer import Pcm
from townhall.peers.backoff import parse_retry_after, reconnect_delay
from townhall.peers.links import StageLink
from townhall.stage.audio import PacedPcmTrack, PcmSource, read_pcm
from townhall.stage.ice import allow_loopback_candidates, rtc_configuration

log = logging.getLogger(__name__)


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


# -- the pure cores -------------------------------------------------------------------


@dataclass(frozen=True)
class WatchdogConfig:
    silence_limit_s: float = 1.0  # 50 mix-minus frames missed: the stage is gone
    check_interval_s: float = 0.1
    connect_timeout_s: float = 10.0


def stage_lost(
    now: float,
    connected_at: float,
    last_frame_at: float | None,
    connection_state: str,
    silence_limit_s: float,
) -> str | None:
    """Why the stage is lost, or None while it is there. A connection that never
    delivered a frame is given the same time from when it connected."""
    if connection_state in ("failed", "closed"):
        return f"the connection {connection_state}"
    heard_at = connected_at if last_frame_at is None else max(last_frame_at, connected_at)
    if now - heard_at > silence_limit_s:
        return f"no audio from the stage for {now - heard_at:.1f} s"
    return None


class OfferVerdict(Enum):
    RETRY = "retry"  # the stage is restarting, busy, or the server is unreachable
    STOP = "stop"  # retrying cannot help: bad token, removed, no such Space


def offer_verdict(status: int | None, code: str = "") -> OfferVerdict:
    """What to do about a refused stage offer (``None``: no HTTP answer at all); ``code``
    is the JSON error code, which tells a link another client holds from a busy stage."""
    if code == "link_in_use":
        return OfferVerdict.STOP
    if status is None or status in (408, 409, 425, 429) or status >= 500:
        return OfferVerdict.RETRY
    return OfferVerdict.STOP


# -- the adapter ----------------------------------------------------------------------


class StageRefused(RuntimeError):
    """The stage would not take this speaker's offer."""

    def __init__(
        self,
        status: int | None,
        detail: str,
        retry_after_s: float | None = None,
        code: str = "",
    ):
        super().__init__(f"stage refused the offer: {status} {detail}")
        self.status = status
        self.retry_after_s = retry_after_s
        self.code = code  # the JSON error code, when the server sent one


class Speaker:
    def __init__(
        self,
        link: StageLink,
        source: PcmSource,
        watchdog: WatchdogConfig | None = None,
        rng: random.Random | None = None,
        holder: str | None = None,
    ) -> None:
        allow_loopback_candidates()
        self.link = link
        self.source = source
        self.watchdog = watchdog or WatchdogConfig()
        self.rng = rng or random.Random()
        self.track = PacedPcmTrack(source)
        # This speaker's key to its link: the first offer claims the link with it and
        # every rejoin shows it again; another client with the link is refused.
        self.holder = holder or secrets.token_urlsafe(16)
        self.heard = HeardAudio()
        self.pc = RTCPeerConnection(rtc_configuration())
        self.rejoins = 0  # connections replaced after a lost stage
        self.last_rejoin_s: float | None = None  # from noticing the loss to connected again
        self.lost_reason: str | None = None  # why the last connection was given up
        self.stopped: str | None = None  # set when the stage refused for good
        self.gone = asyncio.Event()  # set with ``stopped``
        self._connected_at = 0.0
        self._last_frame_at: float | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._leaving = False

    async def join(self, timeout_s: float = 10.0) -> None:
        """Join the stage (raises StageRefused) and stay on it until ``leave()``."""
        await self._connect(timeout_s)
        self._watch = asyncio.create_task(self._keep_on_stage())

    async def join_patiently(self, within_s: float, timeout_s: float = 10.0) -> None:
        """``join()``, retrying on the reconnect schedule what may pass (a restarting
        stage, an unreachable server) for up to ``within_s``."""
        deadline = time.monotonic() + within_s
        attempt = 0
        while True:
            try:
                await self.join(timeout_s)
                return
            except StageRefused as refused:
                delay = reconnect_delay(attempt, self.rng, refused.retry_after_s)
                retry = offer_verdict(refused.status, refused.code) is OfferVerdict.RETRY
                if not retry or time.monotonic() + delay > deadline:
                    raise
                await asyncio.shield(self.pc.close())
                self.track = PacedPcmTrack(self.source)
                self.pc = RTCPeerConnection(rtc_configuration())
                await asyncio.sleep(delay)
                attempt += 1

    async def _connect(self, timeout_s: float) -> None:
        pc = self.pc
        pc.addTrack(self.track)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._reader = asyncio.create_task(self._listen(track))

        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription
        try:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                resp = await client.post(
                    f"{self.link.control_url}/api/spaces/{self.link.space_id}/stage/offer",
                    json={"sdp": offer.sdp, "type": offer.type},
                    headers={
                        "Authorization": f"Bearer {self.link.token}",
                        "X-Townhall-Holder": self.holder,
                    },
                )
        except httpx.HTTPError as exc:
            raise StageRefused(None, f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            raise StageRefused(resp.status_code, resp.text, retry_after, _error_code(resp))
        answer = resp.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await self._wait_connected(timeout_s)
        self._connected_at = time.monotonic()
        self._last_frame_at = None

    async def _wait_connected(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pc.connectionState != "connected":
            if self.pc.connectionState == "failed" or time.monotonic() > deadline:
                raise StageRefused(None, f"WebRTC connection {self.pc.connectionState}")
            await asyncio.sleep(0.02)

    async def _listen(self, track: MediaStreamTrack) -> None:
        await read_pcm(track, self._heard)

    def _heard(self, pcm: Pcm, at: float) -> None:
        self._last_frame_at = at
        self.heard.add(at, pcm)

    async def _keep_on_stage(self) -> None:
        config = self.watchdog
        while not self._leaving:
            await asyncio.sleep(config.check_interval_s)
            why = stage_lost(
                time.monotonic(),
                self._connected_at,
                self._last_frame_at,
                self.pc.connectionState,
                config.silence_limit_s,
            )
            if why is not None:
                self.lost_reason = why
                if not await self._rejoin(why):
                    return

    async def _rejoin(self, why: str) -> bool:
        """Replace the lost connection; False once the stage refuses for good."""
        lost_at = time.monotonic()
        log.warning("speaker %s: %s; rejoining the stage", self.link.space_id, why)
        attempt, retry_after = 0, None
        while not self._leaving:
            await self._drop_connection()
            await asyncio.sleep(reconnect_delay(attempt, self.rng, retry_after))
            if self._leaving:
                break
            self.track = PacedPcmTrack(self.source)  # a stopped track cannot be re-sent
            self.pc = RTCPeerConnection(rtc_configuration())
            try:
                await self._connect(self.watchdog.connect_timeout_s)
            except StageRefused as refused:
                if offer_verdict(refused.status, refused.code) is OfferVerdict.STOP:
                    await self._drop_connection()
                    self.stopped = str(refused)
                    self.gone.set()
                    return False
                attempt, retry_after = attempt + 1, refused.retry_after_s
                continue
            except Exception:  # aiortc on a half-made connection: try a fresh one
                log.exception("speaker %s: rejoining failed", self.link.space_id)
                attempt, retry_after = attempt + 1, None
                continue
            self.rejoins += 1
            self.last_rejoin_s = time.monotonic() - lost_at
            return True
        return False

    async def _drop_connection(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self.track.stop()
        # Shielded: aiortc's close cannot be interrupted (a second close would wait
        # forever for the first), and leave() cancels the watchdog at any point.
        await asyncio.shield(self.pc.close())

    async def leave(self) -> None:
        self._leaving = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._drop_connection()


def _error_code(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return ""
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) else ""
