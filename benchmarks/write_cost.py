"""Server CPU per listener write: townhall's audience worker against a bare uvloop writer.

    python -m benchmarks write-cost --listeners 15000 --rounds 2

The Ogg fan-out target is a count of writes a core can make (one per listener per
second), so this measures that cost directly, side by side in one run:

* ``townhall``: one audience worker (``--audience-workers 1``, 1 s flush interval) on
  the measured core; the main process (the stage) is moved to the other core, so the
  figure is the fan-out's alone.
* ``bare uvloop``: the least a Python server can do for the same job. An
  ``asyncio.Protocol`` under uvloop that answers any request with a response head and
  then writes one shared chunk of the same size to every connection once a second: no
  HTTP parsing, no bounds, no admission, no cohorts.

The same load generator (``townhall loadtest``, Ogg mix) drives both from the other
core. Over a window after the arrivals, the benchmark reads the measured process's CPU
time and its count of write syscalls (``syscw`` in ``/proc/PID/io``) and reports CPU
µs per write. The servers alternate, the machine being noisy; medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass

import psutil
import uvloop

from benchmarks.cpus import other_cpu, pin_threads
from benchmarks.harness.processes import free_port, serving
from benchmarks.harness.server import on_air
from townhall.loadtest import Arrival, LoadPlan, Mix, run_loadtest

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: audio/ogg\r\nCache-Control: no-store\r\n\r\n"


# -- the bare writer (run as a subprocess: python -m benchmarks.write_cost --serve ...) --------
class _Listener(asyncio.Protocol):
    def __init__(self, crowd: list[asyncio.Transport]) -> None:
        self.crowd = crowd
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.transport is not None and b"\r\n\r\n" in data:
            self.transport.write(HEAD)
            self.crowd.append(self.transport)
            self.transport = None  # one request per connection


async def serve_bare(port: int, chunk_bytes: int) -> None:
    crowd: list[asyncio.Transport] = []
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: _Listener(crowd), "127.0.0.1", port, backlog=4096)
    chunk = bytes(chunk_bytes)
    due = loop.time()
    while True:
        due += 1.0  # a fixed phase: one write per listener per second, however long a pass
        await asyncio.sleep(max(0.0, due - loop.time()))
        crowd[:] = [t for t in crowd if not t.is_closing()]
        for transport in crowd:
            transport.write(chunk)


# -- the measurement -------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    server: str
    connected: int
    writes_per_s: float
    cpu_percent: float

    @property
    def us_per_write(self) -> float:
        return self.cpu_percent * 1e4 / self.writes_per_s if self.writes_per_s else float("nan")


def _cpu_and_writes(pid: int) -> tuple[float, int]:
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    with open(f"/proc/{pid}/io") as io:
        syscw = next(int(line.split()[1]) for line in io if line.startswith("syscw:"))
    return times.user + times.system, syscw


def _measure(pid: int, after_s: float, window_s: float, out: list[tuple[float, float]]) -> None:
    time.sleep(after_s)
    cpu0, w0 = _cpu_and_writes(pid)
    time.sleep(window_s)
    cpu1, w1 = _cpu_and_writes(pid)
    out.append(((cpu1 - cpu0) / window_s * 100, (w1 - w0) / window_s))


def _swarm(name: str, url: str, pid: int, args: argparse.Namespace) -> Sample:
    settle_s = args.over + 5.0
    plan = LoadPlan(url, args.listeners, Arrival.RAMP, args.over,
                    settle_s + args.window + 3.0, Mix.OGG)  # fmt: skip
    window: list[tuple[float, float]] = []
    sampler = threading.Thread(target=_measure, args=(pid, settle_s, args.window, window))
    sampler.start()
    report = run_loadtest(plan, progress=None)
    sampler.join()
    cpu, writes = window[0]
    return Sample(name, report.rows()["all"]["connected"], writes, cpu)


def townhall_round(args: argparse.Namespace, cpu: int, client_cpu: int) -> Sample:
    server_args = ("--audience-workers", "1", "--stream-flush-interval-s", "1.0",
                   "--max-listeners", str(args.listeners + 1000))  # fmt: skip
    with on_air(cpu=cpu, server_args=server_args) as space:
        (worker,) = [c for c in psutil.Process(space.server.pid).children()
                     if "spawn_main" in " ".join(c.cmdline())]  # fmt: skip
        pin_threads([space.server.pid], {client_cpu})  # the stage leaves the core
        return _swarm("townhall", space.ogg_url, worker.pid, args)


def bare_round(args: argparse.Namespace, cpu: int) -> Sample:
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.write_cost",
               "--serve", str(port), "--chunk-bytes", str(args.chunk_bytes)]  # fmt: skip
    with serving(command, port, cpu) as pid:
        return _swarm("bare uvloop", f"http://127.0.0.1:{port}/bench.ogg", pid, args)


def table(samples: list[Sample]) -> str:
    lines = [f"{'server':<12} {'connected':>9} {'writes/s':>9} {'CPU %':>6} {'µs/write':>9}"]
    lines += [f"{s.server:<12} {s.connected:>9} {s.writes_per_s:>9,.0f} {s.cpu_percent:>6.1f}"
              f" {s.us_per_write:>9.1f}" for s in samples]  # fmt: skip
    medians = {}
    for name in ("townhall", "bare uvloop"):
        costs = [s.us_per_write for s in samples if s.server == name]
        medians[name] = statistics.median(costs)
        lines.append(f"median {name}: {medians[name]:.1f} µs per write ({len(costs)} rounds)")
    ratio = medians["townhall"] / medians["bare uvloop"]
    lines.append(f"townhall / bare uvloop: {ratio:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks write-cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--listeners", type=int, default=15_000, help="at most ~18k: one process")
    parser.add_argument("--over", type=float, default=8.0, help="arrivals spread over (s)")
    parser.add_argument("--window", type=float, default=10.0, help="measured window (s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpu", type=int, default=0, help="the measured core")
    # townhall's program: 32 kbit/s Opus in Ogg pages, about 6.2 KB a second measured.
    parser.add_argument("--chunk-bytes", type=int, default=6_200)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        uvloop.run(serve_bare(args.serve, args.chunk_bytes))
        return 0
    client_cpu = other_cpu(args.cpu)
    os.sched_setaffinity(0, {client_cpu})  # the load generator and the stage live here
    samples: list[Sample] = []
    for _ in range(args.rounds):
        samples.append(townhall_round(args, args.cpu, client_cpu))
        samples.append(bare_round(args, args.cpu))
        print(table(samples), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
