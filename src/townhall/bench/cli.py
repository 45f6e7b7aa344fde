"""`townhall bench`: townhall measured against the real peers it replaces."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("bench", help="benchmark townhall against Icecast2 and nginx")
    bsub = s.add_subparsers()
    f = bsub.add_parser("fanout", help="Ogg listeners vs Icecast2; LL-HLS req/s vs nginx")
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
    fl = bsub.add_parser("flash", help="issue 4's flash crowd: listeners storm in, stage gaps")
    fl.add_argument("--listeners", type=int, default=20_000)
    fl.add_argument("--over", type=float, default=10.0, help="arrivals spread over (s)")
    fl.add_argument("--duration", type=float, default=20.0, help="length of the load run (s)")
    fl.add_argument("--cpu", type=int, default=0, help="the core the server is pinned to")
    fl.add_argument("--workers", type=int, default=3, help="townhall audience processes")
    fl.add_argument("--mix", choices=["ogg", "hls", "mixed"], default="ogg")
    fl.add_argument("--json", type=Path, help="also write the results here")
    fl.set_defaults(run=_flash)


def _fanout(args: argparse.Namespace) -> int:
    from townhall.bench.fanout import BenchPlan, run_fanout_bench

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
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 0


def _flash(args: argparse.Namespace) -> int:
    from townhall.bench.flash import FlashPlan, run_flash_bench
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
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 0 if result.passed else 1
