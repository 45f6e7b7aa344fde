"""The ``townhall`` command: serve, manage spaces, and the speak/listen peers."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from townhall.settings import Assign, SettingError

if TYPE_CHECKING:
    from townhall.config import ServerConfig

# Commands with their own parser, imported only when they run: the load generator (its
# worker processes, psutil) has no place in `townhall --help` or `townhall serve`.
# name -> (module with ``main(argv) -> int``, one-line help)
LAZY_COMMANDS = {
    "loadtest": ("townhall.loadtest.cli", "load-test a Space with real Ogg and LL-HLS listeners"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in LAZY_COMMANDS:
        module, _ = LAZY_COMMANDS[argv[0]]
        run_lazy: Callable[[list[str]], int] = importlib.import_module(module).main
        return run_lazy(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    result: int = args.run(args)
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="townhall", description="self-hosted live audio rooms")
    sub = p.add_subparsers()
    _serve_parser(sub)
    _space_parser(sub)
    _speak_parser(sub)
    _listen_parser(sub)
    _plan_parser(sub)
    for name, (_, help_) in LAZY_COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


# The named flags of ``townhall serve``: shorthands for ``--set PATH=VALUE``.
_SERVE_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--host", "host", "address both ports listen on"),
    ("--control-port", "control_port", "port of the control API and web pages"),
    ("--audience-port", "audience_port", "port listeners stream from"),
    ("--data-dir", "data_dir", "where the database and recordings live"),
    ("--public-control-url", "public_control_url", "control URL put in links"),
    ("--public-audience-url", "public_audience_url", "audience URL put in links"),
    ("--audience-workers", "audience_workers", "audience processes sharing the port"),
    (
        "--audience-worker-nice",
        "audience.worker_nice",
        "the audience workers' nice value (default 8: a saturated core delays chunks, "
        "never the speakers; 0 on a box shared with other busy processes, which would "
        "otherwise take the workers' CPU)",
    ),
    (
        "--stream-flush-interval-s",
        "audience.channel.fanout.flush_interval_s",
        "how often the Ogg stream is written to listeners (default 0.2; grows under load)",
    ),
    (
        "--max-listeners",
        "audience.channel.fanout.max_listeners",
        "stream listeners per process before 503",
    ),
    (
        "--nats",
        "cluster.nats_urls",
        "NATS servers, comma-separated: the program goes through JetStream (edges follow it)",
    ),
    (
        "--session-key-file",
        "cluster.session_key_file",
        "the cluster's listener-session key (hex), the same file on every node: edges "
        "check session ids and sign their counts with it (an origin without one writes "
        "its own to <data-dir>/cluster-session.key)",
    ),
)


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _server_parser(sub, "serve", "run the server (control API + web UI, and audience)", _serve)
    _server_parser(sub, "edge", "run an audience node fed by the cluster (needs --nats)", _edge)


def _server_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_: str,
    run: Callable[[argparse.Namespace], int],
) -> None:
    s = sub.add_parser(
        name,
        help=help_,
        description="Every setting has a path (see --print-config). Precedence: defaults < "
        "--config FILE < TOWNHALL_<PATH> environment variables (levels joined by __, "
        "e.g. TOWNHALL_AUDIENCE__CHANNEL__FANOUT__FLUSH_INTERVAL_S) < flags.",
    )
    s.add_argument(
        "--config", type=Path, metavar="FILE", help="a TOML file whose tables mirror the paths"
    )
    s.add_argument(
        "--set",
        action=Assign,
        metavar="PATH=VALUE",
        help="set any setting, e.g. --set room.max_participants=5000 (repeatable)",
    )
    for flag, path, text in _SERVE_FLAGS:
        s.add_argument(flag, action=Assign, path=path, metavar="VALUE", help=f"{text} [{path}]")
    s.add_argument(
        "--trusted-proxies",
        action=Assign,
        path="control.trusted_proxies",
        also=("audience.trusted_proxies",),
        metavar="LIST",
        help="proxies (addresses or CIDR networks, separated by commas) whose "
        "X-Forwarded-For names the client, on both ports; default: trust nobody "
        "[control.trusted_proxies, audience.trusted_proxies]",
    )
    s.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings as TOML and exit",
    )
    s.set_defaults(run=run, command=name)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The configuration ``townhall serve`` runs with: defaults < ``--config`` < the
    environment < flags. Raises SettingError naming a bad key or value."""
    from townhall.config import load

    return load(file=args.config, flags=args.settings or ())


