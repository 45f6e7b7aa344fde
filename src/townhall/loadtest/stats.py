"""What a crowd experienced, reduced to mergeable numbers. Pure.

Every listener keeps the arrival of each media unit (an Ogg chunk, dated by its freshest
page, or an LL-HLS part)
as ``(arrival_s, media_s)``: when it arrived on the listener's monotonic clock, and
where it sits on the program's media clock (granule / 48 kHz for Ogg, RFC 7845
section 4; the fragment's ``tfdt`` decode time for an fMP4 part).

Lateness of a unit is ``arrival_s - (t0 + media_s)``, with ``t0`` chosen per listener
so that the best-delivered unit has lateness 0. It is what a player with a perfectly
sized jitter buffer would have to absorb, and needs no clock shared with the server.
The Ogg join burst (pages already old when the listener connected, sent with the
headers as pre-roll) is excluded: its pages arrive together on purpose.

A stall is a gap of more than ``stall_gap_s`` with no media on an open connection,
including the gap from the last unit to the end of the listener's run. A listener whose
connection drops reconnects: the time from the drop to its first media unit after the
reconnect is a "reconnect gap", reported apart, and neither counts as a stall nor as
lateness of the stream.

Each connection, and each restart of the stream within one connection (a new Ogg
serial, media time going backwards), starts a new epoch: lateness is anchored per epoch,
because the media clock of a restarted program owes nothing to the one before it.

Distributions are ``Histogram``s of whole milliseconds, so workers in other processes
can send them to the parent and they merge exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

Arrival = tuple[float, float]  # (arrival_s, media_s)


@dataclass
class Histogram:
    """Counts of values in whole milliseconds (rounded); percentiles by nearest rank."""

    counts: Counter[int] = field(default_factory=Counter)

    def add(self, seconds: float) -> None:
        self.counts[round(seconds * 1000)] += 1

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def merge(self, other: Histogram) -> None:
        self.counts.update(other.counts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def percentile(self, q: float) -> float | None:
        """The smallest value with at least ``q``% of the values at or below it."""
        total = self.total
        if total == 0:
            return None
        rank = max(1, -(-q * total // 100))  # ceil without floats drifting
        seen = 0
        for ms in sorted(self.counts):
            seen += self.counts[ms]
            if seen >= rank:
                return ms / 1000
        raise AssertionError("unreachable: rank <= total")

    def max(self) -> float | None:
        return max(self.counts) / 1000 if self.counts else None


def lateness(arrivals: Sequence[Arrival]) -> list[float]:
    """Lateness of each unit relative to the listener's best-delivered unit."""
    if not arrivals:
        return []
    offsets = [at - media for at, media in arrivals]
    best = min(offsets)
    return [o - best for o in offsets]


# A pre-roll larger than one read arrives over consecutive reads (the batch reader polls
# every 10 ms); the next real chunk comes a flush interval (at least 0.2 s) later.
JOIN_BURST_WINDOW_S = 0.1


def after_join_burst(arrivals: Sequence[Arrival]) -> Sequence[Arrival]:
    """Drop the units that arrived with the first media bytes (the pre-roll)."""
    if not arrivals:
        return arrivals
    until = arrivals[0][0] + JOIN_BURST_WINDOW_S
    return [a for a in arrivals if a[0] > until]


def epochs(arrivals: Sequence[Arrival], starts: Sequence[int]) -> list[Sequence[Arrival]]:
    """``arrivals`` cut at the indices in ``starts`` (sorted); empty pieces are left out."""
    edges = [0, *(i for i in starts if 0 < i < len(arrivals)), len(arrivals)]
    return [arrivals[a:b] for a, b in pairwise(edges) if b > a]


def stalls(arrival_times: Sequence[float], end_s: float, gap_s: float) -> int:
    """Gaps longer than ``gap_s`` between units, and from the last unit to ``end_s``."""
    if not arrival_times:
        return 0
    edges = [*arrival_times, max(end_s, arrival_times[-1])]
    return sum(1 for a, b in pairwise(edges) if b - a > gap_s)


# Media time of consecutive units runs ahead of their arrival times only by what a
# backlog catches up, a part or a page at a time; more than this is a discontinuity.
MEDIA_JUMP_S = 1.0


def _media_jumped(before: Arrival, after: Arrival) -> bool:
    media_step = after[1] - before[1]
    return media_step < 0 or media_step - (after[0] - before[0]) > MEDIA_JUMP_S


