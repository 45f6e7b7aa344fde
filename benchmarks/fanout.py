"""``python -m benchmarks fanout``: townhall's audience server against the real thing.

1. Ogg push: the same listener swarm (the load generator, in-process) against townhall's
   audience port and against Icecast2 relaying the same program, each server pinned to
   the same core while the swarm and everything else run on the other one.
2. LL-HLS pull: ``wrk`` on a part URL and on a playlist URL, townhall's audience port
   against nginx (1 worker) serving the same bytes from files.

Memory per listener is the growth of the server's RSS over its idle RSS, divided by the
listeners connected.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.baselines import OggRelay, icecast, nginx, require, wrk
from benchmarks.cpus import moved, other_cpu, pin_threads
from benchmarks.harness.server import Space, on_air
from townhall.loadtest import Arrival, LoadPlan, Mix, Report, run_loadtest
from townhall.loadtest.probe import listening_pids
from townhall.loadtest.wire import parse_target
from townhall.peers.listen import parse_playlist


@dataclass(frozen=True)
class BenchPlan:
    listeners: int = 5_000
    seconds: float = 20.0
    cpu: int = 0
    wrk_connections: int = 200
    wrk_seconds: float = 3.0
    # The machine is noisy (about ±25% run to run): alternate the servers and report
    # the median of this many rounds each.
    wrk_rounds: int = 3
    # The target budget: one write per listener per second.
    flush_interval_s: float = 1.0
    # Processes on the audience port; more than ~18k listeners need several here, as
    # each process may hold at most about 20,000 sockets. All are pinned to ``cpu``.
    audience_workers: int = 0

    def server_args(self) -> tuple[str, ...]:
        return (
            "--stream-flush-interval-s",
            str(self.flush_interval_s),
            "--audience-workers",
            str(self.audience_workers),
            "--max-listeners",
            str(self.listeners + 1_000),
        )

    # Arrivals spread over this many seconds (default: min(5, seconds / 3)). The swarm
    # has one core; about 2,000 connects/s is what it sustains without falling behind.
    over_s: float | None = None

    # Icecast's source (the relay) runs off the measured core. With this, townhall's
    # stage does too, and the measured core holds only the audience processes.
    stage_off_core: bool = False

    @property
    def arrive_over_s(self) -> float:
        return self.over_s if self.over_s is not None else min(5.0, self.seconds / 3)


@dataclass
class SwarmRow:
    server: str
    report: Report
    idle_rss_bytes: int

    def summary(self) -> dict[str, Any]:
        row = self.report.rows()["all"]
        usage = self.report.server
        rss = usage.rss_max_bytes if usage else None
        grown = (rss - self.idle_rss_bytes) if rss else None
        per = grown / row["connected"] if grown is not None and row["connected"] else None
        return {
            "server": self.server,
            "connected": row["connected"],
            "failed": row["failed"],
            "lateness_p50_s": row["lateness_p50_s"],
            "lateness_p99_s": row["lateness_p99_s"],
            "steady_p99_s": row["steady_lateness_p99_s"],
            "stalls": row["stalls"],
            "cpu_mean_percent": usage.cpu_mean if usage else None,
            "cpu_max_percent": usage.cpu_max if usage else None,
            "rss_max_mib": rss / 2**20 if rss else None,
            "kib_per_listener": per / 1024 if per is not None else None,
        }


@dataclass
class BenchResult:
    plan: BenchPlan
    swarms: list[SwarmRow] = field(default_factory=list)
    wrk_rps: dict[str, float] = field(default_factory=dict)  # "townhall part" -> median req/s
    wrk_samples: dict[str, list[float]] = field(default_factory=dict)
    wrk_non_2xx: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": vars(self.plan),
            "ogg": [s.summary() for s in self.swarms],
            "wrk_requests_per_s": self.wrk_rps,
            "wrk_samples": self.wrk_samples,
            "wrk_non_2xx": self.wrk_non_2xx,
        }

    def table(self) -> str:
        rows = [s.summary() for s in self.swarms]
        cols = list(rows[0]) if rows else []
        where = "audience processes" if self.plan.stage_off_core else "server"
        lines = [
            f"Ogg push, {self.plan.listeners} listeners, {self.plan.seconds:g} s, "
            f"{where} on CPU {self.plan.cpu}:"
        ]
        lines.append("".join(f"{c:>18}" for c in cols))
        lines += ["".join(f"{_cell(r[c]):>18}" for c in cols) for r in rows]
        lines += self._ratios(rows)
        lines.append(
            f"LL-HLS, wrk -c{self.plan.wrk_connections} -d{self.plan.wrk_seconds:g}s, "
            f"median of {self.plan.wrk_rounds} alternating rounds:"
        )
        for name, rps in self.wrk_rps.items():
            bad = self.wrk_non_2xx.get(name, 0)
            runs = " / ".join(f"{r:,.0f}" for r in self.wrk_samples.get(name, []))
            lines.append(
                f"  {name:<20} {rps:>12,.0f} req/s  ({runs})"
                + (f"  ({bad} non-2xx)" if bad else "")
            )
        for kind in ("part", "playlist"):
            th, ng = self.wrk_rps.get(f"townhall {kind}"), self.wrk_rps.get(f"nginx {kind}")
            if th and ng:
                lines.append(f"  townhall/nginx {kind}: {th / ng:.2f}")
        return "\n".join(lines)

    def _ratios(self, rows: list[dict[str, Any]]) -> list[str]:
        by = {r["server"]: r for r in rows}
        th, ice = by.get("townhall"), by.get("icecast2")
        if not th or not ice or not ice["connected"]:
            return []
        out = [f"  townhall/icecast listeners connected: {th['connected'] / ice['connected']:.2f}"]
        if th["cpu_mean_percent"] and ice["cpu_mean_percent"]:
            ratio = th["cpu_mean_percent"] / ice["cpu_mean_percent"]
            out.append(f"  townhall/icecast CPU at that load: {ratio:.2f}")
        return out


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return (
        f"{v:.3f}"
        if isinstance(v, float) and abs(v) < 10
        else (f"{v:.0f}" if isinstance(v, float) else str(v))
    )


def rss_of(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (proc, *proc.children(recursive=True)))


def run_fanout_bench(plan: BenchPlan) -> BenchResult:
    require("icecast2", "nginx", "wrk", "taskset")
    client_cpu = other_cpu(plan.cpu)
    os.sched_setaffinity(0, {client_cpu})  # the swarm, the speaker and the relay live here
    result = BenchResult(plan)
    with (
        on_air(cpu=plan.cpu, server_args=plan.server_args()) as space,
        tempfile.TemporaryDirectory() as tmp,
    ):
        if plan.stage_off_core:  # the workers, already spawned, stay on the measured core
            pin_threads([space.server.pid], {client_cpu})
        _compare_hls(space, Path(tmp), plan, client_cpu, result)
        # Off core, the CPU and memory measured are the audience processes' alone.
        measured = None if plan.stage_off_core else space.server.pid
        result.swarms.append(_swarm("townhall", space.ogg_url, measured, plan))
        with moved(space.server.pid, client_cpu):
            result.swarms.append(_icecast_swarm(space, plan))
    return result


def _swarm(name: str, url: str, pid: int | None, plan: BenchPlan) -> SwarmRow:
    """``pid``: the server process tree to measure; None: the processes on the port."""
    port = parse_target(url).port
    idle = rss_of(pid) if pid else sum(rss_of(p) for p in listening_pids(port))
    load = LoadPlan(
        url,
        plan.listeners,
        Arrival.FLASH,
        plan.arrive_over_s,
        plan.seconds,
        Mix.OGG,
        server_pid=pid,
    )
    return SwarmRow(name, run_loadtest(load), idle)


def _icecast_swarm(space: Space, plan: BenchPlan) -> SwarmRow:
    with icecast(plan.cpu, plan.listeners + 100) as (pid, port):
        relay = OggRelay(space.ogg_url, port, "/bench.ogg")
        relay.start()
        try:
            url = f"http://127.0.0.1:{port}/bench.ogg"
            _wait_for_mount(url, relay)
            return _swarm("icecast2", url, pid, plan)
        finally:
            relay.stopped.set()


def _wait_for_mount(url: str, relay: OggRelay, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if relay.error is not None:
            raise RuntimeError(f"the Icecast source failed: {relay.error}")
        with contextlib.suppress(httpx.HTTPError), httpx.stream("GET", url, timeout=2) as resp:
            if resp.status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"Icecast never served {url}")


# -- LL-HLS: townhall vs nginx on the same bytes ------------------------------------------
def _newest_part(space: Space) -> tuple[str, bytes, bytes]:
    """(part URI, its bytes, the playlist bytes), fresh from the live edge."""
    playlist = httpx.get(space.hls_url).content
    uri = parse_playlist(playlist.decode()).part_uris[-1]
    part = httpx.get(f"{space.server.audience_url}/live/{space.id}/{uri}").content
    return uri, part, playlist


def _compare_hls(
    space: Space, tmp: Path, plan: BenchPlan, client_cpu: int, result: BenchResult
) -> None:
    root = tmp / "www"
    live = root / "live" / space.id
    live.mkdir(parents=True)
    uri, part, playlist = _newest_part(space)
    (live / uri).write_bytes(part)
    (live / "index.m3u8").write_bytes(playlist)
    townhall_base = f"{space.server.audience_url}/live/{space.id}"
    with nginx(root, tmp, plan.cpu) as (_, port):
        nginx_base = f"http://127.0.0.1:{port}/live/{space.id}"
        for _ in range(plan.wrk_rounds):
            with moved(space.server.pid, client_cpu):  # nginx alone on the measured core
                _wrk(result, "nginx part", f"{nginx_base}/{uri}", plan, client_cpu)
                _wrk(result, "nginx playlist", f"{nginx_base}/index.m3u8", plan, client_cpu)
            # Parts leave townhall's window after a few seconds: take the newest each time.
            newest = f"{townhall_base}/{_newest_part(space)[0]}"
            _wrk(result, "townhall part", newest, plan, client_cpu)
            _wrk(result, "townhall playlist", f"{townhall_base}/index.m3u8", plan, client_cpu)
    for name, samples in result.wrk_samples.items():
        result.wrk_rps[name] = statistics.median(samples)


def _wrk(result: BenchResult, name: str, url: str, plan: BenchPlan, cpu: int) -> None:
    measured = wrk(url, cpu, plan.wrk_connections, plan.wrk_seconds)
    result.wrk_samples.setdefault(name, []).append(measured.requests_per_s)
    result.wrk_non_2xx[name] = result.wrk_non_2xx.get(name, 0) + measured.non_2xx
