"""The hub's routing, in memory: who sends what, where it goes."""

from __future__ import annotations

from townhall.audience.framing import SessionSeen, StreamOpened
from townhall.feed import ChannelEnded, HlsPart, OggHeader, OggPages, RoomUpdate
from townhall.supervise.hub import (
    AUDIENCE,
    CONTROL,
    POOL,
    RECORDER,
    STAGE_RESTARTING,
    SUPERVISOR,
    Delivery,
    Hub,
    space_of,
    stage_name,
)
from townhall.supervise.messages import (
    CloseStage,
    Disconnect,
    OpenStage,
    Presence,
    RecordingStatus,
    ResyncPresence,
    StageReply,
    StageRequest,
    StageStatus,
)

A, B = "spaceA", "spaceB"
FEED = (POOL, RECORDER)


def targets(deliveries: list[Delivery]) -> list[str]:
    return [d.to for d in deliveries]


def open_hub(*spaces: str) -> Hub:
    hub = Hub()
    for space in spaces:
        hub.route(CONTROL, OpenStage(space, 1000.0))
        hub.stage_up(space)
    return hub


def test_stage_names_round_trip() -> None:
    assert space_of(stage_name(A)) == A
    assert space_of(CONTROL) is None


def test_a_stages_feed_goes_to_the_audience_workers_and_the_recorder() -> None:
    hub = open_hub(A)
    for msg in (OggHeader(A, b"h"), OggPages(A, b"p", 1.0), HlsPart(A, b"m", 0.2, 1.0, seq=3)):
        out = hub.route(stage_name(A), msg)
        assert targets(out) == list(FEED)
        assert all(d.msg is msg for d in out)


def test_a_stage_speaks_only_for_its_own_space() -> None:
    hub = open_hub(A, B)
    assert hub.route(stage_name(A), OggPages(B, b"p", 1.0)) == []
    assert hub.route(stage_name(A), StageStatus(B, (), 0, 0, 0.0)) == []
    assert hub.route(stage_name(A), HlsPart(B, b"m", 0.2, 1.0, seq=9)) == []
    assert hub.next_part_seq(B) is None


def test_the_hub_numbers_a_restarted_stage_one_past_the_last_part_it_routed() -> None:
    hub = open_hub(A)
    assert hub.next_part_seq(A) is None
    for seq in (40, 41, 42):
        hub.route(stage_name(A), HlsPart(A, b"m", 0.2, 1.0, seq=seq))
    hub.route(stage_name(A), HlsPart(A, b"m", 0.2, 1.0, seq=None))
    assert hub.next_part_seq(A) == 43


def test_stage_status_and_replies_go_to_control() -> None:
    hub = open_hub(A)
    status = StageStatus(A, (), 100, 0, 0.021)
    reply = StageReply(A, 7, ok=True, sdp="v=0", kind="answer")
    assert hub.route(stage_name(A), status) == [Delivery(CONTROL, status)]
    assert hub.route(stage_name(A), reply) == [Delivery(CONTROL, reply)]


def test_a_stage_request_reaches_the_spaces_stage() -> None:
    hub = open_hub(A, B)
    request = StageRequest(B, 1, Disconnect("p1"))
    assert hub.route(CONTROL, request) == [Delivery(stage_name(B), request)]


def test_a_stage_request_without_a_stage_is_answered_503_at_once() -> None:
    hub = open_hub(A)
    hub.stage_down(A)
    out = hub.route(CONTROL, StageRequest(A, 5, Disconnect("p1")))
    assert len(out) == 1 and out[0].to == CONTROL
    reply = out[0].msg
    assert isinstance(reply, StageReply)
    assert (reply.request_id, reply.ok, reply.error_status) == (5, False, 503)
    assert reply.error_detail == STAGE_RESTARTING
    never_opened = hub.route(CONTROL, StageRequest(B, 6, Disconnect("p1")))[0].msg
    assert isinstance(never_opened, StageReply) and never_opened.error_status == 503


def test_open_and_close_are_acted_on_by_the_supervisor() -> None:
    hub = Hub()
    opened = OpenStage(A, 1000.0)
    assert hub.route(CONTROL, opened) == [Delivery(SUPERVISOR, opened)]
    assert hub.is_open(A)
    hub.stage_up(A)
    close = CloseStage(A)
    assert hub.route(CONTROL, close) == [
        Delivery(stage_name(A), close),
        Delivery(SUPERVISOR, close),
    ]
    assert not hub.is_open(A)


def test_close_without_a_running_stage_goes_to_the_supervisor_only() -> None:
    hub = Hub()
    hub.route(CONTROL, OpenStage(A, 1000.0))
    assert hub.route(CONTROL, CloseStage(A)) == [Delivery(SUPERVISOR, CloseStage(A))]


def test_the_hub_ends_a_channel_once_whoever_ends_it_first() -> None:
    hub = open_hub(A, B)
    ended = ChannelEnded(A, 2000.0)
    assert targets(hub.route(stage_name(A), ended)) == list(FEED)
    assert hub.channel_ended(A, 2001.0) == []
    made = hub.channel_ended(B, 2002.0)
    assert targets(made) == list(FEED) and made[0].msg == ChannelEnded(B, 2002.0)
    assert hub.route(stage_name(B), ChannelEnded(B, 2003.0)) == []  # too late: dropped


def test_reopening_a_space_lets_its_channel_end_again() -> None:
    hub = open_hub(A)
    hub.channel_ended(A, 1.0)
    hub.route(CONTROL, OpenStage(A, 1000.0))
    assert targets(hub.channel_ended(A, 2.0)) == list(FEED)


def test_room_updates_from_control_are_feed() -> None:
    hub = Hub()
    update = RoomUpdate(A, "{}", 1.0)
    assert targets(hub.route(CONTROL, update)) == list(FEED)


def test_presence_goes_to_control_and_a_resync_to_the_supervisor() -> None:
    hub = Hub()
    report = StreamOpened(A, "s1", "123:1")
    assert hub.route(AUDIENCE, report) == [Delivery(CONTROL, Presence(report))]
    seen = SessionSeen(A, "s2")
    assert hub.route(AUDIENCE, seen) == [Delivery(CONTROL, Presence(seen))]
    assert hub.route(CONTROL, ResyncPresence()) == [Delivery(SUPERVISOR, ResyncPresence())]


def test_recording_status_goes_to_control() -> None:
    status = RecordingStatus(A, "paused", "No space left on device", 1)
    assert Hub().route(RECORDER, status) == [Delivery(CONTROL, status)]


def test_what_nobody_routes_is_dropped() -> None:
    hub = open_hub(A)
    assert hub.route(RECORDER, OggPages(A, b"p", 1.0)) == []
    assert hub.route(AUDIENCE, OggPages(A, b"p", 1.0)) == []
    assert hub.route(CONTROL, StageStatus(A, (), 0, 0, 0.0)) == []
    assert hub.route(stage_name(A), OpenStage(A, 1.0)) == []
