"""Beyond one machine, measured on loopback: the origin behind edges and caches.

    python -m benchmarks cluster [--steps 1000,5000,10000,20000] [--window 12]

A real three-server NATS JetStream cluster, ``townhall serve --nats`` (the origin, with a
440 Hz tone bot on stage), two ``townhall edge`` processes trusting the caches'
X-Forwarded-For, Varnish in front of edge A and nginx in front of edge B (the
configurations in deploy/, as shipped). Three phases, all in one run:

1. **Offload.** The origin with no audience (the reference), then crowds of growing size
   (``townhall loadtest``: Ogg streams and LL-HLS players, half through each cache): the
   origin's CPU, the bytes it publishes, the NATS servers' CPU and the LL-HLS requests
   the caches send to the edges should stay flat while the audience grows; the edges and
   caches carry the growth. CPU is the median of one-second samples over the window.
2. **Cost per listener.** The same Ogg crowd on edge A and on the origin's own audience
   port (the single-node figure), alternating, in rounds: the audience workers' CPU over
   their idle CPU, per 1,000 listeners, medians and their ratio.
3. **Restart.** Edge B killed with SIGKILL and started again on its port: the time from
   its start until it answers a playlist with parts, and whether the part it names is
   byte for byte its sibling's.

Every process it starts is stopped by its pid on the way out; each crowd ends by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from benchmarks.harness.caches import CACHE_NOFILE, Cache, nginx_cache, varnish
from benchmarks.harness.nats import Edge, NatsCluster, edges, nats_cluster
from benchmarks.harness.processes import process_table, stop
from benchmarks.harness.server import Space, on_air, townhall_command
from townhall.capacity import PlanInput, edge_hls_requests

_PART = re.compile(r'URI="p(\d+)\.(\d+)\.m4s"')
# ``townhall loadtest`` imports, spawns its workers and waits START_DELAY_S (3 s) before
# the first arrival; the window opens this long after the last arrival, once the
# crowd's joins and first fetches are over.
_LAUNCH_S = 4.5
_SETTLE_S = 3.0
_SAMPLE_S = 1.0
# Longer than an edge's longest blocking hold (6 s).
_QUIET_S = 8.0
# "Flat": the origin's CPU within 25 % (or 2 points of a core, what its idle CPU wanders
# by on a shared machine) of its CPU with no audience; its publishing within 10 % (one
# 0.5 s part message is a few % of a window).
FLAT_CPU_SHARE = 0.25
FLAT_CPU_POINTS = 2.0
FLAT_BYTES_SHARE = 0.10
# The caches' requests to the edges may not grow with the audience either.
FLAT_REQUESTS_SHARE = 0.25
RESTART_TIMEOUT_S = 60.0
THREADS_TIMEOUT_S = 120.0
OGG_RATE_S = 6.0
VARNISH_POOLS = 2
VARNISH_DEFAULT_MAX_THREADS = 5_000
VARNISH_SPARE_THREADS = 200
# Descriptors a cache keeps for itself and its LL-HLS connections to the edge.
CACHE_FD_RESERVE = 3_000
# Connections waiting to be accepted: a crowd joining at 1,000 a second outruns 1,024.
VARNISH_LISTEN_DEPTH = 8_192


@dataclass
class OffloadStep:
    listeners: int
    ogg: int
    hls: int
    origin_cpu_percent: float
    origin_publish_bytes_s: float
    nats_cpu_percent: float
    edge_requests_s: float
    edges_cpu_percent: float
    caches_cpu_percent: float
    crowd_cpu_percent: float
    with_media: int = 0
    failed: int = 0
    steady_lateness_p99_s: float | None = None
    # Per crowd: via (cache), kind, listeners, with_media, failed, failures by reason.
    crowds: list[dict[str, object]] = field(default_factory=list)
    ogg_direct: int = 0  # Ogg streams beyond what the caches' descriptors allow


@dataclass
class CostRow:
    where: str
    listeners: int
    cpu_percent: float  # over idle

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_percent / max(1, self.listeners) * 1000


@dataclass
class Verdict:
    what: str
    figure: str
    target: str
    ok: bool

    def line(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        return f"  {verdict}  {self.what}: {self.figure} (target: {self.target})"


@dataclass
class ClusterResult:
    offload: list[OffloadStep] = field(default_factory=list)
    cost: list[CostRow] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    restart_same_part: list[bool] = field(default_factory=list)
    part_bytes: int = 0
    playlist_bytes: int = 0
    ogg_bits_per_s: float = 0.0
    load_average: list[float] = field(default_factory=list)  # 1-min, at start and end
    seconds: float = 0.0
    model_edge_requests_s: float = 0.0

    def references(self) -> list[OffloadStep]:
        """The windows with no audience: before the crowds and after them."""
        return [s for s in self.offload if s.listeners == 0]

    def reference(self) -> tuple[float, float] | None:
        """(origin CPU, origin bytes out a second) with no audience: the mean of the
        windows before and after the crowds, so that a machine whose load drifts during
        the run does not make the first crowd look cheap or the last one dear."""
        refs = self.references()
        if not refs:
            return None
        return (
            statistics.fmean(s.origin_cpu_percent for s in refs),
            statistics.fmean(s.origin_publish_bytes_s for s in refs),
        )

    def crowds(self) -> list[OffloadStep]:
        return [s for s in self.offload if s.listeners > 0]

    def cost_median(self, where: str) -> float | None:
        rows = [r.cpu_per_1000 for r in self.cost if r.where == where]
        return statistics.median(rows) if rows else None

    def verdicts(self) -> list[Verdict]:
        out: list[Verdict] = []
        ref, crowds = self.reference(), self.crowds()
        if ref is not None and crowds:
            ref_cpu, ref_b = ref
            alone = ", ".join(f"{s.origin_cpu_percent:.1f}" for s in self.references())
            worst = max(crowds, key=lambda s: s.origin_cpu_percent)
            cpu_bound = max(ref_cpu * (1 + FLAT_CPU_SHARE), ref_cpu + FLAT_CPU_POINTS)
            out.append(
                Verdict(
                    "origin CPU flat as the audience grows",
                    f"{ref_cpu:.1f}% with no audience ({alone}), at most "
                    f"{worst.origin_cpu_percent:.1f}% (at {worst.listeners:,})",
                    f"<= {cpu_bound:.1f}%",
                    all(s.origin_cpu_percent <= cpu_bound for s in crowds),
                )
            )
            worst_b = max(crowds, key=lambda s: abs(s.origin_publish_bytes_s - ref_b))
            drift = _share(worst_b.origin_publish_bytes_s, ref_b)
            out.append(
                Verdict(
                    "origin bytes out flat as the audience grows",
                    f"{ref_b:,.0f} B/s with no audience, "
                    f"{worst_b.origin_publish_bytes_s:,.0f} B/s at {worst_b.listeners:,} "
                    f"({drift:+.0%})",
                    f"within {FLAT_BYTES_SHARE:.0%}",
                    abs(drift) <= FLAT_BYTES_SHARE,
                )
            )
        if len(crowds) >= 2:
            first = crowds[0]
            worst_r = max(crowds, key=lambda s: s.edge_requests_s)
            grow = _share(worst_r.edge_requests_s, first.edge_requests_s)
            out.append(
                Verdict(
                    "cache->edge LL-HLS requests flat as the audience grows",
                    f"{first.edge_requests_s:.1f}/s at {first.listeners:,}, at most "
                    f"{worst_r.edge_requests_s:.1f}/s (at {worst_r.listeners:,}); "
                    f"the model says {self.model_edge_requests_s:.0f}/s",
                    f"within +{FLAT_REQUESTS_SHARE:.0%} of the smallest crowd's",
                    grow <= FLAT_REQUESTS_SHARE,
                )
            )
        if crowds:
            heard = sum(s.with_media for s in crowds)
            total = sum(s.listeners for s in crowds)
            out.append(
                Verdict(
                    "every listener (Ogg and LL-HLS, through the caches) got audio",
                    f"{heard:,}/{total:,}, {sum(s.failed for s in crowds)} failed",
                    "all",
                    heard == total and all(s.failed == 0 for s in crowds),
                )
            )
        if self.restart_s:
            med = statistics.median(self.restart_s)
            out.append(
                Verdict(
                    "a restarted edge serves again, numbered as its sibling",
                    f"{med:.2f} s median (of {len(self.restart_s)}: "
                    f"{', '.join(f'{s:.2f}' for s in self.restart_s)}); same part bytes "
                    f"{sum(self.restart_same_part)}/{len(self.restart_same_part)}",
                    "serves, same part bytes every time (no time bound is set)",
                    all(self.restart_same_part) and len(self.restart_same_part) > 0,
                )
            )
        return out

    def table(self) -> str:
        out = [
            "Offload: crowds through Varnish (edge A) and nginx (edge B); ogg and hls via the "
            "caches, direct: Ogg beyond a cache's descriptors, to its edge; CPU % of one core, "
            "medians of 1 s samples"
        ]
        out.append(
            f"  {'listeners':>9} {'ogg':>6} {'direct':>6} {'hls':>6} {'origin CPU':>10} "
            f"{'origin out B/s':>14} "
            f"{'NATS CPU':>8} {'cache->edge req/s':>17} {'edges CPU':>9} {'caches CPU':>10} "
            f"{'crowd CPU':>9} {'with audio':>10} {'failed':>6} {'late p99 s':>10}"
        )
        for s in self.offload:
            late = "-" if s.steady_lateness_p99_s is None else f"{s.steady_lateness_p99_s:.2f}"
            out.append(
                f"  {s.listeners:>9,} {s.ogg:>6,} {s.ogg_direct:>6,} {s.hls:>6,} "
                f"{s.origin_cpu_percent:>10.1f} "
                f"{s.origin_publish_bytes_s:>14,.0f} {s.nats_cpu_percent:>8.1f} "
                f"{s.edge_requests_s:>17.1f} {s.edges_cpu_percent:>9.1f} "
                f"{s.caches_cpu_percent:>10.1f} {s.crowd_cpu_percent:>9.1f} "
                f"{s.with_media:>10,} {s.failed:>6} {late:>10}"
            )
        for s in self.offload:
            for c in s.crowds:
                if c.get("failed"):
                    out.append(
                        f"  at {s.listeners:,}: {c['failed']} of {c['listeners']:,} {c['kind']} "
                        f"via {c['via']} failed: {c.get('failures')}"
                    )
        crowds = self.crowds()
        if len(crowds) >= 2:
            first, last = crowds[0], crowds[-1]
            grow = last.listeners / max(1, first.listeners)
            cpu = _ratio(last.origin_cpu_percent, first.origin_cpu_percent)
            reqs = _ratio(last.edge_requests_s, first.edge_requests_s)
            edges = _ratio(last.edges_cpu_percent, first.edges_cpu_percent)
            out.append(
                f"  audience x{grow:.0f}: origin CPU x{cpu}, cache->edge requests x{reqs}, "
                f"edges CPU x{edges}"
            )
        out.append(
            "Cost per listener: the same Ogg crowd on edge A and on the single node's audience "
            "port (audience workers' CPU over idle)"
        )
        for row in self.cost:
            out.append(
                f"  {row.where:<12} {row.listeners:>7,} listeners  {row.cpu_percent:6.1f}% CPU  "
                f"{row.cpu_per_1000:5.2f}% per 1,000"
            )
        edge, single = self.cost_median("edge"), self.cost_median("single node")
        if edge is not None and single is not None:
            out.append(
                f"  medians: edge {edge:.2f}%, single node {single:.2f}% per 1,000 listeners; "
                f"edge/single per listener: {_ratio(edge, single)}"
            )
        if self.part_bytes:
            out.append(
                f"Program: a part is {self.part_bytes:,} bytes, a playlist "
                f"{self.playlist_bytes:,}; the Ogg stream {self.ogg_bits_per_s / 1000:.1f} kbit/s"
            )
        out.append("Verdicts")
        out += [v.line() for v in self.verdicts()]
        if self.load_average:
            out.append(
                "Machine: load average (1 min) "
                + " -> ".join(f"{x:.2f}" for x in self.load_average)
                + f", {os.cpu_count()} cores; {self.seconds:.0f} s"
            )
        return "\n".join(out)

    def to_json(self) -> dict[str, object]:
        body = asdict(self)
        body["verdicts"] = [asdict(v) for v in self.verdicts()]
        return body


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def _share(value: float, reference: float) -> float:
    """How far ``value`` is above ``reference``, as a share of it."""
    return value / reference - 1.0 if reference > 0 else (0.0 if value == 0 else float("inf"))


# -- measuring ------------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


@dataclass
class Window:
    """What one measuring window saw: each group's CPU samples and each counter's rate."""

    cpu: dict[str, list[float]]
    rates: dict[str, float]

    def median_cpu(self, name: str) -> float:
        return statistics.median(self.cpu[name]) if self.cpu[name] else 0.0


def measure(
    groups: dict[str, Sequence[int]],
    seconds: float,
    counters: dict[str, Callable[[], float]] | None = None,
    every_s: float = _SAMPLE_S,
) -> Window:
    """CPU of each group of processes (with their children), sampled every ``every_s``
    over the same ``seconds`` (100 = one core), and the rate of each counter: the slope
    of a line through its readings, so that a counter growing in steps (one message per
    part) is not read a step high or low at the window's ends."""
    counters = counters or {}
    procs = {name: [p for pid in pids for p in tree(pid)] for name, pids in groups.items()}
    samples: dict[str, list[float]] = {name: [] for name in groups}
    readings: dict[str, list[tuple[float, float]]] = {name: [] for name in counters}

    def read() -> None:
        for name, counter in counters.items():
            readings[name].append((time.monotonic(), counter()))

    read()
    last = {p.pid: _cpu_s(p) for ps in procs.values() for p in ps}
    t_last = time.monotonic()
    end = t_last + seconds
    while time.monotonic() + every_s / 2 < end:
        time.sleep(every_s)
        now = {p.pid: _cpu_s(p) for ps in procs.values() for p in ps}
        t_now = time.monotonic()
        for name, ps in procs.items():
            used = sum(now[p.pid] - last[p.pid] for p in ps)
            samples[name].append(100.0 * used / (t_now - t_last))
        last, t_last = now, t_now
        read()
    return Window(samples, {name: slope(points) for name, points in readings.items()})


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares rate of change of (time, value) readings."""
    if len(points) < 2:
        return 0.0
    ts, vs = zip(*points, strict=True)
    if max(ts) == min(ts):
        return 0.0
    return float(statistics.linear_regression(ts, vs).slope)


def median_cpu(groups: dict[str, Sequence[int]], seconds: float) -> dict[str, float]:
    window = measure(groups, seconds)
    return {name: window.median_cpu(name) for name in groups}


def _cpu_s(proc: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return float(t.user + t.system)
    return 0.0


def published_bytes(cluster: NatsCluster) -> int:
    """Bytes the origin's NATS connection has sent (its publishes), on whichever server."""
    total = 0
    for node in cluster.nodes:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            url = f"http://127.0.0.1:{node.monitor_port}/connz"
            for conn in httpx.get(url, timeout=2).json().get("connections") or []:
                if conn.get("name") == "townhall-origin":
                    total += int(conn.get("in_bytes", 0))
    return total


