"""One load-generating process: a slice of the crowd on one uvloop event loop.

Reports to the parent over a multiprocessing queue: a ``Progress`` every second and
one ``Finished`` with its tallies (histograms, so the parent merges them exactly).
Listener records are reduced to the tally as each listener ends, so memory stays
proportional to the listeners still running.
"""

from __future__ import annotations

import asyncio
import gc
import random
import resource
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import uvloop

from townhall.loadtest.listeners import (
    ListenerPlan,
    run_hls_listener,
    run_ogg_listener,
    run_web_listener,
)
from townhall.loadtest.stats import ListenerRecord, Tally
from townhall.loadtest.streams import StreamReader, loopback_source
from townhall.loadtest.wire import events_url, parse_target, playlist_url, with_query
from townhall.peers.backoff import Backoff

PROGRESS_INTERVAL_S = 1.0
_GOLDEN = (5**0.5 - 1) / 2


class Mix(StrEnum):
    OGG = "ogg"
    HLS = "hls"
    MIXED = "mixed"

    def kind_of(self, listener: int) -> str:
        if self is Mix.MIXED:
            return "hls" if listener % 2 else "ogg"
        return self.value


@dataclass(frozen=True)
class WorkerPlan:
    worker: int
    ogg_url: str
    listeners: list[tuple[int, float]]  # (listener index, arrival offset in seconds)
    mix: Mix
    start_at: float  # monotonic; CLOCK_MONOTONIC is shared by all processes on Linux
    end_at: float
    seed: int
    stall_gap_s: float = 1.5
    steady_from: float | None = None  # monotonic; lateness after it is also kept apart
    backoff: Backoff = field(default_factory=Backoff)
    # A waiting room: the Space goes live at this monotonic time (after the arrivals);
    # first audio counts from it. ``web_share`` of the crowd are web pages (the SSE
    # stream and a held Ogg stream, as the listen page); the rest hold Ogg streams.
    live_at: float | None = None
    web_share: float = 0.0


@dataclass(frozen=True)
class Progress:
    worker: int
    connected: int
    failed: int
    active: int
    bytes_received: int


@dataclass(frozen=True)
class Finished:
    worker: int
    tallies: dict[str, Tally]


class Outbox(Protocol):
    def put(self, item: object) -> None: ...


def raise_open_files_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit: each listener holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def swarm_main(plan: WorkerPlan, outbox: Outbox) -> None:
    raise_open_files_limit()
    # Every chunk read appends an arrival, so a worker holds millions of small objects
    # by the end, and each full collection walks them all while no stream is read: the
    # report would show that as the server's lateness (30,000 listeners, one run each:
    # steady p99 0.79 s with the collector, 0.47 s without). The run is bounded and its
    # records hold no cycles, so the collector is not needed here.
    gc.disable()
    tallies = uvloop.run(Swarm(plan, outbox).run())
    outbox.put(Finished(plan.worker, tallies))


class Swarm:
    def __init__(self, plan: WorkerPlan, outbox: Outbox) -> None:
        self.plan, self.outbox = plan, outbox
        self.tallies: dict[str, Tally] = {}
        self.records: dict[int, ListenerRecord] = {}
        self.reader = StreamReader()

    async def run(self) -> dict[str, Tally]:
        reporter = asyncio.create_task(self._report_progress())
        reading = asyncio.create_task(self.reader.run())
        try:
            await asyncio.gather(*(self._listener(i, offset) for i, offset in self.plan.listeners))
        finally:
            reporter.cancel()
            reading.cancel()
            self.reader.close()
        self._send_progress()
        return self.tallies

    async def _listener(self, index: int, offset_s: float) -> None:
        await asyncio.sleep(max(0.0, self.plan.start_at + offset_s - time.monotonic()))
        kind = self._kind_of(index)
        rec = self.records[index] = ListenerRecord(kind, started_at=time.monotonic())
        rng = random.Random(self.plan.seed * 1_000_003 + index)
        plan = self._listener_plan(kind, index)
        try:
            await self._run(kind, index, plan, rng, rec)
        except OSError as exc:
            # Out of sockets on this side (EMFILE): this listener failed, not the run.
            rec.failure = f"client: {exc.strerror}"
        finally:
            del self.records[index]
            if self.plan.live_at is not None:
                rec.started_at = self.plan.live_at  # first audio counts from Go live
            self.tallies.setdefault(kind, Tally()).add(
                rec, self.plan.stall_gap_s, self.plan.steady_from
            )

    async def _run(
        self, kind: str, index: int, plan: ListenerPlan, rng: random.Random, rec: ListenerRecord
    ) -> None:
        if kind == "hls":
            await run_hls_listener(plan, rng, rec)
        elif kind == "web":
            source = plan.source_ip
            sid = f"lt{self.plan.seed}-{index}"
            events = parse_target(events_url(self.plan.ogg_url))
            events = events.with_path(with_query(events.path, sid=sid))
            await run_web_listener(plan, events, rng, rec, self.reader, source)
        else:
            await run_ogg_listener(plan, rng, rec, self.reader, plan.source_ip)

    def _kind_of(self, index: int) -> str:
        # A low-discrepancy sequence (the golden ratio's multiples): the web pages are
        # spread evenly through the arrival order, and not in step with how listeners
        # are dealt to the workers (round robin), so each worker gets its share.
        if (index * _GOLDEN) % 1.0 < self.plan.web_share:
            return "web"
        return self.plan.mix.kind_of(index)

    def _listener_plan(self, kind: str, index: int) -> ListenerPlan:
        url = playlist_url(self.plan.ogg_url) if kind == "hls" else self.plan.ogg_url
        target = parse_target(url)
        # Each simulated listener names its session, as the web player does, so the
        # server's listener count can be checked against the crowd.
        target = target.with_path(with_query(target.path, sid=f"lt{self.plan.seed}-{index}"))
        source = loopback_source(index, target)
        return ListenerPlan(target, self.plan.end_at, self.plan.backoff, source_ip=source)

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            self._send_progress()

    def _send_progress(self) -> None:
        live = list(self.records.values())
        done = self.tallies.values()
        self.outbox.put(
            Progress(
                worker=self.plan.worker,
                connected=sum(r.connected for r in live) + sum(t.connected for t in done),
                failed=sum(t.failed for t in done),
                active=sum(r.connected for r in live),
                bytes_received=sum(r.bytes_received for r in live)
                + sum(t.bytes_received for t in done),
            )
        )
