"""The fan-out engine: one chunk built once, written to every subscriber.

Design, in the order that matters under load:

1. **Shared bytes.** Pages published between two writes are joined once into one
   immutable ``bytes`` chunk; a write pass is then one ``write()`` of that same object
   per subscriber. Nothing per listener is encoded, copied or parsed.
2. **Staggered cohorts.** Subscribers are dealt into ``K = interval / cohort_spacing_s``
   cohorts whose turns are spread evenly over the interval. Each listener still gets
   one write per interval, but the process writes to 1/K of the crowd at a time: a
   pass blocks the loop K times less, and the crowd's chunks arrive spread over the
   interval instead of all at once. A turn whose newest page is stale waits for the
   next one, so every chunk ends with a page that has just been completed.
3. **Bounded per-subscriber buffers.** A subscriber whose transport buffer is above
   ``max_listener_buffer_bytes`` is skipped for this chunk (it rejoins at the live edge
   on the next page, which Ogg players resynchronise on). One that stays above it for
   ``stall_cutoff_s`` is cut off with ``abort()``: ``close()`` would wait for a buffer
   that a stalled reader never drains. Nobody's backlog can delay anyone else or grow
   memory.
4. **Coalescing instead of falling behind.** Each turn measures what its writes cost
   (the engine's CPU time). When a full round over all cohorts would take more than
   ``max_pass_fraction`` of the interval, the interval grows, so the engine makes
   fewer, larger writes: latency grows gracefully and nobody is dropped for it. It
   shrinks back as the load falls.
5. **Admission.** Past ``max_listeners``, when rounds eat more than
   ``max_pass_fraction`` of even the longest interval, or when the caller's event loop
   runs late by more than ``max_loop_lag_s``, a newcomer gets ``Unavailable`` with a
   jittered retry-after. Those already connected are not touched.

A turn (``next_turn`` then ``play``) is the one unit of work: the server plays every
due turn slice by slice, yielding to its event loop between slices; ``flush`` plays
them in one go for callers without a loop.

Pure: the engine sees subscribers only through the ``Sink`` protocol and gets ``now``,
randomness and a CPU clock from the caller.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from townhall.errors import Unavailable


class Sink(Protocol):
    """What the engine needs of a subscriber; an asyncio transport fits."""

    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


@dataclass(frozen=True)
class FanoutConfig:
    flush_interval_s: float = 0.2
    max_flush_interval_s: float = 2.0
    # Cohort turns are this far apart; an interval of 1 s makes five cohorts.
    cohort_spacing_s: float = 0.2
    max_listener_buffer_bytes: int = 64 * 1024
    stall_cutoff_s: float = 10.0
    max_listeners: int = 60_000
    # A full round may use this much of the interval before the engine coalesces further.
    max_pass_fraction: float = 0.5
    join_burst_s: float = 0.6
    retry_after_s: float = 5.0
    # An event loop this late on its own timers has no CPU to spare, whatever its own
    # passes cost: sibling processes on the same core are taking it.
    max_loop_lag_s: float = 0.5
    # A due cohort whose newest page is older than ``fresh_page_age_s`` waits (up to
    # ``fresh_page_wait_s``) for the next one, so its chunk ends with a page that has
    # just been completed, not one up to a page length old. A wait of 0 writes at once
    # (room events: nothing periodic to wait for).
    fresh_page_age_s: float = 0.1
    fresh_page_wait_s: float = 0.25

    @property
    def cohorts(self) -> int:
        return max(1, round(self.flush_interval_s / self.cohort_spacing_s))


@dataclass(eq=False)
class Subscriber:
    key: int
    sink: Sink
    joined_at: float
    cohort: int = 0
    over_since: float | None = None
    skipped_chunks: int = 0
    gone: bool = False  # left; a pass holding a snapshot of its cohort skips it


@dataclass(frozen=True)
class FlushReport:
    written: int
    skipped: int
    cut_off: int
    chunk_bytes: int


@dataclass
class _Page:
    seq: int
    data: bytes
    at: float
    stream: int = 0  # which logical stream (header) it belongs to
    is_header: bool = False  # a later stream's header pages, sent in line with the data


@dataclass
class Cohort:
    """Subscribers written together; ``sent_to`` is the first page they have not had."""

    index: int
    members: dict[int, Subscriber] = field(default_factory=dict)
    sent_to: int = 0
    due_at: float | None = None  # set when the first page arrives
    join: bytes | None = None  # header + burst for a newcomer, built once per chunk
    stream: int = 0  # the logical stream of the last page it has had


@dataclass(eq=False)
class Turn:
    """One cohort's turn: the chunk it has not had, built once, and whom to write it to.

    ``members`` is a snapshot; one who leaves during a sliced turn is marked gone and
    skipped. The counts add up over the slices.
    """

    cohort: Cohort
    chunk: bytes
    members: list[Subscriber]
    now: float
    written: int = 0
    skipped: int = 0
    cut_off: int = 0


@dataclass
class Fanout:
    config: FanoutConfig = field(default_factory=FanoutConfig)
    header: bytes = b""
    subscribers: dict[int, Subscriber] = field(default_factory=dict)
    interval_s: float = 0.0
    last_pass_s: float = 0.0  # the last full round's estimated cost
    cohorts: list[Cohort] = field(default_factory=list)
    # What a turn's writes cost: this thread's CPU, not wall time. Coalescing cannot
    # shrink other work, and time taken by other processes on the same core (the stage,
    # sibling workers) is not this engine falling behind.
    cpu_clock: Callable[[], float] = time.thread_time
    _pages: deque[_Page] = field(default_factory=deque)
    _next_seq: int = 0
    _join_header: bytes = b""
    # A chained stream (a restarted source): each later logical stream's number, and the
    # headers of earlier ones still owed to cohorts that have not reached the new one.
    _stream: int = 0
    _old_headers: dict[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.interval_s = self.config.flush_interval_s
        self.cohorts = [Cohort(i) for i in range(self.config.cohorts)]

    # -- program side ------------------------------------------------------------
    def publish(self, page: bytes, now: float) -> None:
        if self._next_seq == 0:  # the first page sets the cohorts' phases
            self._set_phases(now)
        self._pages.append(_Page(self._next_seq, page, now, self._stream))
        self._next_seq += 1

    def restart_stream(self, header: bytes, now: float) -> None:
        """A new logical stream follows (RFC 3533 chaining: a restarted encoder, a new
        serial). Its header pages go to every listener in line with the data, so nobody
        gets the new stream's pages without its BOS pages; newcomers get it as their
        header once their cohort has reached it."""
        if header == self.header:
            return  # the same stream announced again
        if not self.header:
            self.header = header
            return
        self._old_headers[self._stream] = self.header
        self._stream += 1
        self.header = header
        if self._next_seq == 0:  # the first page sets the cohorts' phases
            self._set_phases(now)
        self._pages.append(_Page(self._next_seq, header, now, self._stream, is_header=True))
        self._next_seq += 1

    @property
    def newest_at(self) -> float:
        """When the newest page was published (0 before any)."""
        return self._pages[-1].at if self._pages else 0.0

    def _set_phases(self, now: float) -> None:
        step = self.interval_s / len(self.cohorts)
        for c in self.cohorts:
            c.due_at = now + c.index * step

    def _header_of(self, stream: int) -> bytes:
        return self.header if stream == self._stream else self._old_headers.get(stream, b"")

    def next_due(self, now: float) -> Cohort | None:
        """A cohort whose turn has come and that has pages it has not had."""
        newest = self._pages[-1].at if self._pages else 0.0
        fresh = now - newest <= self.config.fresh_page_age_s
        wait = self.config.fresh_page_wait_s
        for c in self.cohorts:
            if c.due_at is None or c.due_at > now or c.sent_to >= self._next_seq:
                continue
            if fresh or newest >= c.due_at or now >= c.due_at + wait:
                return c
        return None

    def take_chunk(self, cohort: Cohort, now: float) -> bytes:
        """The pages ``cohort`` has not had, as one chunk; schedules its next turn."""
        chunk = b"".join(p.data for p in self._pages if p.seq >= cohort.sent_to)
        cohort.sent_to = self._next_seq
        cohort.stream = self._stream
        cohort.join = None
        if cohort.due_at is not None:
            # Keep the phase; after a stall, do not fire back to back.
            cohort.due_at = max(cohort.due_at + self.interval_s, now + self.interval_s / 2)
        self._forget_old_pages()
        return chunk

    def _forget_old_pages(self) -> None:
        unsent = min(c.sent_to for c in self.cohorts)
        keep_s = self.config.join_burst_s + self.config.max_flush_interval_s
        newest = self._pages[-1].at if self._pages else 0.0
        while self._pages and self._pages[0].seq < unsent and newest - self._pages[0].at >= keep_s:
            self._pages.popleft()
        if self._old_headers:
            oldest = min(c.stream for c in self.cohorts)
            for stream in [s for s in self._old_headers if s < oldest]:
                del self._old_headers[stream]

    def next_turn(self, now: float) -> Turn | None:
        """The turn of a cohort that is due (its chunk taken, its next turn scheduled)."""
        cohort = self.next_due(now)
        if cohort is None:
            return None
        chunk = self.take_chunk(cohort, now)
        return Turn(cohort, chunk, list(cohort.members.values()), now)

    def play(self, turn: Turn, slice_size: int) -> Iterator[None]:
        """Write the turn's chunk to its members, ``slice_size`` at a time, yielding
        between slices (an event loop runs there); then adapt the interval to the cost."""
        members, busy = turn.members, 0.0
        for i in range(0, len(members), slice_size):
            started = self.cpu_clock()
            w, s, c = self.write_to(members[i : i + slice_size], turn.chunk, turn.now)
            busy += self.cpu_clock() - started
            turn.written += w
            turn.skipped += s
            turn.cut_off += c
            if i + slice_size < len(members):
                yield
        if members:  # an empty cohort's turn says nothing about what a round costs
            self.pass_took(busy, len(members))

    def flush(self, now: float) -> FlushReport:
        """Play every due turn in one go (callers without an event loop to yield to)."""
        turns: list[Turn] = []
        while (turn := self.next_turn(now)) is not None:
            for _ in self.play(turn, max(1, len(turn.members))):
                pass
            turns.append(turn)
        return FlushReport(
            sum(t.written for t in turns),
            sum(t.skipped for t in turns),
            sum(t.cut_off for t in turns),
            sum(len(t.chunk) for t in turns),
        )

    def write_to(
        self, subs: Iterable[Subscriber], chunk: bytes, now: float
    ) -> tuple[int, int, int]:
        """One pass (or one slice of a pass) over subscribers. The hot loop."""
        limit = self.config.max_listener_buffer_bytes
        written = skipped = 0
        stalled: list[Subscriber] = []
        for sub in subs:
            if sub.gone:
                continue  # left during a sliced pass
            if sub.sink.get_write_buffer_size() > limit:
                skipped += 1
                sub.skipped_chunks += 1
                if sub.over_since is None:
                    sub.over_since = now
                elif now - sub.over_since >= self.config.stall_cutoff_s:
                    stalled.append(sub)
                continue
            if sub.over_since is not None:
                sub.over_since = None
            sub.sink.write(chunk)
            written += 1
        for sub in stalled:
            self.cut_off(sub.key)
        return written, skipped, len(stalled)

    def pass_took(self, seconds: float, covered: int | None = None) -> None:
        """Adapt the interval to the cost of a pass over ``covered`` subscribers."""
        total = len(self.subscribers)
        # A cohort's pass stands for its share of the round: scale it to all cohorts.
        round_s = seconds * total / covered if covered else seconds
        self.last_pass_s = round_s
        wanted = round_s / self.config.max_pass_fraction
        base, cap = self.config.flush_interval_s, self.config.max_flush_interval_s
        # Grow at once, shrink slowly, so one quiet pass does not undo coalescing.
        target = max(base, min(cap, wanted))
        if target >= self.interval_s:
            # Turns already scheduled move out too, so the growth holds from now on.
            for c in self.cohorts:
                if c.due_at is not None:
                    c.due_at += target - self.interval_s
            self.interval_s = target
        else:
            self.interval_s = 0.8 * self.interval_s + 0.2 * target

    # -- listener side -----------------------------------------------------------
    @property
    def overloaded(self) -> bool:
        limit = self.config.max_flush_interval_s * self.config.max_pass_fraction
        return self.last_pass_s > limit

    def admit(self, rng: random.Random, loop_lag_s: float = 0.0) -> None:
        if len(self.subscribers) >= self.config.max_listeners:
            raise Unavailable("this server is at its listener capacity", self.retry_after(rng))
        if self.overloaded or loop_lag_s > self.config.max_loop_lag_s:
            raise Unavailable("this server is out of CPU headroom", self.retry_after(rng))

    def retry_after(self, rng: random.Random) -> float:
        # Jitter spreads a refused crowd's retries over time instead of synchronising them.
        base = self.config.retry_after_s
        return base + rng.uniform(0, base)

    def join_bytes(self, cohort: Cohort) -> bytes:
        """Header plus a short burst up to what ``cohort`` has had, built once per chunk.

        The burst stops where the cohort's last chunk stopped, so a newcomer never gets
        a page twice (once in the burst, once in its cohort's next chunk). Header and
        burst are of the logical stream the cohort is in: a newcomer then follows its
        cohort into a later stream through the same in-line header pages.
        """
        # The header is a plain attribute the channel may set late; rebuild if it changed.
        if cohort.join is None or self._join_header is not self.header:
            if self._join_header is not self.header:
                for c in self.cohorts:
                    c.join = None
                self._join_header = self.header
            had = [
                p
                for p in self._pages
                if p.seq < cohort.sent_to and p.stream == cohort.stream and not p.is_header
            ]
            edge = had[-1].at if had else 0.0
            # "<" so that join_burst_s=0 keeps nothing (the SSE stream sends a snapshot).
            burst = b"".join(p.data for p in had if edge - p.at < self.config.join_burst_s)
            cohort.join = self._header_of(cohort.stream) + burst
        return cohort.join

    def subscribe(self, key: int, sink: Sink, now: float) -> None:
        # The smallest cohort keeps the passes even through a join storm.
        cohort = min(self.cohorts, key=lambda c: len(c.members))
        sub = Subscriber(key, sink, now, cohort.index)
        self.subscribers[key] = cohort.members[key] = sub
        sink.write(self.join_bytes(cohort))

    def unsubscribe(self, key: int) -> None:
        sub = self.subscribers.pop(key, None)
        if sub is not None:
            sub.gone = True
            self.cohorts[sub.cohort].members.pop(key, None)

    def cut_off(self, key: int) -> None:
        sub = self.subscribers.get(key)
        if sub is not None:
            self.unsubscribe(key)
            sub.sink.abort()

    def close_all(self) -> None:
        """End of the channel: the pages each cohort has not had, then close; abort the stalled."""
        limit = self.config.max_listener_buffer_bytes
        for cohort in self.cohorts:
            final = self.take_chunk(cohort, 0.0)
            for sub in cohort.members.values():
                if sub.sink.get_write_buffer_size() > limit:
                    sub.sink.abort()
                    continue
                if final:
                    sub.sink.write(final)
                sub.sink.close()
            cohort.members.clear()
        self.subscribers.clear()
