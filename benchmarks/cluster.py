"""Beyond one machine, measured on loopback: the origin behind edges and caches.

    python -m benchmarks cluster [--steps 1000,5000,10000,20000] [--seconds 20]

A real three-server NATS JetStream cluster, ``townhall serve --nats`` (the origin, with a
440 Hz tone bot on stage), two ``townhall edge`` processes, Varnish in front of one and
nginx in front of the other (the configurations in deploy/, as shipped). Three phases:

1. **Offload.** LL-HLS crowds of growing size (``townhall loadtest``, half through each
   cache): the origin's CPU and the bytes it publishes, and the requests the caches send
   to the edges, should stay flat while the audience grows.
2. **Cost per listener.** The same Ogg crowd on an edge and on a single ``townhall serve``
   (its own audience port): the audience processes' CPU per 1,000 listeners, and the ratio.
3. **Restart.** An edge killed with SIGKILL and started again: the time until it answers
   a playlist, and whether the part it names is byte for byte its sibling's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from benchmarks.harness.caches import Cache, nginx_cache, varnish
from benchmarks.harness.nats import Edge, NatsCluster, edges, nats_cluster
from benchmarks.harness.processes import free_port, stop
from benchmarks.harness.server import Space, on_air, townhall_command

_PART = re.compile(r'URI="p(\d+)\.(\d+)\.m4s"')
# CPU is sampled over the middle of each crowd's run, after the arrivals.
_SETTLE_S = 4.0


@dataclass
class OffloadStep:
    listeners: int
    origin_cpu_percent: float
    origin_publish_bytes_s: float
    edge_requests_s: float
    edges_cpu_percent: float
    crowd_failed: int


@dataclass
class CostRow:
    where: str
    listeners: int
    cpu_percent: float

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_percent / max(1, self.listeners) * 1000


@dataclass
class ClusterResult:
    offload: list[OffloadStep] = field(default_factory=list)
    cost: list[CostRow] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    restart_same_part: list[bool] = field(default_factory=list)

    def table(self) -> str:
        out = ["Offload: LL-HLS crowds through Varnish (edge A) and nginx (edge B)"]
        out.append(
            f"  {'listeners':>9} {'origin CPU %':>12} {'origin publishes B/s':>21} "
            f"{'cache->edge req/s':>18} {'edges CPU %':>11} {'failed':>6}"
        )
        for s in self.offload:
            out.append(
                f"  {s.listeners:>9,} {s.origin_cpu_percent:>12.1f} "
                f"{s.origin_publish_bytes_s:>21,.0f} {s.edge_requests_s:>18.1f} "
                f"{s.edges_cpu_percent:>11.1f} {s.crowd_failed:>6}"
            )
        if len(self.offload) >= 2:
            first, last = self.offload[0], self.offload[-1]
            grow = last.listeners / max(1, first.listeners)
            cpu = _ratio(last.origin_cpu_percent, first.origin_cpu_percent)
            reqs = _ratio(last.edge_requests_s, first.edge_requests_s)
            out.append(f"  audience x{grow:.0f}: origin CPU x{cpu}, edge requests x{reqs}")
        out.append("Cost per listener: the same Ogg crowd on an edge and on a single node")
        for row in self.cost:
            out.append(
                f"  {row.where:<12} {row.listeners:>7,} listeners  {row.cpu_percent:6.1f}% CPU  "
                f"{row.cpu_per_1000:5.2f}% per 1,000"
            )
        if len(self.cost) == 2:
            edge, single = self.cost
            out.append(
                f"  edge/single per listener: {_ratio(edge.cpu_per_1000, single.cpu_per_1000)}"
            )
        if self.restart_s:
            med = statistics.median(self.restart_s)
            out.append(
                f"Restart: an edge killed and started again serves after {med:.2f} s (median of "
                f"{len(self.restart_s)}: {', '.join(f'{s:.2f}' for s in self.restart_s)}); "
                f"same part bytes as its sibling: {sum(self.restart_same_part)}/"
                f"{len(self.restart_same_part)}"
            )
        return "\n".join(out)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


# -- measuring ------------------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_percent(groups: dict[str, Sequence[int]], seconds: float) -> dict[str, float]:
    """CPU of each group of processes (and their children) over the same ``seconds``
    (100 = one core)."""
    procs = {name: [p for pid in pids for p in tree(pid)] for name, pids in groups.items()}
    before = {p.pid: _cpu_s(p) for ps in procs.values() for p in ps}
    time.sleep(seconds)
    return {
        name: 100.0 * sum(_cpu_s(p) - before[p.pid] for p in ps) / seconds
        for name, ps in procs.items()
    }


def _cpu_s(proc: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return float(t.user + t.system)
    return 0.0


def published_bytes(cluster: NatsCluster) -> int:
    """Bytes the origin's NATS connection has sent (its publishes), on whichever server."""
    total = 0
    for node in cluster.nodes:
        with contextlib.suppress(httpx.HTTPError):
            url = f"http://127.0.0.1:{node.monitor_port}/connz"
            for conn in httpx.get(url, timeout=2).json().get("connections") or []:
                if conn.get("name") == "townhall-origin":
                    total += int(conn.get("in_bytes", 0))
    return total


