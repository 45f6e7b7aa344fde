"""The fan-out engine: one chunk built once, written to every subscriber.

Design, in the order that matters under load:

1. **Shared bytes.** Pages published between two flushes are joined once into one
   immutable ``bytes`` chunk; a flush is then one ``write()`` of that same object per
   subscriber. Nothing per listener is encoded, copied or parsed.
2. **Bounded per-subscriber buffers.** A subscriber whose transport buffer is above
   ``max_listener_buffer_bytes`` is skipped for this chunk (it rejoins at the live edge
   on the next page, which Ogg players resynchronise on). One that stays above it for
   ``stall_cutoff_s`` is cut off with ``abort()``: ``close()`` would wait for a buffer
   that a stalled reader never drains. Nobody's backlog can delay anyone else or grow
   memory.
3. **Coalescing instead of falling behind.** The adapter reports how long each pass
   took. When a pass takes longer than the flush interval, the next interval grows to a
   multiple of the pass time, so the engine makes fewer, larger writes: latency grows
   gracefully and nobody is dropped for it. It shrinks back as the load falls.
4. **Admission.** Past ``max_listeners`` or when passes eat more than
   ``max_pass_fraction`` of the interval even at the longest interval, a newcomer gets
   ``Unavailable`` with a jittered retry-after. Those already connected are not touched.

Pure: the engine sees subscribers only through the ``Sink`` protocol and gets ``now``
and randomness from the caller.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
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
    max_listener_buffer_bytes: int = 64 * 1024
    stall_cutoff_s: float = 10.0
    max_listeners: int = 60_000
    # A pass may use this much of the interval before the engine coalesces further.
    max_pass_fraction: float = 0.5
    join_burst_s: float = 0.6
    retry_after_s: float = 5.0


@dataclass
class Subscriber:
    sink: Sink
    joined_at: float
    over_since: float | None = None
    skipped_chunks: int = 0


@dataclass(frozen=True)
class FlushReport:
    written: int
    skipped: int
    cut_off: int
    chunk_bytes: int


@dataclass
class _Page:
    data: bytes
    at: float


@dataclass
class Fanout:
    config: FanoutConfig = field(default_factory=FanoutConfig)
    header: bytes = b""
    subscribers: dict[int, Subscriber] = field(default_factory=dict)
    interval_s: float = 0.0
    _pending: list[_Page] = field(default_factory=list)
    _recent: deque[_Page] = field(default_factory=deque)
    _join_bytes: bytes | None = None
    _join_header: bytes = b""
    last_pass_s: float = 0.0

    def __post_init__(self) -> None:
        self.interval_s = self.config.flush_interval_s

    # -- program side ------------------------------------------------------------
    def publish(self, page: bytes, now: float) -> None:
        self._pending.append(_Page(page, now))

    def due(self, last_flush_at: float, now: float) -> bool:
        return bool(self._pending) and now - last_flush_at >= self.interval_s

    def take_chunk(self) -> bytes:
        # Only flushed pages go into the join burst, so a newcomer never gets a page
        # twice (once in the burst, once in the next chunk).
        pages, self._pending = self._pending, []
        self._recent.extend(pages)
        if pages:
            edge = pages[-1].at
            # ">=" so that join_burst_s=0 keeps nothing (the SSE stream sends a snapshot).
            while self._recent and edge - self._recent[0].at >= self.config.join_burst_s:
                self._recent.popleft()
            self._join_bytes = None
        return b"".join(p.data for p in pages)

    def flush(self, now: float) -> FlushReport:
        """Write the pending chunk to everyone. Returns what happened for metrics."""
        chunk = self.take_chunk()
        if not chunk:
            return FlushReport(0, 0, 0, 0)
        written, skipped, cut = self.write_to(self.subscribers.items(), chunk, now)
        return FlushReport(written, skipped, cut, len(chunk))

    def write_to(
        self, subs: Iterable[tuple[int, Subscriber]], chunk: bytes, now: float
    ) -> tuple[int, int, int]:
        """One pass (or one slice of a pass) over subscribers. The hot loop."""
        limit = self.config.max_listener_buffer_bytes
        written = skipped = 0
        stalled: list[int] = []
        live = self.subscribers
        for key, sub in subs:
            if live.get(key) is not sub:
                continue  # left during a sliced pass
            if sub.sink.get_write_buffer_size() > limit:
                skipped += 1
                sub.skipped_chunks += 1
                if sub.over_since is None:
                    sub.over_since = now
                elif now - sub.over_since >= self.config.stall_cutoff_s:
                    stalled.append(key)
                continue
            if sub.over_since is not None:
                sub.over_since = None
            sub.sink.write(chunk)
            written += 1
        for key in stalled:
            self.cut_off(key)
        return written, skipped, len(stalled)

    def pass_took(self, seconds: float) -> None:
        """Adapt the interval to the measured cost of the last pass (coalescing)."""
        self.last_pass_s = seconds
        wanted = seconds / self.config.max_pass_fraction
        base, cap = self.config.flush_interval_s, self.config.max_flush_interval_s
        # Grow at once, shrink slowly, so one quiet pass does not undo coalescing.
        target = max(base, min(cap, wanted))
        if target >= self.interval_s:
            self.interval_s = target
        else:
            self.interval_s = 0.8 * self.interval_s + 0.2 * target

    # -- listener side -----------------------------------------------------------
    @property
    def overloaded(self) -> bool:
        limit = self.config.max_flush_interval_s * self.config.max_pass_fraction
        return self.last_pass_s > limit

    def admit(self, rng: random.Random) -> None:
        if len(self.subscribers) >= self.config.max_listeners:
            raise Unavailable("this server is at its listener capacity", self.retry_after(rng))
        if self.overloaded:
            raise Unavailable("this server is out of CPU headroom", self.retry_after(rng))

    def retry_after(self, rng: random.Random) -> float:
        # Jitter spreads a refused crowd's retries over time instead of synchronising them.
        base = self.config.retry_after_s
        return base + rng.uniform(0, base)

    def join_bytes(self) -> bytes:
        """Header plus a short burst from the live edge, built once per page."""
        # The header is a plain attribute the channel may set late; rebuild if it changed.
        if self._join_bytes is None or self._join_header is not self.header:
            self._join_header = self.header
            self._join_bytes = self.header + b"".join(p.data for p in self._recent)
        return self._join_bytes

    def subscribe(self, key: int, sink: Sink, now: float) -> None:
        self.subscribers[key] = Subscriber(sink, now)
        sink.write(self.join_bytes())

    def unsubscribe(self, key: int) -> None:
        self.subscribers.pop(key, None)

    def cut_off(self, key: int) -> None:
        sub = self.subscribers.pop(key, None)
        if sub is not None:
            sub.sink.abort()

    def close_all(self, final: bytes = b"") -> None:
        """End of the channel: flush the last chunk to those keeping up, abort the rest."""
        limit = self.config.max_listener_buffer_bytes
        for sub in self.subscribers.values():
            if sub.sink.get_write_buffer_size() > limit:
                sub.sink.abort()
                continue
            if final:
                sub.sink.write(final)
            sub.sink.close()
        self.subscribers.clear()
