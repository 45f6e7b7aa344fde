"""`townhall loadtest`: a crowd of real Ogg and LL-HLS listeners against one Space.

Its own parser: ``townhall.cli`` hands the command's arguments to ``main`` and imports
this module only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from townhall.loadtest.arrivals import Arrival
from townhall.loadtest.runner import LoadPlan, run_loadtest
from townhall.loadtest.wire import parse_target
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
    w = s.add_argument_group("waiting room", "the crowd arrives before the start")
    w.add_argument(
        "--start-before-live",
        type=float,
        metavar="SECONDS",
        dest="live_after",
        help="go live this many seconds after the first arrival (needs --host-token); "
        "first audio then counts from Go live",
    )
    w.add_argument(
        "--sse-share",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="this share of the crowd are web pages: the SSE stream and a held Ogg stream "
        "while waiting (as web/waiting.js); the rest hold Ogg streams",
    )
    w.add_argument("--host-token", help="the host's token, to go live")
    w.add_argument("--control-url", help="the control API (default: the audience host, port 8000)")
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
        live_after_s=args.live_after,
        web_share=args.sse_share,
    )


def go_live_with(url: str, token: str, control_url: str | None) -> Callable[[], object]:
    """POST /start for the Space of ``url`` with the host's token."""
    target = parse_target(url)
    space = target.path.rsplit("/", 1)[-1].removesuffix(".ogg")
    control = control_url or f"http://{target.host}:8000"

    def start() -> object:
        with urllib.request.urlopen(
            urllib.request.Request(
                f"{control}/api/spaces/{space}/start",
                method="POST",
                headers={"Authorization": f"Bearer {token}"},
            ),
            timeout=30,
        ) as resp:
            return resp.status

    return start


def _run(args: argparse.Namespace) -> int:
    go_live = None
    if args.live_after is not None:
        if not args.host_token:
            print("townhall loadtest: --start-before-live needs --host-token", file=sys.stderr)
            return 2
        go_live = go_live_with(args.url, args.host_token, args.control_url)
    try:
        report = run_loadtest(plan_from(args), go_live=go_live)
    except ValueError as exc:
        print(f"townhall loadtest: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.total.failed == 0 and not report.watchdog_fired else 1