def audience_pids(space: Space) -> list[int]:
    """The single node's audience worker processes (its own audience port)."""
    table = process_table(space.server.control_url, timeout_s=5.0) or []
    return [p.pid for p in table if p.role == "audience"]


def edge_worker_pids(edge: Edge) -> list[int]:
    """An edge's audience workers: the children of its process."""
    with contextlib.suppress(psutil.Error):
        return [p.pid for p in psutil.Process(edge.pid).children(recursive=True)]
    return []


@dataclass
class Crowd:
    via: str  # the cache (or server) it goes through
    kind: str  # "ogg" or "hls"
    url: str
    listeners: int
    proc: subprocess.Popen[bytes]
    report: Path


@contextlib.contextmanager
def crowds(
    targets: Sequence[tuple[str, str, str, int]], over_s: float, duration_s: float, work: Path
) -> Iterator[list[Crowd]]:
    """One ``townhall loadtest`` per (via, kind, url, listeners), all started at once; each
    ends by itself at ``duration_s``. On exit every one of them and its workers is
    stopped by pid."""
    started: list[Crowd] = []
    try:
        for via, kind, url, n in targets:
            if n <= 0:
                continue
            report = work / f"crowd-{kind}-{n}-{time.monotonic_ns()}.json"
            cmd = townhall_command(
                "loadtest", url, "--listeners", str(n), "--mix", kind, "--arrival", "ramp",
                "--over", f"{over_s:g}", "--duration", f"{duration_s:g}", "--json", str(report),
            )  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            started.append(Crowd(via, kind, url, n, proc, report))
        yield started
        deadline = time.monotonic() + duration_s + 60
        for c in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for c in started:
            stop_tree(c.proc)


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``proc`` and then whichever of its children outlived it, each by its pid."""
    children = []
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(proc.pid).children(recursive=True)
    stop(proc)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def reasons(failures: dict[str, int]) -> dict[str, int]:
    """Failures by reason, the listener's own URL (its session id) left out."""
    out: dict[str, int] = {}
    for reason, count in failures.items():
        key = re.sub(r"GET \S*?/index\.m3u8[^\s:]*", "GET playlist", reason)
        key = re.sub(r"GET \S*?\.m4s[^\s:]*", "GET part", key)
        key = re.sub(r"GET \S*?\.ogg[^\s:]*", "GET ogg", key)
        out[key] = out.get(key, 0) + count
    return out