@dataclass
class ListenerRecord:
    """One listener's run, as its client adapter saw it (monotonic seconds)."""

    kind: str
    started_at: float
    connected: bool = False
    failure: str | None = None
    retries: int = 0
    first_media_at: float | None = None
    ended_at: float = 0.0
    bytes_received: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    skip_join_burst: bool = False
    drops: int = 0  # open connections lost mid-stream (EOF, reset)
    reconnects: int = 0  # connections opened again after a drop
    reconnect_gaps: list[float] = field(default_factory=list)  # drop -> first media again
    dropped_at: float | None = None  # the last drop not yet followed by media
    connection_starts: list[int] = field(default_factory=list)  # arrival index per reconnect
    epoch_starts: list[int] = field(default_factory=list)  # arrival index per stream restart

    def media_arrived(self, now: float, media_s: float) -> None:
        if self.first_media_at is None:
            self.first_media_at = now
        if self.dropped_at is not None:
            self.reconnect_gaps.append(now - self.dropped_at)
            self.dropped_at = None
        elif self.arrivals and _media_jumped(self.arrivals[-1], (now, media_s)):
            self.epoch_starts.append(len(self.arrivals))  # the program restarted its clock
        self.arrivals.append((now, media_s))

    def restarted_stream(self) -> None:
        """The same connection carries a new stream (a chained Ogg link)."""
        self.epoch_starts.append(len(self.arrivals))

    def dropped(self, now: float) -> None:
        self.drops += 1
        if self.dropped_at is None:
            self.dropped_at = now
        self.connection_starts.append(len(self.arrivals))


@dataclass
class Tally:
    """Mergeable totals for one kind of listener (``ogg`` or ``hls``)."""

    listeners: int = 0
    connected: int = 0
    failed: int = 0
    with_media: int = 0
    retries: int = 0
    stalls: int = 0
    bytes_received: int = 0
    drops: int = 0
    reconnects: int = 0
    reconnect_gap: Histogram = field(default_factory=Histogram)
    failures: Counter[str] = field(default_factory=Counter)
    first_audio: Histogram = field(default_factory=Histogram)
    lateness: Histogram = field(default_factory=Histogram)
    # Lateness of the units that arrived once the crowd was in: the steady state, apart
    # from the arrival storm.
    steady_lateness: Histogram = field(default_factory=Histogram)

    def add(
        self, rec: ListenerRecord, stall_gap_s: float, steady_from: float | None = None
    ) -> None:
        self.listeners += 1
        self.connected += rec.connected
        self.retries += rec.retries
        self.bytes_received += rec.bytes_received
        if rec.failure is not None:
            self.failed += 1
            self.failures[rec.failure] += 1
        if rec.first_media_at is not None:
            self.with_media += 1
            self.first_audio.add(rec.first_media_at - rec.started_at)
        self.drops += rec.drops
        self.reconnects += rec.reconnects
        self.reconnect_gap.extend(rec.reconnect_gaps)
        connections = epochs(rec.arrivals, rec.connection_starts)
        # Open until the end of the run: only the last connection, if it was not lost.
        open_at_end = len(connections) - 1 if rec.dropped_at is None else -1
        for i, conn in enumerate(connections):
            end_s = rec.ended_at if i == open_at_end else conn[-1][0]
            self.stalls += stalls([a for a, _ in conn], end_s, stall_gap_s)
        reconnected = set(rec.connection_starts)
        cuts = sorted(reconnected | set(rec.epoch_starts))
        at = 0
        for epoch in epochs(rec.arrivals, cuts):
            opens_connection = at == 0 or at in reconnected
            at += len(epoch)
            units = after_join_burst(epoch) if rec.skip_join_burst and opens_connection else epoch
            late = lateness(units)
            self.lateness.extend(late)
            if steady_from is not None:
                self.steady_lateness.extend(
                    x for x, (t, _) in zip(late, units, strict=True) if t >= steady_from
                )

    def merge(self, other: Tally) -> None:
        for name in (
            "listeners",
            "connected",
            "failed",
            "with_media",
            "retries",
            "stalls",
            "bytes_received",
            "drops",
            "reconnects",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures.update(other.failures)
        self.first_audio.merge(other.first_audio)
        self.lateness.merge(other.lateness)
        self.steady_lateness.merge(other.steady_lateness)
        self.reconnect_gap.merge(other.reconnect_gap)


def merge_tallies(parts: Iterable[dict[str, Tally]]) -> dict[str, Tally]:
    out: dict[str, Tally] = {}
    for part in parts:
        for kind, tally in part.items():
            out.setdefault(kind, Tally()).merge(tally)
    return out
