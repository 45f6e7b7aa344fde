"""One person on stage: their peer connection, their inbox of frames, their meter."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection

from townhall.media.mixer import Pcm
from townhall.stage.audio import OutboundTrack, read_pcm

# A frame quieter than this is treated as no signal (a muted or dead microphone).
SILENCE_DBFS = -60.0


def level_dbfs(pcm: Pcm) -> float:
    rms = float(np.sqrt(np.mean(pcm.astype(np.float32) ** 2)))
    return 20 * math.log10(rms / 32768) if rms > 0 else -120.0


@dataclass(frozen=True)
class MemberConfig:
    # Jitter allowance: the inbox holds at most this many 20 ms frames; beyond it the
    # oldest are dropped so a speaker's delay cannot grow.
    max_inbox_frames: int = 8
    prime_frames: int = 2
    # Arrivals and ticks run at the same rate, so a backlog left by a burst (a stalled
    # loop, a jitter-buffer release) would stay as added delay for good. Frames that sat
    # in the inbox for a whole window (its minimum depth above this target) are pure
    # delay and are dropped; short jitter bursts are left alone.
    target_inbox_frames: int = 2
    backlog_window_ticks: int = 50
    mic_check_frames: int = 15  # 300 ms of real signal proves the microphone works


@dataclass
class StageMember:
    participant_id: str
    name: str
    pc: RTCPeerConnection
    config: MemberConfig = field(default_factory=MemberConfig)
    outbound: OutboundTrack = field(default_factory=OutboundTrack)
    inbox: deque[Pcm] = field(default_factory=deque)
    primed: bool = False
    frames_received: int = 0
    signal_frames: int = 0
    last_frame_at: float | None = None
    last_signal_at: float | None = None
    level: float = -120.0
    reader: asyncio.Task[None] | None = None
    closed: bool = False
    _window_min: int = 1 << 30
    _window_ticks: int = 0

    def accept(self, pcm: Pcm, now: float) -> None:
        if len(self.inbox) >= self.config.max_inbox_frames:
            self.inbox.popleft()
        self.inbox.append(pcm)
        self.frames_received += 1
        self.last_frame_at = now
        self.level = level_dbfs(pcm)
        if self.level > SILENCE_DBFS:
            self.signal_frames += 1
            self.last_signal_at = now

    def take_frame(self) -> Pcm | None:
        """The next frame for this tick, or None while (re)filling the jitter allowance."""
        if not self.primed:
            if len(self.inbox) < self.config.prime_frames:
                return None
            self.primed = True
        if not self.inbox:
            self.primed = False
            return None
        self._trim_standing_backlog()
        return self.inbox.popleft()

    def _trim_standing_backlog(self) -> None:
        self._window_min = min(self._window_min, len(self.inbox))
        self._window_ticks += 1
        if self._window_ticks < self.config.backlog_window_ticks:
            return
        excess = self._window_min - self.config.target_inbox_frames
        for _ in range(max(0, excess)):
            self.inbox.popleft()  # bounded delay beats every sample
        self._window_min, self._window_ticks = 1 << 30, 0

    @property
    def mic_checked(self) -> bool:
        return self.signal_frames >= self.config.mic_check_frames

    def silent_for(self, now: float) -> float:
        """Seconds since the server last received real signal (a dead-mic alarm)."""
        since = self.last_signal_at
        return now - since if since is not None else math.inf

    async def read(self, track: MediaStreamTrack) -> None:
        await read_pcm(track, self.accept)

    async def close(self) -> None:
        if self.closed:
            return  # closing fires the connection's "closed" event, which closes again
        self.closed = True
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        self.outbound.stop()
        await self.pc.close()

    def status(self, now: float) -> dict[str, object]:
        silent = self.silent_for(now)
        return {
            "id": self.participant_id,
            "connected": self.pc.connectionState == "connected",
            "receiving": self.last_frame_at is not None and now - self.last_frame_at < 2.0,
            "level_dbfs": round(self.level, 1),
            "mic_checked": self.mic_checked,
            "silent_s": None if math.isinf(silent) else round(silent, 1),
        }
