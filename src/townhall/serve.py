"""Run townhall: the control API and the audience server on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn
import uvloop

from townhall.app import Townhall
from townhall.audience.pool import serve_audience
from townhall.config import ServerConfig
from townhall.control.api import create_app
from townhall.gcpolicy import freeze_startup_heap
from townhall.stage.ice import allow_loopback_candidates

log = logging.getLogger("townhall")


async def run(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    allow_loopback_candidates()
    th = Townhall(config)
    control = uvicorn.Server(
        uvicorn.Config(
            create_app(th),
            host=config.host,
            port=config.control_port,
            loop="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
    )
    plane = await serve_audience(
        th.audience, config.host, config.audience_port, config.audience_workers
    )
    th.audience_plane = plane
    th.feed.add(plane)
    control_task = asyncio.create_task(control.serve(), name="control")
    while not control.started and not control_task.done():
        await asyncio.sleep(0.01)
    _announce(th)
    freeze_startup_heap()
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await asyncio.wait(
        [control_task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    await th.shutdown()
    control.should_exit = True
    await plane.close()
    with contextlib.suppress(asyncio.CancelledError):
        await control_task


def _announce(th: Townhall) -> None:
    c = th.config
    print(
        f"townhall control API and web UI: {c.control_url}  (OpenAPI: {c.control_url}/docs)",
        flush=True,
    )
    print(f"townhall audience endpoints:     {c.audience_url}", flush=True)
    print(f"data directory:                  {c.data_dir.resolve()}", flush=True)
    print(f"admin key:                       {th.admin_key}", flush=True)
    print(f'create a space:  townhall space create "My Space" --server {c.control_url}', flush=True)


def main(config: ServerConfig) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uvloop.run(run(config))
