"""``townhall edge``: an audience node anywhere, fed by the cluster instead of a stage.

An edge runs the same audience worker pool as ``townhall serve`` (Ogg streams, LL-HLS,
room events, for every live Space) and follows the program in JetStream: the heads of
every Space, then the program's history, then live. The workers start
only once that history has arrived, so the first blocking playlist request an edge
answers already has the LL-HLS window, numbered exactly as its siblings number it (the
parts carry their number from the origin).
"""

from __future__ import annotations

import asyncio
import logging

import uvloop

from townhall.audience.pool import WorkerPool
from townhall.audience.worker import WorkerSpec
from townhall.cluster.jetstream import ProgramFollower
from townhall.config import ServerConfig
from townhall.serve import stop_signals
from townhall.supervise.child import LOG_FORMAT

log = logging.getLogger("townhall.edge")


async def run_edge(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    if not config.cluster.servers:
        raise ValueError("an edge needs the cluster: pass --nats URL[,URL...]")
    spec = WorkerSpec(config.audience, None, config.host, config.audience_port)
    pool = WorkerPool(spec, max(1, config.audience_workers))
    # Until the workers run, what arrives is kept in the pool's feed log and replayed
    # to each worker when it starts.
    follower = ProgramFollower(config.cluster, pool.publish)
    stop = stop_signals()
    try:
        await follower.start()
        await pool.start()
        print(f"townhall edge: audience endpoints on http://{config.host}:{pool.port} "
              f"({follower.received} messages of history)", flush=True)  # fmt: skip
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await pool.close()
        await follower.close()


def main(config: ServerConfig) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    uvloop.run(run_edge(config))
