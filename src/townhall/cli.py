"""The ``townhall`` command: serve, manage spaces, and the speak/listen peers."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx

from townhall.config import ServerConfig, from_env, with_stream_fanout

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
    for name, (_, help_) in LAZY_COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("serve", help="run the server (control API + web UI, and audience)")
    s.add_argument("--host")
    s.add_argument("--control-port", type=int)
    s.add_argument("--audience-port", type=int)
    s.add_argument("--data-dir", type=Path)
    s.add_argument("--public-control-url")
    s.add_argument("--public-audience-url")
    s.add_argument("--audience-workers", type=int)
    s.add_argument(
        "--audience-worker-nice",
        type=int,
        help="how much nicer than the stage the workers run (default 8: a saturated core "
        "delays chunks, never the speakers; 0 on a box shared with other busy processes, "
        "which would otherwise take the workers' CPU)",
    )
    s.add_argument(
        "--stream-flush-interval-s",
        type=float,
        help="how often the Ogg stream is written to listeners (default 0.2; grows under load)",
    )
    s.add_argument("--max-listeners", type=int, help="stream listeners per process before 503")
    s.set_defaults(run=_serve)


def server_config(args: argparse.Namespace) -> ServerConfig:
    config = from_env(ServerConfig())
    flags = {
        k: v
        for k, v in vars(args).items()
        if k in ServerConfig.__dataclass_fields__ and v is not None
    }
    fanout: dict[str, float | int] = {}
    if getattr(args, "stream_flush_interval_s", None) is not None:
        fanout["flush_interval_s"] = args.stream_flush_interval_s
    if getattr(args, "max_listeners", None) is not None:
        fanout["max_listeners"] = args.max_listeners
    config = with_stream_fanout(replace(config, **flags), **fanout)
    if getattr(args, "audience_worker_nice", None) is not None:
        audience = replace(config.audience, worker_nice=args.audience_worker_nice)
        config = replace(config, audience=audience)
    return config


def _serve(args: argparse.Namespace) -> int:
    from townhall.serve import main as serve_main

    serve_main(server_config(args))
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
    s.set_defaults(run=_speak)


def _speak(args: argparse.Namespace) -> int:
    from townhall.peers.links import parse_stage_link
    from townhall.peers.sources import FileSource, ToneSource
    from townhall.peers.speak import Speaker

    link = parse_stage_link(args.link)
    source = ToneSource(args.tone) if args.tone else FileSource(args.file)

    async def run() -> None:
        if args.start:
            httpx.post(
                f"{link.control_url}/api/spaces/{link.space_id}/start",
                headers={"Authorization": f"Bearer {link.token}"},
            ).raise_for_status()
        speaker = Speaker(link, source)
        await speaker.join()
        print(f"on stage in space {link.space_id}", file=sys.stderr)
        try:
            await asyncio.sleep(args.seconds or 10**9)
        finally:
            await speaker.leave()
            if args.out:
                _write_wav(args.out, speaker.heard.pcm())

    asyncio.run(run())
    return 0


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
    from townhall.peers.listen import listen_hls, listen_ogg, save

    url = args.url
    if args.hls and url.endswith(".ogg"):
        url = url.removesuffix(".ogg") + "/index.m3u8"
    rec = asyncio.run((listen_hls if args.hls else listen_ogg)(url, args.seconds))
    save(rec, args.out, args.hls)
    print(f"saved {len(rec.data)} bytes to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
