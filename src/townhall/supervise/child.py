"""What every child process of ``townhall serve`` runs first.

Spawned children start from a fresh interpreter: they inherit neither the logging setup
nor a priority the supervisor could lower. ``run_child`` sets both, then imports the
role's entry point by its dotted path (so the table of entry points is data the tests
can override) and runs it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def resolve(entry: str) -> Callable[[Any, socket.socket], None]:
    module, _, name = entry.rpartition(".")
    fn: Callable[[Any, socket.socket], None] = getattr(importlib.import_module(module), name)
    return fn


def set_nice(nice: int) -> None:
    """Absolute, not relative: a restarted child gets the same priority as the first.
    Below the current value needs privilege; without it the child keeps its priority."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def run_child(entry: str, spec: object, sock: socket.socket, nice: int, log_level: int) -> None:
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_nice(nice)
    # Ctrl-C reaches the whole process group; the supervisor alone answers it, stopping
    # its children in order (the recorder last, so it writes what the others sent).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    resolve(entry)(spec, sock)
