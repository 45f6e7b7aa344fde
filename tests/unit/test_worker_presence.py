"""Audience workers report presence to the main process: framed, deduplicated, exact."""

from __future__ import annotations

from dataclasses import dataclass, field

from townhall.audience.framing import (
    FrameDecoder,
    SessionSeen,
    StreamClosed,
    StreamOpened,
    WorkerReady,
    apply_presence,
    encode_frame,
)
from townhall.audience.pool import _WorkerLink
from townhall.audience.server import WorkerPoolConfig
from townhall.audience.worker import PresenceRelay

MAX_FRAME_BYTES = WorkerPoolConfig().max_frame_bytes


@dataclass
class FakeTransport:
    """The two methods of an asyncio transport the relay uses."""

    written: bytearray = field(default_factory=bytearray)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


@dataclass
class Counted:
    calls: list[tuple[object, ...]] = field(default_factory=list)

    def stream_opened(self, space_id: str, session_id: str, conn_id: str) -> None:
        self.calls.append(("opened", space_id, session_id, conn_id))

    def stream_closed(self, space_id: str, session_id: str, conn_id: str, ended: bool) -> None:
        self.calls.append(("closed", space_id, session_id, conn_id, ended))

    def seen(self, space_id: str, session_id: str) -> None:
        self.calls.append(("seen", space_id, session_id))


def test_reports_cross_the_process_boundary_and_polls_are_deduplicated() -> None:
    transport = FakeTransport()
    relay = PresenceRelay(transport, pid=42, seen_every_s=3600, batch_s=0)  # type: ignore[arg-type]
    relay.stream_opened("sp", "ogg-1", "1")
    for _ in range(1_000):  # one HLS player polling hard
        relay.seen("sp", "hls-abc")
    relay.seen("sp", "hls-def")
    relay.stream_closed("sp", "ogg-1", "1", True)
    reports = FrameDecoder(MAX_FRAME_BYTES).feed(bytes(transport.written))
    assert [type(r) for r in reports] == [StreamOpened, SessionSeen, SessionSeen, StreamClosed]
    counted = Counted()
    for report in reports:
        apply_presence(counted, report)
    assert counted.calls == [
        ("opened", "sp", "ogg-1", "42:1"),
        ("seen", "sp", "hls-abc"),
        ("seen", "sp", "hls-def"),
        ("closed", "sp", "ogg-1", "42:1", True),
    ]


def test_a_join_storm_is_written_in_batches() -> None:
    transport = FakeTransport()
    writes: list[int] = []
    scheduled: list[object] = []

    def write(data: bytes) -> None:
        writes.append(len(data))
        transport.written += data

    transport.write = write  # type: ignore[method-assign]
    relay = PresenceRelay(
        transport,  # type: ignore[arg-type]
        pid=7,
        seen_every_s=1.0,
        batch_s=0.05,
        call_later=lambda delay, fn: scheduled.append(fn),
    )
    for i in range(500):
        relay.stream_opened("sp", f"ogg-{i}", str(i))
    assert writes == [] and len(scheduled) == 1  # one timer for the whole batch
    relay.flush()
    assert len(writes) == 1
    reports = FrameDecoder(MAX_FRAME_BYTES).feed(bytes(transport.written))
    assert [r.session_id for r in reports] == [f"ogg-{i}" for i in range(500)]
    relay.stream_opened("sp", "ogg-late", "x")
    assert len(scheduled) == 2  # the next report starts the next batch


def test_a_resync_reports_every_open_stream_again_and_no_closed_one() -> None:
    transport = FakeTransport()
    relay = PresenceRelay(transport, pid=42, seen_every_s=3600, batch_s=0)  # type: ignore[arg-type]
    relay.stream_opened("sp", "a", "1")
    relay.stream_opened("sp", "b", "2")
    relay.stream_closed("sp", "a", "1", True)
    transport.written.clear()
    relay.resync()
    assert FrameDecoder(MAX_FRAME_BYTES).feed(bytes(transport.written)) == [
        StreamOpened("sp", "b", "42:2")
    ]


async def test_a_lost_workers_open_streams_are_closed_in_the_counters() -> None:
    # A worker that dies never reports its streams' end: the pool does, or they would
    # count for good.
    counted = Counted()
    link = _WorkerLink(object(), lambda _link: None, counted, MAX_FRAME_BYTES)  # type: ignore[arg-type]
    reports = [
        WorkerReady(),
        StreamOpened("sp", "a.addr.ogg", "7:1"),  # anonymous: its own session
        StreamOpened("sp", "signed-session", "7:2"),
        StreamOpened("sp", "gone", "7:3"),
        StreamClosed("sp", "gone", "7:3", True),
    ]
    link.data_received(b"".join(encode_frame(r) for r in reports))
    counted.calls.clear()
    link.connection_lost(None)
    assert counted.calls == [
        ("closed", "sp", "a.addr.ogg", "7:1", True),
        ("closed", "sp", "signed-session", "7:2", False),  # its grace period starts
    ]


def test_a_flood_of_distinct_sessions_is_written_in_bounded_batches() -> None:
    transport = FakeTransport()
    scheduled: list[object] = []
    relay = PresenceRelay(
        transport,  # type: ignore[arg-type]
        pid=1,
        seen_every_s=3600,
        batch_s=10.0,
        call_later=lambda delay, fn: scheduled.append(fn),
        max_seen_sessions=100,
        max_batch_messages=50,
    )
    for i in range(1_000):
        relay.seen("sp", f"s{i}")
    # Written every 50 reports, not held until the timer; the dedup set never passed 100.
    assert len(FrameDecoder(MAX_FRAME_BYTES).feed(bytes(transport.written))) == 1_000
    assert len(relay._seen_recently) <= 100
