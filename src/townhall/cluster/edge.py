"""``townhall edge``: an audience node anywhere, fed by the cluster instead of a stage.

An edge runs the same audience worker pool as ``townhall serve`` (Ogg streams, LL-HLS,
room events, for every live Space) and follows the program in JetStream: the heads of
every Space, then the program's history, then live. The workers start
only once that history has arrived, so the first blocking playlist request an edge
answers already has the LL-HLS window, numbered exactly as its siblings number it (the
parts carry their number from the origin).

With the cluster's session key (``cluster.session_key_file``) an edge checks listeners'
signed session ids as the origin's workers do, counts them per Space, and reports the
counts to the cluster (``counts.py``); without it, it counts nobody.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import uvloop

from townhall.audience.pool import WorkerPool
from townhall.audience.worker import WorkerSpec
from townhall.cluster.count_reports import CountReporter
from townhall.cluster.counts import EdgeTally
from townhall.cluster.jetstream import ProgramFollower
from townhall.config import ServerConfig
from townhall.feed import ChannelEnded, FeedMessage
from townhall.serve import stop_signals
from townhall.sessions import read_session_key
from townhall.supervise.child import LOG_FORMAT

log = logging.getLogger("townhall.edge")


async def run_edge(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    if not config.cluster.servers:
        raise ValueError("an edge needs the cluster: pass --nats URL[,URL...]")
    key = _session_key(config)
    spec = WorkerSpec(config.audience, None, config.host, config.audience_port, key)
    tally = EdgeTally(config.counter, config.cluster.max_counted_spaces) if key else None
    pool = WorkerPool(spec, max(1, config.audience_workers), presence=tally)
    # Until the workers run, what arrives is kept in the pool's feed log and replayed
    # to each worker when it starts.
    follower = ProgramFollower(config.cluster, _noting_ends(pool.publish, tally))
    reporter: CountReporter | None = None
    stop = stop_signals()
    try:
        await follower.start()
        await pool.start()
        if tally is not None:
            node = config.cluster.node_name or f"{socket.gethostname()}:{pool.port}"
            reporter = CountReporter(config.cluster, tally, key, node)
            await reporter.start()
        print(f"townhall edge: audience endpoints on http://{config.host}:{pool.port} "
              f"({follower.received} messages of history)", flush=True)  # fmt: skip
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        if reporter is not None:
            await reporter.close()
        await pool.close()
        await follower.close()


def _session_key(config: ServerConfig) -> bytes:
    if not config.cluster.session_key_file:
        log.warning("no cluster.session_key_file: this edge's listeners are counted nowhere")
        return b""
    return read_session_key(Path(config.cluster.session_key_file))


def _noting_ends(
    publish: Callable[[FeedMessage], None], tally: EdgeTally | None
) -> Callable[[FeedMessage], None]:
    """``publish``, telling the tally which Spaces ended (it reports them a last time)."""
    if tally is None:
        return publish

    def deliver(msg: FeedMessage) -> None:
        if isinstance(msg, ChannelEnded):
            tally.ended(msg.space_id)
        publish(msg)

    return deliver


def main(config: ServerConfig) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    uvloop.run(run_edge(config))
