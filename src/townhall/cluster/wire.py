"""The program on the wire between an origin and its edges: feed messages as NATS messages.

Pure: no sockets, no clocks read here (times are passed in).

Two JetStream streams carry a Space's feed:

``PROGRAM`` (subjects ``townhall.program.<space>.<kind>``), everything in order, kept
    for ``retention_s``: the stream an edge follows. One message per LL-HLS part carries
    the CMAF part *and* the Ogg pages published since the previous part, so an edge gets
    both formats of the same audio at once and a part is one unit to deduplicate: its
    ``Nats-Msg-Id`` is ``<space>:<msn>.<part>``, computed from the part's number, which
    comes from media time; a second stage publishing the same part is dropped.
``HEADS`` (subjects ``townhall.head.<space>.<kind>``), one message kept per subject:
    the Ogg header, the CMAF init segment, the last room snapshot and the end of each
    Space, however old, so an edge that starts late can open every live channel.

Each part names the heads it belongs to (a digest of each) and each head carries when it
was published, so an edge that bootstraps from ``HEADS`` and then replays ``PROGRAM``
skips the heads and parts of an older stage incarnation instead of appending them to a
newer stream.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from townhall.feed import (
    ChannelEnded,
    FeedMessage,
    HlsInit,
    HlsPart,
    OggHeader,
    OggPages,
    RoomUpdate,
)

PROGRAM_STREAM = "TOWNHALL_PROGRAM"
HEADS_STREAM = "TOWNHALL_HEADS"
PROGRAM_SUBJECTS = "townhall.program.>"
HEADS_SUBJECTS = "townhall.head.>"

OGG_HEADER = "ogg"
HLS_INIT = "init"
ROOM = "room"
END = "end"
PART = "part"
OGG_ONLY = "pages"

MSG_ID = "Nats-Msg-Id"
HEAD_AT = "Townhall-Head-At"


class WireError(ValueError):
    """A message on the program subjects that is not one of ours."""


@dataclass(frozen=True)
class WireMessage:
    subject: str
    payload: bytes
    headers: dict[str, str]

    @property
    def msg_id(self) -> str | None:
        return self.headers.get(MSG_ID)


def program_subject(space_id: str, kind: str) -> str:
    return f"townhall.program.{space_id}.{kind}"


def head_subject(space_id: str, kind: str) -> str:
    return f"townhall.head.{space_id}.{kind}"


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def part_msg_id(space_id: str, seq: int, parts_per_segment: int) -> str:
    msn, index = divmod(seq, parts_per_segment)
    return f"{space_id}:{msn}.{index}"


def _parse_subject(subject: str) -> tuple[str, str]:
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "townhall" or parts[1] not in ("program", "head"):
        raise WireError(f"not a townhall feed subject: {subject!r}")
    return parts[2], parts[3]


@dataclass
class _Pending:
    ogg: bytearray
    ogg_digest: str = ""
    init_digest: str = ""


class ProgramEncoder:
    """Turns the stage's feed into the messages to publish, in order.

    Ogg pages wait for the next part (bounded by ``max_pending_ogg_bytes``: past it they
    go out on their own, so a feed without LL-HLS still reaches the edges).
    """

    def __init__(self, parts_per_segment: int, max_pending_ogg_bytes: int = 256 * 1024) -> None:
        self.parts_per_segment = parts_per_segment
        self.max_pending_ogg_bytes = max_pending_ogg_bytes
        self._spaces: dict[str, _Pending] = {}
        self._now_unix_s = 0.0

    def encode(self, msg: FeedMessage, now_unix_s: float) -> list[WireMessage]:
        """The messages for ``msg``; ``now_unix_s`` stamps the heads (wall time)."""
        self._now_unix_s = now_unix_s
        pending = self._spaces.setdefault(msg.space_id, _Pending(bytearray()))
        match msg:
            case OggHeader():
                pending.ogg_digest = digest(msg.data)
                pending.ogg.clear()
                return self._head(msg.space_id, OGG_HEADER, msg.data, pending.ogg_digest)
            case HlsInit():
                pending.init_digest = digest(msg.data)
                return self._head(msg.space_id, HLS_INIT, msg.data, pending.init_digest)
            case OggPages():
                pending.ogg += msg.data
                if len(pending.ogg) <= self.max_pending_ogg_bytes:
                    return []
                return [self._pages(msg.space_id, pending)]
            case HlsPart():
                return [self._part(msg, pending)]
            case RoomUpdate():
                data = msg.json.encode()
                return self._head(msg.space_id, ROOM, data, digest(data), keep_id=False)
            case ChannelEnded():
                self._spaces.pop(msg.space_id, None)
                data = repr(msg.at_unix_s).encode()
                return self._head(msg.space_id, END, data, "end")
        raise WireError(f"not a feed message: {msg!r}")

    def _head(
        self, space_id: str, kind: str, data: bytes, tag: str, keep_id: bool = True
    ) -> list[WireMessage]:
        """The same message on both streams: in order on PROGRAM, kept on HEADS."""
        headers = {MSG_ID: f"{space_id}:{kind}:{tag}"} if keep_id else {}
        headers[HEAD_AT] = repr(self._now_unix_s)
        return [
            WireMessage(program_subject(space_id, kind), data, dict(headers)),
            WireMessage(head_subject(space_id, kind), data, dict(headers)),
        ]

    def _pages(self, space_id: str, pending: _Pending) -> WireMessage:
        data, pending.ogg = bytes(pending.ogg), bytearray()
        headers = {"Townhall-Ogg": pending.ogg_digest}
        return WireMessage(program_subject(space_id, OGG_ONLY), data, headers)

    def _part(self, part: HlsPart, pending: _Pending) -> WireMessage:
        ogg, pending.ogg = bytes(pending.ogg), bytearray()
        headers = {
            "Townhall-Duration": repr(part.duration_s),
            "Townhall-At": repr(part.at_unix_s),
            "Townhall-Ogg-Bytes": str(len(ogg)),
            "Townhall-Ogg": pending.ogg_digest,
            "Townhall-Init": pending.init_digest,
        }
        if part.seq is not None:
            headers["Townhall-Seq"] = str(part.seq)
            headers[MSG_ID] = part_msg_id(part.space_id, part.seq, self.parts_per_segment)
        if part.discontinuity:
            headers["Townhall-Discontinuity"] = "1"
        return WireMessage(program_subject(part.space_id, PART), part.data + ogg, headers)


@dataclass
class _Heads:
    ogg: str = ""
    init: str = ""
    ogg_at: float = 0.0
    init_at: float = 0.0
    ended: bool = False


class ProgramDecoder:
    """An edge's view of the program: wire messages back into feed messages.

    ``decode`` takes messages from HEADS (at bootstrap) and PROGRAM (replay, then live)
    alike: a head it already applied is skipped, and so is a part of another stage
    incarnation than the heads it has. Ogg pages get this process's monotonic clock:
    ``at_monotonic_s`` is set from how long ago (wall time) the part was made.
    """

    def __init__(self) -> None:
        self._heads: dict[str, _Heads] = {}

    def decode(
        self, wire: WireMessage, now_monotonic_s: float, now_unix_s: float
    ) -> list[FeedMessage]:
        space_id, kind = _parse_subject(wire.subject)
        heads = self._heads.setdefault(space_id, _Heads())
        if heads.ended:
            return []
        match kind:
            case "ogg":
                return self._new_head(heads, "ogg", wire, OggHeader(space_id, wire.payload))
            case "init":
                return self._new_head(heads, "init", wire, HlsInit(space_id, wire.payload))
            case "room":
                return [RoomUpdate(space_id, wire.payload.decode(), now_monotonic_s)]
            case "end":
                heads.ended = True
                return [ChannelEnded(space_id, float(wire.payload.decode()))]
            case "pages":
                if wire.headers.get("Townhall-Ogg") != heads.ogg:
                    return []
                return [OggPages(space_id, wire.payload, now_monotonic_s)]
            case "part":
                return self._part(space_id, heads, wire, now_monotonic_s, now_unix_s)
        raise WireError(f"unknown kind {kind!r} on {wire.subject}")

    def _new_head(
        self, heads: _Heads, kind: str, wire: WireMessage, msg: FeedMessage
    ) -> list[FeedMessage]:
        tag = digest(wire.payload)
        try:
            at = float(wire.headers.get(HEAD_AT, "0"))
        except ValueError as exc:
            raise WireError(f"malformed {HEAD_AT} on {wire.subject}") from exc
        if getattr(heads, kind) == tag or at < getattr(heads, f"{kind}_at"):
            return []  # applied already, or older than the heads the bootstrap gave us
        setattr(heads, kind, tag)
        setattr(heads, f"{kind}_at", at)
        return [msg]

    def _part(
        self, space_id: str, heads: _Heads, wire: WireMessage, now_mono: float, now_unix: float
    ) -> list[FeedMessage]:
        h = wire.headers
        if h.get("Townhall-Ogg") != heads.ogg or h.get("Townhall-Init") != heads.init:
            return []  # an older stage incarnation's part, from before the heads we have
        try:
            ogg_bytes = int(h["Townhall-Ogg-Bytes"])
            duration_s, at_unix_s = float(h["Townhall-Duration"]), float(h["Townhall-At"])
            seq = int(h["Townhall-Seq"]) if "Townhall-Seq" in h else None
        except (KeyError, ValueError) as exc:
            raise WireError(f"malformed part on {wire.subject}: {exc}") from exc
        if not 0 <= ogg_bytes <= len(wire.payload):
            raise WireError(f"part on {wire.subject} announces {ogg_bytes} Ogg bytes")
        split = len(wire.payload) - ogg_bytes
        cmaf, ogg = wire.payload[:split], wire.payload[split:]
        discontinuity = h.get("Townhall-Discontinuity") == "1"
        out: list[FeedMessage] = []
        if ogg:
            # Made ``now_unix - at_unix`` ago by the stage's clock: so old on ours too.
            age_s = max(0.0, now_unix - at_unix_s)
            out.append(OggPages(space_id, ogg, now_mono - age_s))
        out.append(HlsPart(space_id, cmaf, duration_s, at_unix_s, seq, discontinuity))
        return out
