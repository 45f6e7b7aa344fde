"""The parent process: checks the target, spreads the crowd over workers, shows
progress, samples the server, enforces the time bounds and builds the report.

Bounds: every listener stops at ``duration_s`` after the start; a watchdog terminates
any worker still running a grace later (15 s + 0.5 ms per listener), so a run never
outlives its budget.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import queue
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from townhall.loadtest.arrivals import Arrival, deal, schedule
from townhall.loadtest.probe import ServerSampler, listening_pids
from townhall.loadtest.report import Report
from townhall.loadtest.stats import Tally, merge_tallies
from townhall.loadtest.wire import all_loopback, parse_target
from townhall.loadtest.worker import (
    Finished,
    Mix,
    Progress,
    WorkerPlan,
    raise_open_files_limit,
    swarm_main,
)

# Each listener holds a socket, and a process may open about 20,000 files where this was
# measured (RLIMIT_NOFILE's hard limit): stay well under it.
MAX_SOCKETS_PER_PROCESS = 15_000
START_DELAY_S = 3.0  # lets every worker spawn, import and start its loop before the first arrival
WATCHDOG_GRACE_S = 15.0
# Every listener ends at once and is reduced to its tally; at 50,000 listeners sharing
# one client core with the rest, that took longer than the fixed grace.
WATCHDOG_GRACE_PER_LISTENER_S = 0.0005


class RemoteTargetRefused(SystemExit):
    pass


# The steady state starts this long after the last arrival (its join burst and first
# chunks are still arrival, not steady delivery).
STEADY_SETTLE_S = 2.0


@dataclass(frozen=True)
class LoadPlan:
    url: str
    listeners: int
    arrival: Arrival = Arrival.FLASH
    over_s: float = 5.0
    duration_s: float = 30.0
    mix: Mix = Mix.OGG
    processes: int | None = None
    seed: int = 0
    stall_gap_s: float = 1.5
    server_pid: int | None = None
    allow_remote: bool = False
    # A waiting room: the crowd arrives before the start and the Space goes live this
    # long after the first arrival (``go_live`` is called then); ``web_share`` of the
    # crowd are web pages (the SSE stream and a held Ogg stream, as the listen page),
    # the rest hold Ogg streams. First audio then counts from Go live.
    live_after_s: float | None = None
    web_share: float = 0.0

    def worker_count(self) -> int:
        if self.processes:
            return self.processes
        # A web page in a waiting room holds two sockets: the SSE stream and the Ogg one.
        sockets = self.listeners * (1.0 + self.web_share)
        return max(1, math.ceil(sockets / MAX_SOCKETS_PER_PROCESS))


def check_target(url: str, allow_remote: bool) -> None:
    target = parse_target(url)
    infos = socket.getaddrinfo(target.host, target.port, proto=socket.IPPROTO_TCP)
    addresses = [str(info[4][0]) for info in infos]
    if not allow_remote and not all_loopback(addresses):
        raise RemoteTargetRefused(
            f"refusing to load-test {target.host} ({', '.join(sorted(set(addresses)))}): "
            "not loopback; pass --allow-remote if you own that server"
        )


@dataclass
class GoLive:
    """When and how the Space goes live in a waiting-room run, and what the crowd had
    received by then (Ogg bytes: it should be none)."""

    at: float  # monotonic
    start: Callable[[], object]
    done: bool = False
    received_before_bytes: int = 0


def run_loadtest(
    plan: LoadPlan,
    progress: TextIO | None = sys.stderr,
    go_live: Callable[[], object] | None = None,
) -> Report:
    if plan.duration_s <= plan.over_s:
        raise ValueError("--duration must be longer than --over, or late arrivals hear nothing")
    if plan.live_after_s is not None and not plan.over_s < plan.live_after_s < plan.duration_s:
        raise ValueError("the Space must go live after the arrivals and before the end")
    check_target(plan.url, plan.allow_remote)
    raise_open_files_limit()
    sampler = _sampler(plan)
    waiting: list[GoLive] = []
    tallies, fired = _run_workers(plan, sampler, progress, go_live, waiting)
    return Report(
        url=plan.url,
        listeners=plan.listeners,
        arrival=plan.arrival.value,
        over_s=plan.over_s,
        duration_s=plan.duration_s,
        mix=plan.mix.value,
        processes=plan.worker_count(),
        by_kind=tallies,
        server=sampler.usage if sampler else None,
        watchdog_fired=fired,
        received_before_live_bytes=waiting[0].received_before_bytes if waiting else None,
    )


def _sampler(plan: LoadPlan) -> ServerSampler | None:
    pids = [plan.server_pid] if plan.server_pid else listening_pids(parse_target(plan.url).port)
    return ServerSampler(pids) if pids else None


def _worker_plans(plan: LoadPlan, start_at: float) -> list[WorkerPlan]:
    offsets = schedule(plan.arrival, plan.listeners, plan.over_s, plan.seed)
    hands = deal(offsets, plan.worker_count())
    end_at = start_at + plan.duration_s
    steady_from = start_at + plan.over_s + STEADY_SETTLE_S
    live_at = None if plan.live_after_s is None else start_at + plan.live_after_s
    if live_at is not None:
        steady_from = live_at + STEADY_SETTLE_S
    return [
        WorkerPlan(
            i,
            plan.url,
            hand,
            plan.mix,
            start_at,
            end_at,
            plan.seed,
            plan.stall_gap_s,
            steady_from,
            live_at=live_at,
            web_share=plan.web_share,
        )
        for i, hand in enumerate(hands)
    ]


def _run_workers(
    plan: LoadPlan,
    sampler: ServerSampler | None,
    progress: TextIO | None,
    go_live: Callable[[], object] | None = None,
    waiting: list[GoLive] | None = None,
) -> tuple[dict[str, Tally], bool]:
    # spawn, not fork: a caller may have threads running (aiortc decoders, executors,
    # a test runner), and a forked child can deadlock on a lock one of them held.
    ctx = mp.get_context("spawn")
    inbox = ctx.Queue()
    start_at = time.monotonic() + START_DELAY_S
    if plan.live_after_s is not None and go_live is not None and waiting is not None:
        waiting.append(GoLive(start_at + plan.live_after_s, go_live))
    procs = [
        ctx.Process(target=swarm_main, args=(wp, inbox), name=f"loadtest-{wp.worker}", daemon=True)
        for wp in _worker_plans(plan, start_at)
    ]
    for p in procs:
        p.start()
    try:
        return _collect(plan, procs, inbox, sampler, progress, start_at, waiting)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=5)


def _collect(
    plan: LoadPlan,
    procs: Sequence[mp.process.BaseProcess],
    inbox: mp.queues.Queue[object],
    sampler: ServerSampler | None,
    progress: TextIO | None,
    start_at: float,
    waiting: list[GoLive] | None = None,
) -> tuple[dict[str, Tally], bool]:
    latest: dict[int, Progress] = {}
    finished: dict[int, dict[str, Tally]] = {}
    grace = WATCHDOG_GRACE_S + plan.listeners * WATCHDOG_GRACE_PER_LISTENER_S
    deadline = start_at + plan.duration_s + grace
    next_tick = time.monotonic() + 1.0
    while len(finished) < len(procs) and time.monotonic() < deadline:
        wake = min([next_tick, *(g.at for g in waiting or () if not g.done)])
        _drain(inbox, latest, finished, timeout_s=max(0.0, wake - time.monotonic()))
        for g in waiting or ():
            if not g.done and time.monotonic() >= g.at:
                g.done = True
                g.received_before_bytes = sum(p.bytes_received for p in latest.values())
                g.start()
        if time.monotonic() >= next_tick:
            next_tick += 1.0
            if sampler is not None:
                sampler.sample()
            _show(progress, time.monotonic() - start_at, latest, sampler)
        if len(finished) < len(procs) and not any(p.is_alive() for p in procs):
            _drain(inbox, latest, finished, timeout_s=1.0)
            break  # a worker died without reporting; report what we have
    fired = len(finished) < len(procs)
    return merge_tallies(finished.values()), fired


def _drain(
    inbox: mp.queues.Queue[object],
    latest: dict[int, Progress],
    finished: dict[int, dict[str, Tally]],
    timeout_s: float,
) -> None:
    try:
        msg = inbox.get(timeout=timeout_s)
    except queue.Empty:
        return
    if isinstance(msg, Progress):
        latest[msg.worker] = msg
    elif isinstance(msg, Finished):
        finished[msg.worker] = msg.tallies


def _show(
    out: TextIO | None, elapsed_s: float, latest: dict[int, Progress], sampler: ServerSampler | None
) -> None:
    if out is None:
        return
    ps = latest.values()
    mb = sum(p.bytes_received for p in ps) / 1e6
    line = (
        f"[{elapsed_s:5.1f}s] connected {sum(p.connected for p in ps)}  "
        f"active {sum(p.active for p in ps)}  failed {sum(p.failed for p in ps)}  "
        f"received {mb:.1f} MB"
    )
    if sampler is not None and sampler.usage.cpu_samples:
        line += (
            f"  server CPU {sampler.usage.cpu_samples[-1]:.0f}%"
            f" RSS {sampler.usage.rss_samples[-1] / 2**20:.0f} MiB"
        )
    print(line, file=out, flush=True)