def _configured(args: argparse.Namespace) -> ServerConfig | int:
    """The configuration, or the exit status when there is nothing (more) to run."""
    from townhall.config import to_toml

    try:
        config = server_config(args)
    except SettingError as e:
        print(f"townhall {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_toml(config), end="")
        return 0
    if config.cluster.session_key_file:
        from townhall.sessions import read_session_key

        try:  # said now, not as a traceback from a child process
            read_session_key(Path(config.cluster.session_key_file))
        except ValueError as e:
            print(f"townhall {args.command}: error: {e}", file=sys.stderr)
            return 2
    return config


def _serve(args: argparse.Namespace) -> int:
    config = _configured(args)
    if isinstance(config, int):
        return config
    if config.cluster.servers:
        from townhall.cluster.leases import identity_problem

        c = config.cluster
        if problem := identity_problem(config.host, config.control_port, c.node_url):
            print(f"townhall serve: error: {problem}", file=sys.stderr)
            return 2
    from townhall.serve import main as serve_main

    serve_main(config)
    return 0


def _edge(args: argparse.Namespace) -> int:
    config = _configured(args)
    if isinstance(config, int):
        return config
    if not config.cluster.servers:
        print("townhall edge: error: an edge needs the cluster: --nats URL[,URL...]",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        from townhall.cluster.edge import main as edge_main
    except ImportError as exc:
        print(f"townhall edge: error: {exc}; install townhall[cluster]", file=sys.stderr)
        return 2
    edge_main(config)
    return 0


def _space_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("space", help="create and inspect spaces")
    ssub = s.add_subparsers()
    c = ssub.add_parser("create", help="create a space; prints its links")
    c.add_argument("title")
    c.add_argument("--description", default="")
    c.add_argument("--server", default=os.environ.get("TOWNHALL_URL", "http://127.0.0.1:8000"))
    c.add_argument("--admin-key", default=os.environ.get("TOWNHALL_ADMIN_KEY"))
    c.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("TOWNHALL_DATA_DIR", "./townhall-data")),
    )
    c.set_defaults(run=_space_create)


def _admin_key(args: argparse.Namespace) -> str:
    if args.admin_key:
        return str(args.admin_key)
    from townhall.store import Store

    db = args.data_dir / "townhall.sqlite3"
    if not db.exists():
        raise SystemExit(
            f"no admin key: pass --admin-key or run from the server's directory ({db} missing)"
        )
    return Store(db).setting("admin_key", "")


def _space_create(args: argparse.Namespace) -> int:
    resp = httpx.post(
        f"{args.server}/api/spaces",
        json={"title": args.title, "description": args.description},
        headers={"Authorization": f"Bearer {_admin_key(args)}"},
    )
    print(json.dumps(resp.json(), indent=2))
    return 0 if resp.status_code == 201 else 1


def _speak_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("speak", help="join a stage over WebRTC and send a tone or a file")
    s.add_argument("link", help="a host or speaker link")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--tone", type=float, metavar="HZ")
    src.add_argument("--file", type=Path)
    s.add_argument("--seconds", type=float, default=0.0, help="0: until interrupted")
    s.add_argument("--start", action="store_true", help="start the space first (host link)")
    s.add_argument("--out", type=Path, help="save the mix-minus this speaker hears (WAV)")
    s.add_argument(
        "--holder",
        metavar="KEY",
        help="the key this client holds its link with (default: a new random one); a "
        "script that also sends the link's own commands sends it as X-Townhall-Holder",
    )
    s.add_argument(
        "--join-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="how long to keep trying while the stage is restarting or unreachable",
    )
    s.set_defaults(run=_speak)