@contextlib.contextmanager
def crowd(url: str, listeners: int, mix: str, seconds: float, work: Path) -> Iterator[Path]:
    """``townhall loadtest`` on ``url``; yields the path its JSON report is written to."""
    out = work / f"crowd-{listeners}-{mix}-{time.monotonic_ns()}.json"
    cmd = townhall_command(
        "loadtest", url, "--listeners", str(listeners), "--mix", mix, "--arrival", "ramp",
        "--over", "3", "--duration", f"{seconds:g}", "--json", str(out),
    )  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        yield out
        proc.wait(timeout=seconds + 30)
    finally:
        stop(proc)


def failed(report: Path) -> int:
    if not report.exists():
        return -1
    return int(json.loads(report.read_text())["results"]["all"]["failed"])


# -- the phases -----------------------------------------------------------------------


@dataclass
class Rig:
    cluster: NatsCluster
    space: Space
    edges: list[Edge]
    caches: list[Cache]
    work: Path


def offload_step(rig: Rig, listeners: int, seconds: float) -> OffloadStep:
    urls = [f"{c.url}/live/{rig.space.id}.ogg" for c in rig.caches]
    half = max(1, listeners // len(urls))
    with contextlib.ExitStack() as stack:
        reports = [stack.enter_context(crowd(u, half, "hls", seconds, rig.work)) for u in urls]
        time.sleep(_SETTLE_S)
        requests0 = sum(c.origin_requests() for c in rig.caches)
        bytes0 = published_bytes(rig.cluster)
        window = max(2.0, seconds - _SETTLE_S - 3.0)
        t0 = time.monotonic()
        cpu = cpu_percent(
            {"origin": [rig.space.server.pid], "edges": [e.pid for e in rig.edges]}, window
        )
        elapsed = time.monotonic() - t0
        step = OffloadStep(
            listeners=half * len(urls),
            origin_cpu_percent=cpu["origin"],
            origin_publish_bytes_s=(published_bytes(rig.cluster) - bytes0) / elapsed,
            edge_requests_s=(sum(c.origin_requests() for c in rig.caches) - requests0) / elapsed,
            edges_cpu_percent=cpu["edges"],
            crowd_failed=0,
        )
    step.crowd_failed = sum(max(0, failed(r)) for r in reports)
    return step


def cost_rows(rig: Rig, listeners: int, seconds: float) -> list[CostRow]:
    rows = []
    targets = [
        ("edge", f"{rig.edges[0].url}/live/{rig.space.id}.ogg", rig.edges[0].pid),
        ("single node", rig.space.ogg_url, rig.space.server.pid),
    ]
    for where, url, pid in targets:
        idle = cpu_percent({where: [pid]}, 2.0)[where]
        with crowd(url, listeners, "ogg", seconds, rig.work):
            time.sleep(_SETTLE_S)
            busy = cpu_percent({where: [pid]}, max(2.0, seconds - _SETTLE_S - 3.0))[where]
        rows.append(CostRow(where, listeners, max(0.0, busy - idle)))
    return rows


def restart_once(rig: Rig) -> tuple[float, bool]:
    victim, sibling = rig.edges[1], rig.edges[0]
    victim.kill9()
    started = time.monotonic()
    fresh = Edge(rig.cluster.urls, free_port()).start()
    rig.edges[1] = fresh
    while True:
        with contextlib.suppress(httpx.HTTPError):
            resp = httpx.get(f"{fresh.url}/live/{rig.space.id}/index.m3u8", timeout=5)
            if resp.status_code == 200 and _PART.search(resp.text):
                break
        time.sleep(0.02)
    took = time.monotonic() - started
    msn, index = (int(x) for x in _PART.findall(resp.text)[-1])
    part = f"/live/{rig.space.id}/p{msn}.{index}.m4s"
    ours = httpx.get(fresh.url + part, timeout=10).content
    theirs = httpx.get(sibling.url + part, timeout=10).content
    return took, ours == theirs


def run(
    steps: Sequence[int], seconds: float, cost_listeners: int, restarts: int, work: Path
) -> ClusterResult:
    result = ClusterResult()
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(nats_cluster(3))
        space = stack.enter_context(on_air(server_args=["--nats", cluster.urls]))
        started = stack.enter_context(edges(cluster.urls, 2))
        caches = [
            stack.enter_context(varnish(started[0].port)),
            stack.enter_context(nginx_cache(started[1].port)),
        ]
        rig = Rig(cluster, space, started, caches, work)
        for n in steps:
            step = offload_step(rig, n, seconds)
            result.offload.append(step)
            print(f"  offload {n:,}: {step}", flush=True)
        if cost_listeners > 0:
            result.cost = cost_rows(rig, cost_listeners, seconds)
        for _ in range(restarts):
            took, same = restart_once(rig)
            result.restart_s.append(took)
            result.restart_same_part.append(same)
        for edge in rig.edges:
            stack.callback(edge.stop)  # the restarted ones
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks cluster", description=__doc__.split("\n")[0]
    )
    p.add_argument("--steps", default="1000,5000,10000,20000", help="LL-HLS crowd sizes")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each crowd's run")
    p.add_argument("--cost-listeners", type=int, default=5000, help="Ogg crowd of phase 2")
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="townhall-cluster-bench-") as tmp:
        result = run(steps, args.seconds, args.cost_listeners, args.restarts, Path(tmp))
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 0
