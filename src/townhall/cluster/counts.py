"""Counts across nodes: what an edge counted of a Space's listeners, and its wire form.

An edge counts its listeners exactly as the origin counts its own (``EdgeTally`` keeps a
``ListenerCounter`` per Space: signed session ids, anonymous slots per address, the
session timeout, every bound), and reports each Space once per ``counts_report_s`` as a
``NodeCounts``: a sketch of who listens there now, and a sketch of everyone it ever
counted. The node holding the Space merges them
(``ListenerCounter.counted_elsewhere``).

Why a plain NATS subject (``townhall.counts.<space>``) and not a key-value bucket: a
report is soft state sent again every period, so storing it buys a restarted control
process at most one period; a bucket would write every report through the stream's
replicas (up to ~130 KiB per Space per edge per second, the cluster's largest load);
and a key-value TTL drops an entry without telling the watchers, so the reader has to
age entries itself either way. Every control node gets every report; the one holding
the Space uses it.

A report is signed with a key derived from the cluster's session key
(``sessions.report_key``): an edge with another key (which would count every real
listener as anonymous) or any other publisher on the subject is not believed.

Pure: no sockets; the clock is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from townhall.cluster.wire import WireError
from townhall.control.presence import CountedPresence
from townhall.room.counting import CounterConfig, ListenerCounter
from townhall.room.sketch import DistinctSketch

COUNTS_SUBJECTS = "townhall.counts.>"
_MAC_BYTES = 16
_HEAD_LENGTH = struct.Struct(">H")
MAX_NODE_CHARS = 128


def counts_subject(space_id: str) -> str:
    return f"townhall.counts.{space_id}"


@dataclass(frozen=True)
class NodeCounts:
    """One node's count of one Space's listeners."""

    space_id: str
    node: str
    listening: DistinctSketch  # the sessions alive there now
    # Every session it counted since it began. On an edge this is the counter's own
    # sketch, not a copy (64 KiB each period): encode it before anything else runs.
    tuned_in: DistinctSketch
    at_unix_s: float  # the edge's wall clock: the follower refuses old or replayed reports


def encode_counts(counts: NodeCounts, key: bytes) -> bytes:
    """``mac | head length | head (JSON) | listening sketch | tuned-in sketch``."""
    listening, tuned_in = counts.listening.to_bytes(), counts.tuned_in.to_bytes()
    head = json.dumps(
        {
            "space": counts.space_id,
            "node": counts.node,
            "at": counts.at_unix_s,
            "listening": len(listening),
        },
        separators=(",", ":"),
    ).encode()
    body = _HEAD_LENGTH.pack(len(head)) + head + listening + tuned_in
    return _mac(key, body) + body


def decode_counts(data: bytes, key: bytes, max_bytes: int) -> NodeCounts:
    """A report this cluster's key signed; WireError for anything else."""
    if len(data) > max_bytes:
        raise WireError(f"a count report of {len(data)} bytes (at most {max_bytes})")
    mac, body = data[:_MAC_BYTES], data[_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise WireError("a count report not signed with this cluster's key")
    try:
        (head_len,) = _HEAD_LENGTH.unpack_from(body)
        head = json.loads(body[_HEAD_LENGTH.size : _HEAD_LENGTH.size + head_len])
        sketches = body[_HEAD_LENGTH.size + head_len :]
        split = int(head["listening"])
        counts = NodeCounts(
            space_id=str(head["space"]),
            node=str(head["node"])[:MAX_NODE_CHARS],
            listening=DistinctSketch.from_bytes(sketches[:split]),
            tuned_in=DistinctSketch.from_bytes(sketches[split:]),
            at_unix_s=float(head["at"]),
        )
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise WireError(f"not a count report: {exc}") from exc
    return counts


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES]


def report(
    space_id: str, counter: ListenerCounter, node: str, now: float, at_unix_s: float
) -> NodeCounts:
    """One Space's report: its tuned-in sketch is the counter's own, not a copy."""
    return NodeCounts(
        space_id, node, counter.listening_sketch(now), counter.tuned_in_sketch(), at_unix_s
    )


class EdgeTally:
    """An edge's ``ListenerPresence``: its workers' reports, counted per Space.

    At most ``max_spaces`` Spaces are counted at once; a new one past that takes the
    place of the longest-unused Space without listeners, or is served uncounted. A Space
    that ended is reported once more, then forgotten.
    """

    def __init__(
        self,
        config: CounterConfig,
        max_spaces: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.max_spaces = max_spaces
        self.uncounted = 0
        self._clock = clock
        self._counters: OrderedDict[str, ListenerCounter] = OrderedDict()
        self._ended: set[str] = set()
        self._presence = CountedPresence(self._counter, clock)

    def stream_opened(self, space_id: str, session_id: str, conn_id: str) -> None:
        self._presence.stream_opened(space_id, session_id, conn_id)

    def stream_closed(
        self, space_id: str, session_id: str, conn_id: str, session_ended: bool
    ) -> None:
        self._presence.stream_closed(space_id, session_id, conn_id, session_ended)

    def seen(self, space_id: str, session_id: str) -> None:
        self._presence.seen(space_id, session_id)

    def ended(self, space_id: str) -> None:
        if space_id in self._counters:
            self._ended.add(space_id)

    def spaces(self) -> list[str]:
        return list(self._counters)

    def due(self) -> list[tuple[str, ListenerCounter]]:
        """The Spaces to report this period and their counters (read each with
        ``report``, one at a time); a Space that ended is in it this once more, then
        forgotten."""
        out = list(self._counters.items())
        for space_id in self._ended:
            self._counters.pop(space_id, None)
        self._ended.clear()
        return out

    def _counter(self, space_id: str) -> ListenerCounter | None:
        counter = self._counters.get(space_id)
        if counter is not None:
            self._counters.move_to_end(space_id)
            return counter
        if space_id in self._ended:
            return None
        if len(self._counters) >= self.max_spaces and not self._make_room():
            self.uncounted += 1
            return None
        counter = self._counters[space_id] = ListenerCounter(self.config)
        return counter

    def _make_room(self) -> bool:
        now = self._clock()
        for space_id, counter in self._counters.items():
            if counter.listening_now(now) == 0:
                del self._counters[space_id]
                self._ended.discard(space_id)
                return True
        return False
