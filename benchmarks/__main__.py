"""townhall measured, and measured against the real servers it replaces.

Run from the repository root as ``python -m benchmarks``: the benchmarks are not part of
the installed package.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

# Benchmarks with their own command line: the rest of the arguments go to their main().
FORWARDED = {
    "latency": ("benchmarks.latency", "mouth-to-ear latency of a live Space, three paths"),
    "cluster": (
        "benchmarks.cluster",
        "edges and caches over a NATS cluster: origin offload, cost per listener, restart",
    ),
    "count-reports": (
        "benchmarks.count_reports",
        "how long an edge's count reports hold its event loop",
    ),
    "write-cost": (
        "benchmarks.write_cost",
        "CPU per listener write: townhall vs a bare uvloop writer",
    ),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(metavar="BENCHMARK")
    f = sub.add_parser("fanout", help="Ogg listeners vs Icecast2; LL-HLS req/s vs nginx")
    f.add_argument("--listeners", type=int, default=5_000)
    f.add_argument("--seconds", type=float, default=20.0, help="length of each swarm")
    f.add_argument("--over", type=float, help="arrivals spread over this many seconds")
    f.add_argument("--cpu", type=int, default=0, help="the core every server is pinned to")
    f.add_argument("--wrk-connections", type=int, default=200)
    f.add_argument("--wrk-seconds", type=float, default=3.0)
    f.add_argument("--wrk-rounds", type=int, default=3, help="alternating rounds; medians")
    f.add_argument(
        "--flush-interval", type=float, default=1.0, help="townhall's Ogg write interval (s)"
    )
    f.add_argument(
        "--audience-workers", type=int, default=0, help="townhall audience processes, all on --cpu"
    )
    f.add_argument(
        "--stage-off-core",
        action="store_true",
        help="run townhall's stage (its program source) on the swarm's core, as Icecast's "
        "source is: only the fan-out processes are measured",
    )
    f.add_argument("--json", type=Path, help="also write the results here")
    f.set_defaults(run=_fanout)
    fl = sub.add_parser("flash", help="a flash crowd arrives while two speakers talk: stage gaps")
    fl.add_argument("--listeners", type=int, default=20_000)
    fl.add_argument("--over", type=float, default=10.0, help="arrivals spread over (s)")
    fl.add_argument("--duration", type=float, default=20.0, help="length of the load run (s)")
    fl.add_argument("--cpu", type=int, default=0, help="the core the server is pinned to")
    fl.add_argument("--workers", type=int, default=3, help="townhall audience processes")
    fl.add_argument("--mix", choices=["ogg", "hls", "mixed"], default="ogg")
    fl.add_argument("--json", type=Path, help="also write the results here")
    fl.set_defaults(run=_flash)
    w = sub.add_parser("waiting", help="a waiting crowd, then Go live: origin cost, start storm")
    w.add_argument("--listeners", type=int, default=20_000)
    w.add_argument("--over", type=float, default=10.0, help="arrivals spread over (s)")
    w.add_argument("--wait", type=float, default=60.0, help="waiting before Go live (s)")
    w.add_argument("--sse-share", type=float, default=0.5, help="web pages (SSE) in the crowd")
    w.add_argument("--cpu", type=int, default=0, help="the core the server is pinned to")
    w.add_argument("--workers", type=int, default=3, help="townhall audience processes")
    w.add_argument("--json", type=Path, help="also write the results here")
    w.set_defaults(run=_waiting)
    fa = sub.add_parser("faults", help="kill -9 each process of a live Space in turn: recovery")
    fa.add_argument("--kills", type=int, default=10, help="kills of each role")
    fa.add_argument(
        "--roles", default="stage,control,recorder,audience", help="comma-separated, in order"
    )
    fa.add_argument("--ogg-listeners", type=int, default=1000)
    fa.add_argument("--hls-listeners", type=int, default=200)
    fa.add_argument("--probes", type=int, default=4, help="decoding Ogg listeners measured")
    fa.add_argument("--audience-workers", type=int, default=2)
    fa.add_argument("--settle", type=float, default=3.0, help="seconds between kills")
    fa.add_argument("--recover-timeout", type=float, default=20.0, help="per kill (s)")
    fa.add_argument("--max-seconds", type=float, default=3600.0, help="bound on the whole run")
    fa.add_argument("--keep", type=Path, help="keep the run's files (logs, replay) here")
    fa.add_argument(
        "--set", action="append", default=[], metavar="PATH=VALUE", help="server setting"
    )
    fa.add_argument(
        "--recordings-tmpfs-kib",
        type=int,
        metavar="KIB",
        help="instead of kills: the recordings on a tmpfs this small (root), filled mid-Space",
    )
    fa.add_argument("--json", type=Path, help="also write the results here")
    fa.set_defaults(run=_faults)
    si = sub.add_parser("siege", help="one live Space with no attack, then under each attack")
    si.add_argument("--quick", action="store_true", help="shorter attacks, smaller counts")
    si.add_argument("--attacks", help="comma-separated (the baseline always runs first)")
    si.add_argument("--attack-seconds", type=float, help="length of each phase")
    si.add_argument("--idle-connections", type=int, help="ceiling of the idle attacks")
    si.add_argument(
        "--set", action="append", default=[], metavar="PATH=VALUE", help="server setting"
    )
    si.add_argument("--json", type=Path, help="also write the results here")
    si.set_defaults(run=_siege)
    for name, (_, help_) in FORWARDED.items():
        # Listed here for --help; main() hands their arguments over before parsing.
        sub.add_parser(name, help=help_, add_help=False)
    return p


def _fanout(args: argparse.Namespace) -> int:
    from benchmarks.fanout import BenchPlan, run_fanout_bench

    plan = BenchPlan(
        listeners=args.listeners,
        seconds=args.seconds,
        cpu=args.cpu,
        wrk_connections=args.wrk_connections,
        wrk_seconds=args.wrk_seconds,
        wrk_rounds=args.wrk_rounds,
        flush_interval_s=args.flush_interval,
        audience_workers=args.audience_workers,
        over_s=args.over,
        stage_off_core=args.stage_off_core,
    )
    result = run_fanout_bench(plan)
    _report(result, args.json)
    return 0


def _flash(args: argparse.Namespace) -> int:
    from benchmarks.flash import FlashPlan, run_flash_bench
    from townhall.loadtest import Mix

    plan = FlashPlan(
        listeners=args.listeners,
        over_s=args.over,
        duration_s=args.duration,
        cpu=args.cpu,
        audience_workers=args.workers,
        mix=Mix(args.mix),
    )
    result = run_flash_bench(plan)
    _report(result, args.json)
    return 0 if result.passed else 1


def _waiting(args: argparse.Namespace) -> int:
    from benchmarks.waiting import WaitingPlan, run_waiting_bench

    plan = WaitingPlan(
        listeners=args.listeners,
        over_s=args.over,
        wait_s=args.wait,
        sse_share=args.sse_share,
        cpu=args.cpu,
        audience_workers=args.workers,
    )
    result = run_waiting_bench(plan)
    _report(result, args.json)
    return 0 if result.passed else 1


def _faults(args: argparse.Namespace) -> int:
    from benchmarks.faults import DISK_FULL, ROLES, FaultPlan, run_fault_bench

    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    if args.recordings_tmpfs_kib is not None:
        roles = (DISK_FULL,)  # the recordings fill up once; kills would measure a paused recorder
    if unknown := [r for r in roles if r not in (*ROLES, DISK_FULL)]:
        print(f"unknown roles {unknown}; known: {', '.join(ROLES)}", file=sys.stderr)
        return 2
    plan = FaultPlan(
        kills=args.kills,
        roles=roles,
        ogg_listeners=args.ogg_listeners,
        hls_listeners=args.hls_listeners,
        probes=args.probes,
        audience_workers=args.audience_workers,
        settle_s=args.settle,
        recover_timeout_s=args.recover_timeout,
        max_seconds=args.max_seconds,
        server_args=tuple(a for s in args.set for a in ("--set", s)),
        keep_dir=args.keep,
        recordings_tmpfs_kib=args.recordings_tmpfs_kib,
    )
    # SIGTERM as Ctrl-C: the run then stops everything it started before exiting.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = run_fault_bench(plan)
    _report(report, args.json)
    return 0 if report.passed else 1


def _siege(args: argparse.Namespace) -> int:
    from benchmarks.siege import SiegePlan, parse_attacks, run_siege

    given: dict[str, object] = {"server_args": tuple(a for s in args.set for a in ("--set", s))}
    if args.attacks:
        try:
            given["attacks"] = parse_attacks(args.attacks)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.attack_seconds is not None:
        given["attack_s"] = args.attack_seconds
    if args.idle_connections is not None:
        given["idle_connections"] = args.idle_connections
    plan = SiegePlan.quick(**given) if args.quick else SiegePlan(**given)  # type: ignore[arg-type]
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = run_siege(plan)
    _report(report, args.json)
    return 0 if report.passed else 1


class Report(Protocol):
    def table(self) -> str: ...
    def to_json(self) -> Mapping[str, object]: ...


def _report(result: Report, json_path: Path | None) -> None:
    """Print the benchmark's table; also write its JSON if asked."""
    print(result.table())
    if json_path:
        json_path.write_text(json.dumps(result.to_json(), indent=2))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in FORWARDED:
        import importlib

        module, _ = FORWARDED[argv[0]]
        forwarded: Callable[[list[str]], int] = importlib.import_module(module).main
        return forwarded(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    if not hasattr(args, "run"):
        p.print_help()
        return 2
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
