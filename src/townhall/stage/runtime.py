"""The stage of one Space: members in, program out, on a 20 ms clock.

Each tick takes at most one frame from every member's inbox, mixes once, pushes each
member's mix-minus back over WebRTC, encodes the program once, and publishes the
encoded bytes to its feed (the audience plane and the recorder are sinks of it). The
clock is deadline-based: a member who sends nothing contributes nothing that tick, and
the program keeps time regardless.
If the process stalls, the clock catches up by running the missed ticks back to back,
up to ``max_catch_up_s``; past that it resynchronises rather than bursting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection, RTCSessionDescription

from townhall.errors import BadRequest, Conflict
from townhall.feed import (
    ChannelEnded,
    FeedMessage,
    FeedSink,
    HlsInit,
    HlsPart,
    OggHeader,
    OggPages,
)
from townhall.media.mixer import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE_HZ, Pcm, mix
from townhall.media.program import EncoderConfig, Packaged, ProgramEncoder
from townhall.media.timeline import MediaStart
from townhall.stage.gaps import RecentMaximum
from townhall.stage.ice import rtc_configuration
from townhall.stage.member import MemberConfig, StageMember

log = logging.getLogger(__name__)

TICK_S = FRAME_MS / 1000


@dataclass(frozen=True)
class StageConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    member: MemberConfig = field(default_factory=MemberConfig)
    max_catch_up_s: float = 0.2
    max_offer_bytes: int = 64 * 1024
    # The clock's health is reported as its longest gap between ticks over this window.
    tick_gap_window_s: float = 10.0
    # A stage process reports its members and its clock to the control plane this often.
    status_every_s: float = 0.1
    # After CloseStage, how long a stage process waits for its last messages to leave.
    close_timeout_s: float = 2.0


# Decides, per tick, whether a member's audio may reach the program (the room's rules:
# mic check passed, not muted, still on stage).
ProgramGate = Callable[[str], bool]


@dataclass
class StageRuntime:
    space_id: str
    feed: FeedSink
    config: StageConfig = field(default_factory=StageConfig)
    gate: ProgramGate = lambda _pid: True
    members: dict[str, StageMember] = field(default_factory=dict)
    ticks: int = 0
    clock_slips: int = 0
    # The longest time between two ticks (seconds): the clock's health; 20 ms is perfect.
    longest_tick_gap_s: float = 0.0
    recent_tick_gaps: RecentMaximum = field(init=False)
    feed_errors: int = 0  # messages the feed raised on (logged once; the clock runs on)
    on_program: Callable[[Pcm], None] | None = None
    # Where this stage's program begins in the Space's media time (a restart carries on).
    media_start: MediaStart = field(default_factory=MediaStart.origin)
    _encoder: ProgramEncoder | None = None
    _headers_sent: bool = False
    _init_sent: bool = False
    _parts_sent: int = 0  # numbers each HLS part, so late audience processes agree
    _task: asyncio.Task[None] | None = None
    ended: bool = False
    # Off the air (the green room): each tick mixes and sends every member their
    # mix-minus, but nothing is encoded or published, so the audience and the recorder
    # see nothing until ``go_on_air``.
    on_air: bool = True
    # Members whose SDP offer is being answered.
    _connecting: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.recent_tick_gaps = RecentMaximum(self.config.tick_gap_window_s)
        if self.on_air:
            self.go_on_air(self.media_start)

    def go_on_air(self, start: MediaStart) -> None:
        """Publish the program from the next tick on, starting at ``start`` in media time."""
        self.media_start = start
        self._encoder = ProgramEncoder(self.config.encoder, start.samples)
        self._parts_sent = start.first_part_seq
        self.on_air = True

    def go_live(self, started_at_unix_s: float) -> None:
        """The ``Stage`` interface in one process: media time counts from this stage's
        ``media_start`` as given (the origin), as it does for a stage opened live."""
        if not self.on_air:
            self.go_on_air(self.media_start)

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"stage-{self.space_id}")

    async def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._encoder is not None:
            self._emit(self._encoder.close(), time.time())
        self._publish(ChannelEnded(self.space_id, time.time()))
        await asyncio.gather(*(m.close() for m in self.members.values()))
        self.members.clear()

    # -- the clock -----------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = last = loop.time()
        while True:
            now = loop.time()
            self.longest_tick_gap_s = max(self.longest_tick_gap_s, now - last)
            self.recent_tick_gaps.add(now - last, now)
            last = now
            self.tick()
            deadline += TICK_S
            delay = deadline - loop.time()
            if delay < -self.config.max_catch_up_s:
                self.clock_slips += 1
                log.warning(
                    "stage %s clock slipped %.0f ms; resyncing", self.space_id, -delay * 1e3
                )
                deadline = loop.time()
            await asyncio.sleep(max(0.0, delay))

    def tick(self) -> None:
        taken = {pid: m.take_frame() for pid, m in self.members.items()}
        frames = {pid: f for pid, f in taken.items() if f is not None and self.gate(pid)}
        result = mix(frames, listeners=tuple(self.members))
        for pid, member in self.members.items():
            member.outbound.push(result.mix_minus[pid])
        if self.on_program is not None:
            self.on_program(result.program)
        if self._encoder is not None:
            self._emit(self._encoder.encode(result.program), time.time())
        self.ticks += 1

    def _emit(self, out: Packaged, now_unix_s: float) -> None:
        assert self._encoder is not None
        if not self._headers_sent and self._encoder.ogg_header and out.ogg_pages:
            self._headers_sent = True
            self._publish(OggHeader(self.space_id, self._encoder.ogg_header))
        if out.ogg_pages:
            data = b"".join(p.data for p in out.ogg_pages)
            self._publish(OggPages(self.space_id, data, time.monotonic()))
        for frag in out.fragments:
            # One trun sample is one 20 ms Opus packet.
            duration_s = frag.sample_count * FRAME_SAMPLES / SAMPLE_RATE_HZ
            self._emit_part(frag.data, duration_s, now_unix_s)

    def _emit_part(self, data: bytes, duration_s: float, now_unix_s: float) -> None:
        assert self._encoder is not None
        init = self._encoder.init_segment
        if init is not None and not self._init_sent:
            self._init_sent = True
            self._publish(HlsInit(self.space_id, init))
        first = self._parts_sent == self.media_start.first_part_seq
        discontinuity = first and self.media_start.discontinuity
        self._publish(
            HlsPart(self.space_id, data, duration_s, now_unix_s, self._parts_sent, discontinuity)
        )
        self._parts_sent += 1

    def _publish(self, msg: FeedMessage) -> None:
        """Whatever the feed does, the clock keeps time: an error is logged once, counted."""
        try:
            self.feed.publish(msg)
        except Exception:
            self.feed_errors += 1
            if self.feed_errors == 1:
                log.exception("stage %s: the feed raised; the program goes on", self.space_id)

    # -- signalling ----------------------------------------------------------------
    async def connect(
        self, participant_id: str, name: str, sdp: str, kind: str
    ) -> RTCSessionDescription:
        """Answer a member's SDP offer. A reconnect replaces the old connection, but only
        once the new offer is accepted: a bad offer must not cut off a live speaker.

        One offer per member at a time (409 for a second): each holds a peer connection
        and its sockets until answered. Every connection that does not end up seated is
        closed, also when the request is cancelled half-way.
        """
        if self.ended:
            raise Conflict("the space has ended; the stage is closed")
        _validate_offer(sdp, kind, self.config.max_offer_bytes)
        if participant_id in self._connecting:
            raise Conflict("an SDP offer of yours is still being answered; wait for its answer")
        self._connecting.add(participant_id)
        try:
            member = await self._answer(participant_id, name, sdp, kind)
        finally:
            self._connecting.discard(participant_id)
        # Swapped with no await in between, so a concurrent swap cannot slip a
        # connection in that nobody will close.
        old = self.members.pop(participant_id, None)
        self.members[participant_id] = member
        if old is not None:
            await old.close()
        return member.pc.localDescription

    async def _answer(self, participant_id: str, name: str, sdp: str, kind: str) -> StageMember:
        pc = RTCPeerConnection(rtc_configuration())
        member = StageMember(participant_id, name, pc, self.config.member)
        self._wire(member)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            if not any(t.kind == "audio" for t in pc.getTransceivers()):
                raise BadRequest("the SDP offer has no audio section")
            pc.addTrack(member.outbound)
            await pc.setLocalDescription(await pc.createAnswer())
        except BadRequest:
            await member.close()
            raise
        except Exception as exc:  # aiortc raises ValueError and friends on a bad offer
            await member.close()
            raise BadRequest(f"could not accept the SDP offer: {exc}") from exc
        except asyncio.CancelledError:
            await member.close()
            raise
        if self.ended:
            await member.close()
            raise Conflict("the space has ended; the stage is closed")
        return member

    def _wire(self, member: StageMember) -> None:
        @member.pc.on("track")
        def on_track(track) -> None:  # type: ignore[no-untyped-def]
            if track.kind == "audio" and member.reader is None:
                member.reader = asyncio.create_task(member.read(track))

        @member.pc.on("connectionstatechange")
        async def on_state() -> None:
            if member.pc.connectionState in ("failed", "closed"):
                if self.members.get(member.participant_id) is member:
                    await self.disconnect(member.participant_id, member)
                else:
                    await member.close()  # replaced or never seated: still holds sockets

    async def disconnect(self, participant_id: str, only: StageMember | None = None) -> None:
        member = self.members.get(participant_id)
        if member is None or (only is not None and member is not only):
            return
        del self.members[participant_id]
        await member.close()

    def status(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [m.status(now) for m in self.members.values()]


def _validate_offer(sdp: str, kind: str, max_bytes: int) -> None:
    if kind != "offer":
        raise BadRequest(f"expected an SDP of type 'offer', got {kind!r}")
    if len(sdp.encode()) > max_bytes:
        raise BadRequest(f"the SDP offer is over {max_bytes} bytes")
    if not sdp.startswith("v=0") or "m=audio" not in sdp:
        raise BadRequest("malformed SDP offer: it must start with v=0 and contain m=audio")
