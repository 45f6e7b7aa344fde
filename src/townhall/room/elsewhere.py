"""Who listens to one Space on the cluster's other nodes, as their last reports said.

Every node serving a Space's audience (an edge) reports, once per period, a sketch of
the sessions listening there now (``room/sketch.py``). The node holding the Space
shows the listeners of the whole cluster: its own sessions, plus those the others have
that it does not. That is a union, not a sum: a listener whose players reach two
edges (a load balancer spreads their requests, or a player fails over) is one
listener, and a sum would count them twice. The union of sketches is their merge, so
the figure is exact while the audience is under ``EXACT_BELOW`` and within the
sketch's error (0.41 %) past it.

A report not renewed within ``timeout_s`` is forgotten: its node stopped reporting (it
died, or lost the cluster), so its listeners stop counting within that time.

The union is merged again at most once per ``merge_every_s`` (the reports' period): the
room snapshot reads the figure several times a second, and a merge touches every
session held here. Between merges the figure follows this node's own sessions exactly
and the others' as of the last merge.

Pure: ``now`` (monotonic seconds, never going back) is passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from townhall.room.sketch import DistinctSketch


class CountedElsewhere:
    def __init__(self, timeout_s: float, max_nodes: int, merge_every_s: float) -> None:
        self.timeout_s = timeout_s
        self.max_nodes = max_nodes
        self.merge_every_s = merge_every_s
        # Per node, (when its last report came, who listens there), oldest report first.
        self._nodes: OrderedDict[str, tuple[float, DistinctSketch]] = OrderedDict()
        self._extra = 0
        self._merged_at: float | None = None
        # Per node, the send time of its last report believed, kept past the report's
        # timeout so a copy of it is never believed again; at most ``max_nodes``.
        self._sent_at: OrderedDict[str, float] = OrderedDict()

    def is_newer(self, node: str, sent_at: float) -> bool:
        """Whether a report ``node`` sent at ``sent_at`` (its clock) is newer than its
        last one believed; if so it becomes the last. A replayed report is not newer."""
        last = self._sent_at.get(node)
        if last is not None and sent_at <= last:
            return False
        self._sent_at.pop(node, None)
        self._sent_at[node] = sent_at
        while len(self._sent_at) > self.max_nodes:
            self._sent_at.popitem(last=False)
        return True

    def put(self, node: str, listening: DistinctSketch, now: float) -> None:
        self._nodes.pop(node, None)
        self._nodes[node] = (now, listening)
        while len(self._nodes) > self.max_nodes:
            self._nodes.popitem(last=False)
        self._merged_at = None

    def nodes(self, now: float) -> int:
        """Nodes whose reports are fresh."""
        self._forget_stale(now)
        return len(self._nodes)

    def extra(self, here: Callable[[], DistinctSketch], now: float) -> int:
        """Listeners on the other nodes who are not among ``here``'s (a fresh sketch of
        this node's listeners, made only when a merge is due)."""
        self._forget_stale(now)
        if not self._nodes:
            return 0
        if self._merged_at is None or now - self._merged_at >= self.merge_every_s:
            self._extra = union_beyond(here(), (s for _, s in self._nodes.values()))
            self._merged_at = now
        return self._extra

    def _forget_stale(self, now: float) -> None:
        while self._nodes:
            received_at, _ = next(iter(self._nodes.values()))
            if now - received_at <= self.timeout_s:
                return
            self._nodes.popitem(last=False)
            self._merged_at = None


def union_beyond(mine: DistinctSketch, others: Iterable[DistinctSketch]) -> int:
    """How many the union of ``mine`` and ``others`` (sketches) holds beyond ``mine``.

    Both estimates come from the same registers, so the sketch's error cancels where
    the others add nothing: ``others`` all inside ``mine`` gives 0 exactly. ``mine`` is
    consumed (merged into).
    """
    before = mine.estimate()
    for other in others:
        mine.merge(other)
    return max(0, mine.estimate() - before)