def _speak(args: argparse.Namespace) -> int:
    from townhall.peers.links import parse_stage_link
    from townhall.peers.sources import FileSource, ToneSource
    from townhall.peers.speak import Speaker, StageRefused

    link = parse_stage_link(args.link)
    source = ToneSource(args.tone) if args.tone else FileSource(args.file)

    async def run() -> int:
        if args.start:
            httpx.post(
                f"{link.control_url}/api/spaces/{link.space_id}/start",
                headers={"Authorization": f"Bearer {link.token}"},
            ).raise_for_status()
        speaker = Speaker(link, source, holder=args.holder)
        try:
            await speaker.join_patiently(args.join_timeout)
        except StageRefused as refused:
            print(f"townhall speak: {refused}", file=sys.stderr)
            return 1
        print(f"on stage in space {link.space_id}", file=sys.stderr)
        try:
            # On stage until time is up, through stage restarts (the speaker rejoins by
            # itself), unless the stage refuses it for good (removed, moved off stage).
            await asyncio.wait_for(speaker.gone.wait(), args.seconds or None)
        except TimeoutError:
            pass
        finally:
            await speaker.leave()
            if args.out:
                _write_wav(args.out, speaker.heard.pcm())
        if speaker.stopped is not None:
            print(f"off stage: {speaker.stopped}", file=sys.stderr)
            return 1
        if speaker.rejoins:
            print(f"rejoined the stage {speaker.rejoins} times", file=sys.stderr)
        return 0

    return asyncio.run(run())


def _write_wav(path: Path, pcm: object) -> None:
    import wave

    import numpy as np

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(np.asarray(pcm, dtype=np.int16).tobytes())


def _listen_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("listen", help="record what a listener hears")
    s.add_argument("url", help="an audience URL: .../live/{space}.ogg or .../index.m3u8")
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--hls", action="store_true", help="listen over LL-HLS")
    s.set_defaults(run=_listen)


def _listen(args: argparse.Namespace) -> int:
    from townhall.peers.listen import Refused, listen_hls, listen_ogg, save

    url = args.url
    if args.hls and url.endswith(".ogg"):
        url = url.removesuffix(".ogg") + "/index.m3u8"
    try:
        # Reconnects by itself until --seconds are up (a restarted stage or worker).
        rec = asyncio.run((listen_hls if args.hls else listen_ogg)(url, args.seconds))
    except Refused as refused:
        print(f"townhall listen: {refused}", file=sys.stderr)
        return 1
    save(rec, args.out, args.hls)
    again = f" ({rec.reconnects} reconnects)" if rec.reconnects else ""
    print(f"saved {len(rec.data)} bytes to {args.out}{again}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _plan_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "plan",
        help="what an event of N listeners needs (edges, cores, egress, JetStream, caches)",
        description="Computed from this project's own measured per-core figures, which it "
        "prints with their sources; docs/capacity.md explains the model.",
    )
    s.add_argument("--listeners", type=int, required=True)
    s.add_argument("--mix", default="ogg=0.3,hls=0.7", help="shares of Ogg and LL-HLS players")
    s.add_argument("--cache-nodes", type=int, default=0, help="cache nodes in front of the edges")
    s.add_argument("--cores-per-edge", type=int, default=8)
    s.add_argument("--spaces", type=int, default=1, help="Spaces live at once")
    s.add_argument("--utilisation", type=float, default=0.6, help="target share of capacity")
    s.add_argument(
        "--storm", default="1000000/60", metavar="JOINS/SECONDS", help="the join storm to absorb"
    )
    s.set_defaults(run=_plan)


def _plan(args: argparse.Namespace) -> int:
    from townhall.capacity import PlanInput, parse_mix, plan, render

    try:
        joins, _, seconds = args.storm.partition("/")
        wanted = PlanInput(
            listeners=args.listeners,
            ogg_share=parse_mix(args.mix),
            target_utilisation=args.utilisation,
            cores_per_edge=args.cores_per_edge,
            spaces=args.spaces,
            storm_listeners=int(joins),
            storm_s=float(seconds or 60),
            cache_nodes=args.cache_nodes,
        )
        if not 0 < wanted.target_utilisation <= 1 or wanted.cores_per_edge < 1:
            raise ValueError("utilisation must be in (0, 1] and an edge needs a core")
        print(render(plan(wanted), wanted))
    except ValueError as exc:
        print(f"townhall plan: error: {exc}", file=sys.stderr)
        return 2
    return 0
