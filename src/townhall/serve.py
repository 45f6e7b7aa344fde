"""Run townhall: ``townhall serve`` is the supervisor of its processes.

The supervisor binds the ports, hosts the audience workers and spawns the control
process, the recorder and a stage process per live Space (``townhall.supervise``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import Mapping

import uvloop

from townhall.config import ServerConfig
from townhall.fdbudget import raise_nofile_limit
from townhall.gcpolicy import freeze_startup_heap
from townhall.store import Store
from townhall.supervise.child import LOG_FORMAT
from townhall.supervise.supervisor import Supervisor

log = logging.getLogger("townhall")


def admin_key(config: ServerConfig) -> str:
    """The admin key, made and stored on first use; the control process reads the same."""
    return Store(config.db_path).setting("admin_key", secrets.token_urlsafe(24))


async def run(
    config: ServerConfig,
    ready: asyncio.Event | None = None,
    entry_points: Mapping[str, str] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; ``entry_points`` overrides the children's (tests)."""
    key = admin_key(config)
    level = logging.getLogger().getEffectiveLevel()
    supervisor = Supervisor(config, entry_points or {}, log_level=level)
    stop = stop_signals()
    try:
        await supervisor.start()
        _announce(supervisor.config, key)
        freeze_startup_heap()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await supervisor.stop()


def stop_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: a server stops cleanly on either."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def _announce(c: ServerConfig, key: str) -> None:
    print(
        f"townhall control API and web UI: {c.control_url}  (OpenAPI: {c.control_url}/docs)",
        flush=True,
    )
    print(f"townhall audience endpoints:     {c.audience_url}", flush=True)
    print(f"data directory:                  {c.data_dir.resolve()}", flush=True)
    print(f"admin key:                       {key}", flush=True)
    print(f'create a space:  townhall space create "My Space" --server {c.control_url}', flush=True)


def main(config: ServerConfig) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Every child inherits the lifted limit; each derives its caps from it (fdbudget.py).
    raise_nofile_limit()
    uvloop.run(run(config))
