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
    f.add_argument("--cpu", type=int, default=0, help="the core every server is pinned to")
    f.add_argument("--wrk-connections", type=int, default=200)
    f.add_argument("--wrk-seconds", type=float, default=3.0)
    f.add_argument("--json", type=Path, help="also write the results here")
    f.set_defaults(run=_fanout)


def _fanout(args: argparse.Namespace) -> int:
    from townhall.bench.fanout import BenchPlan, run_fanout_bench

    plan = BenchPlan(args.listeners, args.seconds, args.cpu, args.wrk_connections, args.wrk_seconds)
    result = run_fanout_bench(plan)
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 0
