"""`townhall loadtest`: a crowd of real Ogg and LL-HLS listeners against one Space.

Its own parser: ``townhall.cli`` hands the command's arguments to ``main`` and imports
this module only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from townhall.loadtest.arrivals import Arrival
from townhall.loadtest.runner import LoadPlan, run_loadtest
from townhall.loadtest.worker import Mix

HELP = "load-test a Space with real Ogg and LL-HLS listeners"


def parser() -> argparse.ArgumentParser:
    s = argparse.ArgumentParser(prog="townhall loadtest", description=HELP)
    s.add_argument("url", help="the Space's audience URL: http://HOST:PORT/live/{space}.ogg")
    s.add_argument("--listeners", type=int, default=1000)
    s.add_argument("--arrival", choices=[a.value for a in Arrival], default="flash")
    s.add_argument(
        "--over",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="arrivals happen within this many seconds",
    )
    s.add_argument(
        "--duration",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="hard cap on the run; listeners stop at this time",
    )
    s.add_argument("--mix", choices=[m.value for m in Mix], default="ogg")
    s.add_argument("--processes", type=int, help="default: at most 15k sockets per process")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--stall-gap", type=float, default=1.5, metavar="SECONDS")
    s.add_argument("--server-pid", type=int, help="default: the process listening on the port")
    s.add_argument("--json", type=Path, help="also write the report here")
    s.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a target that is not loopback (only servers you own)",
    )
    return s


def main(argv: list[str]) -> int:
    return _run(parser().parse_args(argv))


def plan_from(args: argparse.Namespace) -> LoadPlan:
    return LoadPlan(
        url=args.url,
        listeners=args.listeners,
        arrival=Arrival(args.arrival),
        over_s=args.over,
        duration_s=args.duration,
        mix=Mix(args.mix),
        processes=args.processes,
        seed=args.seed,
        stall_gap_s=args.stall_gap,
        server_pid=args.server_pid,
        allow_remote=args.allow_remote,
    )


def _run(args: argparse.Namespace) -> int:
    try:
        report = run_loadtest(plan_from(args))
    except ValueError as exc:
        print(f"townhall loadtest: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.total.failed == 0 and not report.watchdog_fired else 1
