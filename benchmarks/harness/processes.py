"""Subprocesses that serve on a port: find a port, start, wait until it answers, stop."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

PORT_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    # townhall serve does not take port 0: borrow a free one from the kernel and hand it over.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = PORT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


def pinned(command: list[str], cpu: int | None) -> list[str]:
    """``command`` run on one core (``taskset``), or as is when ``cpu`` is None."""
    return ["taskset", "-c", str(cpu), *command] if cpu is not None else command


def stop(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serving(command: list[str], port: int, cpu: int | None = None) -> Iterator[int]:
    """Run a server (pinned to ``cpu`` if given); yields its pid once ``port`` answers,
    and stops it on exit."""
    proc = subprocess.Popen(
        pinned(command, cpu), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield proc.pid
    finally:
        stop(proc)