def crowd_results(
    started: Sequence[Crowd],
) -> tuple[int, int, float | None, list[dict[str, object]]]:
    """(listeners with audio, failed, worst steady lateness p99, a row per crowd) over the
    crowds' reports; a crowd without a report counts all its listeners failed."""
    heard, failed, late, rows = 0, 0, [], []
    for c in started:
        row: dict[str, object] = {"via": c.via, "kind": c.kind, "listeners": c.listeners}
        if c.report.exists():
            got = json.loads(c.report.read_text())["results"]["all"]
            row |= {k: got.get(k) for k in ("with_media", "failed")}
            row["failures"] = reasons(got.get("failures") or {})
            row["steady_lateness_p99_s"] = got.get("steady_lateness_p99_s")
        else:
            row |= {"with_media": 0, "failed": c.listeners, "failures": {"no report": 1}}
        rows.append(row)
        heard += int(row.get("with_media") or 0)  # type: ignore[call-overload]
        failed += int(row.get("failed") or 0)  # type: ignore[call-overload]
        if row.get("steady_lateness_p99_s") is not None:
            late.append(float(row["steady_lateness_p99_s"]))  # type: ignore[arg-type]
    return heard, failed, max(late) if late else None, rows


# -- the phases -----------------------------------------------------------------------


