"""The program on the wire: what the origin publishes is what an edge rebuilds."""

from __future__ import annotations

import pytest

from townhall.cluster.wire import (
    MSG_ID,
    ProgramDecoder,
    ProgramEncoder,
    WireError,
    WireMessage,
    digest,
    part_msg_id,
)
from townhall.feed import (
    ChannelEnded,
    FeedMessage,
    HlsInit,
    HlsPart,
    OggHeader,
    OggPages,
    RoomUpdate,
)

S = "space1"
NOW_MONO, NOW_UNIX = 1000.0, 1_800_000_000.0


def program(incarnation: bytes = b"A", parts: range = range(3)) -> list[FeedMessage]:
    msgs: list[FeedMessage] = [OggHeader(S, b"OggS-head-" + incarnation), HlsInit(S, b"init")]
    for seq in parts:
        msgs.append(OggPages(S, b"page%d-" % seq + incarnation, 1.0))
        msgs.append(HlsPart(S, b"cmaf%d" % seq, 0.5, NOW_UNIX - 2.0, seq))
    return msgs


def on_wire(
    msgs: list[FeedMessage], encoder: ProgramEncoder | None = None, at_unix_s: float = NOW_UNIX
) -> list[WireMessage]:
    encoder = encoder or ProgramEncoder(parts_per_segment=4)
    return [w for i, m in enumerate(msgs) for w in encoder.encode(m, at_unix_s + i * 0.01)]


def program_stream(wires: list[WireMessage]) -> list[WireMessage]:
    return [w for w in wires if w.subject.startswith("townhall.program.")]


def heads_stream(wires: list[WireMessage]) -> list[WireMessage]:
    """What a stream keeping one message per subject holds at the end."""
    last: dict[str, WireMessage] = {}
    for w in wires:
        if w.subject.startswith("townhall.head."):
            last[w.subject] = w
    return list(last.values())


def decoded(decoder: ProgramDecoder, wires: list[WireMessage]) -> list[FeedMessage]:
    return [m for w in wires for m in decoder.decode(w, NOW_MONO, NOW_UNIX)]


def test_a_part_carries_its_ogg_pages_and_an_id_from_its_number() -> None:
    wires = program_stream(on_wire(program()))
    parts = [w for w in wires if w.subject.endswith(".part")]
    assert [w.msg_id for w in parts] == ["space1:0.0", "space1:0.1", "space1:0.2"]
    assert parts[1].payload == b"cmaf1" + b"page1-A"
    assert part_msg_id(S, 9, 4) == "space1:2.1"


def test_an_edge_rebuilds_the_feed_in_order() -> None:
    out = decoded(ProgramDecoder(), program_stream(on_wire(program())))
    kinds = [type(m).__name__ for m in out]
    assert kinds == ["OggHeader", "HlsInit"] + ["OggPages", "HlsPart"] * 3
    part = out[3]
    assert isinstance(part, HlsPart) and part.seq == 0 and part.data == b"cmaf0"
    pages = out[2]
    assert isinstance(pages, OggPages) and pages.data == b"page0-A"
    # Two seconds old by the stage's wall clock: two seconds old on the edge's clock.
    assert pages.at_monotonic_s == pytest.approx(NOW_MONO - 2.0)


def test_bootstrap_from_heads_then_history_applies_each_head_once() -> None:
    wires = on_wire(program())
    decoder = ProgramDecoder()
    first = decoded(decoder, heads_stream(wires))
    assert [type(m).__name__ for m in first] == ["OggHeader", "HlsInit"]
    replay = decoded(decoder, program_stream(wires))
    assert [type(m).__name__ for m in replay] == ["OggPages", "HlsPart"] * 3


def test_history_of_an_older_stage_is_skipped_after_the_newer_heads() -> None:
    encoder = ProgramEncoder(parts_per_segment=4)
    old = on_wire(program(b"A", range(0, 3)), encoder, NOW_UNIX - 10)
    new = on_wire(program(b"B", range(5, 7)), encoder, NOW_UNIX)
    decoder = ProgramDecoder()
    decoded(decoder, heads_stream(old + new))  # the restarted stage's heads
    replay = decoded(decoder, program_stream(old + new))
    parts = [m for m in replay if isinstance(m, HlsPart)]
    assert [p.seq for p in parts] == [5, 6]
    assert all(m.data.endswith(b"-B") for m in replay if isinstance(m, OggPages))


def test_a_restarted_stage_live_is_a_new_ogg_stream() -> None:
    encoder = ProgramEncoder(parts_per_segment=4)
    decoder = ProgramDecoder()
    decoded(decoder, program_stream(on_wire(program(b"A"), encoder, NOW_UNIX - 10)))
    after = decoded(decoder, program_stream(on_wire(program(b"B", range(3, 4)), encoder)))
    assert isinstance(after[0], OggHeader) and after[0].data.endswith(b"B")


def test_room_and_end_travel_and_nothing_follows_the_end() -> None:
    encoder, decoder = ProgramEncoder(4), ProgramDecoder()
    wires = on_wire([RoomUpdate(S, '{"state": "live"}', 1.0), ChannelEnded(S, NOW_UNIX)], encoder)
    out = decoded(decoder, program_stream(wires))
    assert isinstance(out[0], RoomUpdate) and out[0].json == '{"state": "live"}'
    assert isinstance(out[1], ChannelEnded) and out[1].at_unix_s == NOW_UNIX
    late = on_wire([HlsPart(S, b"x", 0.5, NOW_UNIX, 99)], ProgramEncoder(4))
    assert decoded(decoder, late) == []


def test_ogg_pages_without_parts_go_out_on_their_own_past_the_bound() -> None:
    encoder = ProgramEncoder(parts_per_segment=4, max_pending_ogg_bytes=10)
    wires = on_wire(
        [OggHeader(S, b"h"), OggPages(S, b"12345", 1.0), OggPages(S, b"678901", 1.0)], encoder
    )
    pages = [w for w in program_stream(wires) if w.subject.endswith(".pages")]
    assert [w.payload for w in pages] == [b"12345678901"]
    out = decoded(ProgramDecoder(), program_stream(wires))
    assert [type(m).__name__ for m in out] == ["OggHeader", "OggPages"]


@pytest.mark.parametrize(
    "subject", ["other.program.s.part", "townhall.program.s", "townhall.program.s.weird"]
)
def test_foreign_messages_are_refused(subject: str) -> None:
    with pytest.raises(WireError):
        ProgramDecoder().decode(WireMessage(subject, b"", {}), NOW_MONO, NOW_UNIX)


def test_a_part_with_a_bad_length_is_refused() -> None:
    decoder = ProgramDecoder()
    head = WireMessage("townhall.program.s.ogg", b"h", {MSG_ID: "x"})
    decoder.decode(head, NOW_MONO, NOW_UNIX)
    bad = WireMessage(
        "townhall.program.s.part",
        b"abc",
        {
            "Townhall-Ogg": digest(b"h"),
            "Townhall-Init": "",
            "Townhall-Ogg-Bytes": "9",
            "Townhall-Duration": "0.5",
            "Townhall-At": "1.0",
        },
    )
    with pytest.raises(WireError):
        decoder.decode(bad, NOW_MONO, NOW_UNIX)
