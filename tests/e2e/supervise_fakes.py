"""Stand-in children for the supervisor's tests: real processes on real links that do
the least their role does, and write down every message they get (``*.frames`` files in
the data directory, one pickled frame per message) for the test to read."""

from __future__ import annotations

import asyncio
import pickle
import socket
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from townhall.audience.framing import FrameDecoder, encode_frame
from townhall.config import ServerConfig
from townhall.feed import ChannelEnded, HlsPart, OggHeader, OggPages
from townhall.supervise.link import Link, open_link
from townhall.supervise.messages import CloseStage
from townhall.supervise.specs import ControlSpec, RecorderSpec, StageSpec

FAKES = {
    "control": "tests.e2e.supervise_fakes.run_fake_control",
    "recorder": "tests.e2e.supervise_fakes.run_fake_recorder",
    "stage": "tests.e2e.supervise_fakes.run_fake_stage",
}
# Spaces whose fake stage misbehaves, by the prefix of their id.
DEAF = "deaf"  # ignores CloseStage
WEDGED = "wedged"  # closes its link at once but stays alive
PART_S = 0.05


def frames(path: Path) -> list[Any]:
    return FrameDecoder(1 << 30).feed(path.read_bytes()) if path.exists() else []


def _recorder_of(path: Path) -> Any:
    out = path.open("ab", buffering=0)  # one write per frame: a kill never splits one

    def record(msg: object) -> None:
        out.write(encode_frame(msg))

    return record


def run_fake_control(spec: ControlSpec, sock: socket.socket) -> None:
    uvloop.run(_record_until_closed(spec.config, "control", sock))


def run_fake_recorder(spec: RecorderSpec, sock: socket.socket) -> None:
    uvloop.run(_record_until_closed(spec.config, "recorder", sock))


async def _record_until_closed(config: ServerConfig, role: str, sock: socket.socket) -> None:
    link = await open_link(sock, _recorder_of(config.data_dir / f"{role}.frames"))
    script = config.data_dir / f"{role}-sends.pickle"
    if script.exists():
        for msg in pickle.loads(script.read_bytes()):
            link.send(msg)
    await link.closed


def run_fake_stage(spec: StageSpec, sock: socket.socket) -> None:
    space = spec.open.space_id
    dump = spec.config.data_dir / f"stage-{space}-{spec.incarnation}.pickle"
    dump.write_bytes(pickle.dumps((spec.incarnation, spec.next_part_seq)))
    uvloop.run(_stage(spec, sock))


async def _stage(spec: StageSpec, sock: socket.socket) -> None:
    space = spec.open.space_id
    record = _recorder_of(spec.config.data_dir / f"stage-{space}.frames")
    close = asyncio.Event()

    def on_message(msg: object) -> None:
        record(msg)
        if isinstance(msg, CloseStage) and not space.startswith(DEAF):
            close.set()

    link = await open_link(sock, on_message)
    link.send(OggHeader(space, b"OpusHead%d" % spec.incarnation))
    if space.startswith(WEDGED):
        link.close()
        await asyncio.wait_for(link.closed, 5)
        time.sleep(3600)  # a blocked loop: alive, answering nothing
    await _publish(spec, link, close)


async def _publish(spec: StageSpec, link: Link, close: asyncio.Event) -> None:
    space = spec.open.space_id
    seq = spec.next_part_seq or 0
    first = True
    while not close.is_set() and not link.closed.done():
        link.send(OggPages(space, b"OggS", time.monotonic()))
        part = HlsPart(space, b"moof", PART_S, time.time(), seq, first and spec.incarnation > 0)
        link.send(part)
        seq, first = seq + 1, False
        await asyncio.sleep(PART_S)
    link.send(ChannelEnded(space, time.time()))
    link.close()
    await asyncio.wait_for(link.closed, 5)


if __name__ == "__main__":
    # ``python -m tests.e2e.supervise_fakes DATA_DIR``: ``townhall serve``'s ``run`` with
    # these children, for the signal tests.
    from townhall import serve

    data_dir = Path(sys.argv[1])
    config = ServerConfig(control_port=0, audience_port=0, data_dir=data_dir)
    asyncio.run(serve.run(config, entry_points=FAKES))