@dataclass
class Rig:
    cluster: NatsCluster
    space: Space
    edges: list[Edge]
    caches: list[Cache]
    work: Path


def ramp_s(listeners: int) -> float:
    """Arrivals spread at 1,000 a second through the caches (a join storm is not what
    is measured here)."""
    return max(1.0, listeners / 1_000)


def split(per_cache: int, hls_share: float) -> tuple[int, int, int]:
    """One cache's share of a crowd: (LL-HLS players, Ogg streams through the cache, Ogg
    streams straight to its edge). A cache holds two descriptors per stream it pipes or
    proxies, under the one limit of its process: the streams beyond what that allows go
    to the edge directly, as a layer-4 balancer would send them."""
    hls = round(per_cache * hls_share)
    ogg = per_cache - hls
    via = max(0, min(ogg, (cache_nofile() - CACHE_FD_RESERVE - hls) // 2))
    return hls, via, ogg - via


def cache_nofile() -> int:
    return min(CACHE_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def offload_step(rig: Rig, listeners: int, hls_share: float, window_s: float) -> OffloadStep:
    per_cache = listeners // len(rig.caches)
    hls, ogg, direct = split(per_cache, hls_share)
    targets = []
    for cache, edge in zip(rig.caches, rig.edges, strict=True):
        url = f"{cache.url}/live/{rig.space.id}.ogg"
        targets += [(cache.name, "ogg", url, ogg), (cache.name, "hls", url, hls)]
        targets.append(
            (f"direct to {edge.port}", "ogg", f"{edge.url}/live/{rig.space.id}.ogg", direct)
        )
    over = ramp_s(per_cache * len(rig.caches))
    duration = over + _SETTLE_S + window_s + 2.0
    with crowds(targets, over, duration, rig.work) as started:
        # With no crowd, the previous crowd's end settles first: its last blocking
        # requests, its streams closing.
        time.sleep(_LAUNCH_S + over + _SETTLE_S if started else _QUIET_S)
        window = measure(
            {
                "origin": [rig.space.server.pid],
                "nats": [n.pid for n in rig.cluster.nodes],
                "edges": [e.pid for e in rig.edges],
                "caches": [c.proc.pid for c in rig.caches],
                "crowd": [c.proc.pid for c in started],
            },
            window_s,
            {
                "published": lambda: published_bytes(rig.cluster),
                "requests": lambda: sum(c.origin_requests() for c in rig.caches),
            },
        )
        step = OffloadStep(
            listeners=(ogg + direct + hls) * len(rig.caches),
            ogg=ogg * len(rig.caches),
            hls=hls * len(rig.caches),
            origin_cpu_percent=window.median_cpu("origin"),
            origin_publish_bytes_s=window.rates["published"],
            nats_cpu_percent=window.median_cpu("nats"),
            edge_requests_s=window.rates["requests"],
            edges_cpu_percent=window.median_cpu("edges"),
            caches_cpu_percent=window.median_cpu("caches"),
            crowd_cpu_percent=window.median_cpu("crowd"),
            ogg_direct=direct * len(rig.caches),
        )
    heard, failed, late, rows = crowd_results(started)
    step.with_media, step.failed, step.steady_lateness_p99_s, step.crowds = (
        heard,
        failed,
        late,
        rows,
    )
    return step


def cost_rows(rig: Rig, listeners: int, window_s: float, rounds: int) -> list[CostRow]:
    """The same Ogg crowd on edge A and on the origin's own audience port, alternating;
    each measured as its audience workers' CPU over their idle CPU just before."""
    edge = rig.edges[0]
    targets = [
        ("edge", f"{edge.url}/live/{rig.space.id}.ogg", lambda: edge_worker_pids(edge)),
        ("single node", rig.space.ogg_url, lambda: audience_pids(rig.space)),
    ]
    over = ramp_s(listeners)
    duration = over + _SETTLE_S + window_s + 2.0
    rows = []
    for _ in range(rounds):
        for where, url, pids in targets:
            idle = median_cpu({where: pids()}, 4.0)[where]
            with crowds([(where, "ogg", url, listeners)], over, duration, rig.work):
                time.sleep(_LAUNCH_S + over + _SETTLE_S)
                busy = median_cpu({where: pids()}, window_s)[where]
            rows.append(CostRow(where, listeners, max(0.0, busy - idle)))
            print(f"  cost: {rows[-1]}", flush=True)
    return rows


def restart_once(rig: Rig) -> tuple[float, bool]:
    """Kill edge B (SIGKILL) and start it again on its port, behind its cache: seconds
    from its start until it answers a playlist with parts; its part against edge A's."""
    victim, sibling = rig.edges[1], rig.edges[0]
    workers = [psutil.Process(pid) for pid in edge_worker_pids(victim)]
    victim.kill9()
    # Its workers see their feed close and end; until they have, they hold the port.
    psutil.wait_procs(workers, timeout=10)
    for w in workers:
        with contextlib.suppress(psutil.Error):
            w.kill()
    started = time.monotonic()
    fresh = Edge(rig.cluster.urls, victim.port, args=victim.args)
    rig.edges[1] = fresh
    fresh.start()
    deadline = started + RESTART_TIMEOUT_S
    text = ""
    while not _PART.search(text):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the restarted edge served no playlist in {RESTART_TIMEOUT_S} s")
        with contextlib.suppress(httpx.HTTPError):
            resp = httpx.get(f"{fresh.url}/live/{rig.space.id}/index.m3u8", timeout=5)
            text = resp.text if resp.status_code == 200 else ""
        if not _PART.search(text):
            time.sleep(0.02)
    took = time.monotonic() - started
    msn, index = (int(x) for x in _PART.findall(text)[-1])
    part = f"/live/{rig.space.id}/p{msn}.{index}.m4s"
    ours = httpx.get(fresh.url + part, timeout=10)
    theirs = httpx.get(sibling.url + part, timeout=10)
    same = ours.status_code == theirs.status_code == 200 and ours.content == theirs.content
    return took, same


def ogg_bits_per_s(url: str, seconds: float = OGG_RATE_S) -> float:
    """The Ogg stream's rate on the wire: the bytes of one listener's stream after its
    first second (the head and the catch-up burst), over the time they took."""
    got, t0 = 0, 0.0
    with httpx.stream("GET", url, timeout=10) as resp:
        start = time.monotonic()
        for chunk in resp.iter_bytes():
            now = time.monotonic()
            if now - start >= 1.0:
                if not t0:
                    t0 = now
                else:
                    got += len(chunk)
            if now - start >= 1.0 + seconds:
                break
    return 8.0 * got / max(1e-3, time.monotonic() - t0) if t0 else 0.0


def program_sizes(rig: Rig) -> tuple[int, int]:
    """(bytes of the newest part, bytes of the playlist) on edge A."""
    text = httpx.get(f"{rig.edges[0].url}/live/{rig.space.id}/index.m3u8", timeout=10).text
    found = _PART.findall(text)
    if not found:
        return 0, len(text.encode())
    msn, index = found[-1]
    part = httpx.get(f"{rig.edges[0].url}/live/{rig.space.id}/p{msn}.{index}.m4s", timeout=10)
    return len(part.content), len(text.encode())


@dataclass(frozen=True)
class Options:
    steps: Sequence[int]
    window_s: float = 12.0
    hls_share: float = 0.1
    cost_listeners: int = 5_000
    cost_rounds: int = 3
    restarts: int = 3


def run(o: Options, work: Path) -> ClusterResult:
    began = time.monotonic()
    result = ClusterResult(load_average=[os.getloadavg()[0]])
    result.model_edge_requests_s = edge_hls_requests(PlanInput(listeners=0, cache_nodes=2))
    # The caches connect from 127.0.0.1: the edges count and cap the listeners they name.
    edge_args = ["--trusted-proxies", "127.0.0.1"]
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(nats_cluster(3))
        space = stack.enter_context(on_air(server_args=["--nats", cluster.urls]))
        started = stack.enter_context(edges(cluster.urls, 2, args=edge_args))
        caches = [
            stack.enter_context(varnish(started[0].port, varnish_threads(o))),
            stack.enter_context(nginx_cache(started[1].port)),
        ]
        rig = Rig(cluster, space, started, caches, work)
        waited = wait_for_threads(caches[0], o)
        print(f"  Varnish started its worker threads in {waited:.0f} s", flush=True)
        for n in [0, *o.steps, 0]:
            step = offload_step(rig, n, o.hls_share, o.window_s)
            result.offload.append(step)
            print(f"  offload {n:,}: {step}", flush=True)
        result.part_bytes, result.playlist_bytes = program_sizes(rig)
        with contextlib.suppress(httpx.HTTPError):
            result.ogg_bits_per_s = ogg_bits_per_s(f"{rig.edges[0].url}/live/{space.id}.ogg")
        if o.cost_listeners > 0:
            result.cost = cost_rows(rig, o.cost_listeners, o.window_s, o.cost_rounds)
        for _ in range(o.restarts):
            took, same = restart_once(rig)
            result.restart_s.append(took)
            result.restart_same_part.append(same)
            print(f"  restart: {took:.2f} s, same part: {same}", flush=True)
    result.load_average.append(os.getloadavg()[0])
    result.seconds = time.monotonic() - began
    return result


def threads_per_pool(o: Options) -> int:
    _, piped, _ = split(max(o.steps, default=0) // 2, o.hls_share)
    return math.ceil(piped / VARNISH_POOLS) + VARNISH_SPARE_THREADS


def varnish_threads(o: Options) -> list[str]:
    """Varnish pipes each Ogg stream on a worker thread of its own: its two pools start
    with threads enough for the largest crowd's share (threads made on demand arrive
    too slowly for a crowd joining at once, and the waiting listeners time out)."""
    per_pool = threads_per_pool(o)
    return [
        f"thread_pools={VARNISH_POOLS}",
        f"thread_pool_max={max(VARNISH_DEFAULT_MAX_THREADS, per_pool)}",
        f"thread_pool_min={per_pool}",
        f"listen_depth={VARNISH_LISTEN_DEPTH}",
    ]


def wait_for_threads(cache: Cache, o: Options, timeout_s: float = THREADS_TIMEOUT_S) -> float:
    """Until Varnish has started the worker threads its crowd needs (it makes them a few
    at a time; a crowd arriving before they exist is dropped): seconds waited."""
    want = VARNISH_POOLS * threads_per_pool(o)
    began = time.monotonic()
    while cache.varnish_counter("MAIN.threads") < want:
        if time.monotonic() - began > timeout_s:
            break
        time.sleep(1.0)
    return time.monotonic() - began


def expected_seconds(o: Options) -> float:
    """About how long a run takes: start-up, each crowd's launch, ramp, settle, window
    and teardown, the cost rounds and the restarts."""
    per_step = sum(_LAUNCH_S + ramp_s(n) + _SETTLE_S + o.window_s + 8.0 for n in o.steps)
    reference = 2 * (_QUIET_S + o.window_s + 1.0)
    per_cost = 4.0 + _LAUNCH_S + ramp_s(o.cost_listeners) + _SETTLE_S + o.window_s + 6.0
    return 30.0 + reference + per_step + 2 * o.cost_rounds * per_cost + 15.0 * o.restarts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks cluster", description=__doc__.split("\n")[0]
    )
    p.add_argument("--steps", default="1000,5000,10000,20000", help="crowd sizes (both caches)")
    p.add_argument("--window", type=float, default=12.0, help="seconds measured per crowd")
    p.add_argument("--hls-share", type=float, default=0.1, help="share of LL-HLS players")
    p.add_argument("--cost-listeners", type=int, default=5000, help="Ogg crowd of phase 2")
    p.add_argument("--cost-rounds", type=int, default=3, help="edge/single-node alternations")
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    options = Options(
        steps=[int(s) for s in args.steps.split(",") if s.strip()],
        window_s=args.window,
        hls_share=args.hls_share,
        cost_listeners=args.cost_listeners,
        cost_rounds=args.cost_rounds,
        restarts=args.restarts,
    )
    if not 0.0 <= options.hls_share <= 1.0 or options.window_s < 2 * _SAMPLE_S:
        p.error("--hls-share is between 0 and 1, and --window at least 2 s")
    print(f"cluster benchmark: about {expected_seconds(options) / 60:.1f} min", flush=True)
    with tempfile.TemporaryDirectory(prefix="townhall-cluster-bench-") as tmp:
        result = run(options, Path(tmp))
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 0 if all(v.ok for v in result.verdicts()) else 1
