"""The NATS adapter of counts across nodes: an edge's reporter, a control node's follower.

The core (what is counted, the wire form, the merge) is in ``counts.py`` and
``room/elsewhere.py``; this only moves reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from townhall.cluster.config import ClusterConfig
from townhall.cluster.counts import (
    COUNTS_SUBJECTS,
    EdgeTally,
    counts_subject,
    decode_counts,
    encode_counts,
    report,
)
from townhall.cluster.jetstream import connect
from townhall.cluster.wire import WireError
from townhall.room.counting import ListenerCounter
from townhall.room.elsewhere import CountedElsewhere
from townhall.sessions import report_key

log = logging.getLogger(__name__)


class CountReporter:
    """An edge's reports: each Space it counts, every ``counts_report_s``."""

    def __init__(
        self, config: ClusterConfig, tally: EdgeTally, session_key: bytes, node: str
    ) -> None:
        self.config = config
        self.tally = tally
        self.node = node
        self.sent = 0
        self.oversized = 0
        self._key = report_key(session_key)
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._nc = await connect(self.config, "townhall-edge-counts")
        self._task = asyncio.get_running_loop().create_task(self._report(self._nc), name="counts")

    async def _report(self, nc: Client) -> None:
        while True:
            await asyncio.sleep(self.config.counts_report_s)
            try:
                await self._send(nc)
            except Exception:  # the next period tries again: reports must not stop
                log.exception("count reports failed")

    async def _send(self, nc: Client) -> None:
        """One Space at a time, yielding to the loop between Spaces: this loop also
        passes the program to the workers, and encoding a big Space's two sketches takes
        milliseconds (all Spaces at once stalled it for most of a period)."""
        limit = min(self.config.max_count_report_bytes, nc.max_payload)
        for space_id, counter in self.tally.due():
            await asyncio.sleep(0)  # the loop's other work runs between two Spaces
            counts = report(space_id, counter, self.node, time.monotonic(), time.time())
            # At once: the tuned-in sketch is the counter's own, which listeners change.
            payload = encode_counts(counts, self._key)
            if len(payload) > limit:
                self.oversized += 1  # cannot happen with the sketches' bounds
                log.error("a count report of %d bytes is over %d; not sent", len(payload), limit)
                continue
            with contextlib.suppress(NatsError, TimeoutError):
                await nc.publish(counts_subject(counts.space_id), payload)
                self.sent += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._nc is not None:
            await self._nc.close()


class CountFollower:
    """A control node's side: every node's reports, merged into the counters of the
    Spaces this node holds (``counter_of``); the others' reports are dropped."""

    def __init__(
        self,
        config: ClusterConfig,
        counter_of: Callable[[str], ListenerCounter | None],
        session_key: bytes,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.counter_of = counter_of
        self.clock = clock
        self.wall_clock = wall_clock
        self.received = 0
        self.rejected = 0
        self._key = report_key(session_key)
        self._nc: Client | None = None

    async def start(self) -> None:
        self._nc = await connect(self.config, "townhall-control-counts")
        # Bounded: past these the client drops reports (a slow consumer), never grows.
        await self._nc.subscribe(
            COUNTS_SUBJECTS,
            cb=self._on_message,
            pending_msgs_limit=self.config.max_pending_count_report_messages,
            pending_bytes_limit=self.config.max_pending_count_report_bytes,
        )

    async def _on_message(self, msg: Msg) -> None:
        self.take(msg.subject, msg.data)

    def take(self, subject: str, data: bytes) -> None:
        """One report off the wire: believed only if signed with the cluster's key, sent
        within ``counts_timeout_s`` of this node's clock, and newer than the last one
        believed from its node for its Space. A captured report replayed is neither: it
        cannot keep a dead edge's listeners counted."""
        self.received += 1
        try:
            self._merge(subject, data)
        except WireError as exc:
            self.rejected += 1
            if self.rejected % 100 == 1:  # a wrong key repeats every period: say it once
                log.warning("ignored a count report (%d so far): %s", self.rejected, exc)

    def _merge(self, subject: str, data: bytes) -> None:
        c = self.config
        counts = decode_counts(data, self._key, c.max_count_report_bytes)
        if subject != counts_subject(counts.space_id):
            raise WireError(f"a report of {counts.space_id} on {subject}")
        off_s = self.wall_clock() - counts.at_unix_s
        if abs(off_s) > c.counts_timeout_s:
            # An old report replayed, or a node whose clock is off by more than this.
            raise WireError(f"a report of {counts.node} sent {off_s:.1f}s from this clock")
        counter = self.counter_of(counts.space_id)
        if counter is None:
            return  # a Space another node holds
        if counter.elsewhere is None:
            counter.elsewhere = CountedElsewhere(
                c.counts_timeout_s, c.max_counted_nodes, c.counts_report_s
            )
        if not counter.elsewhere.is_newer(counts.node, counts.at_unix_s):
            raise WireError(f"a report of {counts.node} not newer than its last")
        counter.counted_elsewhere(counts.node, counts.listening, counts.tuned_in, self.clock())

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
