"""Subprocesses that serve on a port: find a port, start, wait until it answers, stop;
and the processes of one ``townhall serve``: list them by role, kill one, see it replaced."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

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


# -- the processes of one ``townhall serve`` ----------------------------------------------


@dataclass(frozen=True)
class ServeProcess:
    """One process of a ``townhall serve``, as ``GET /healthz`` on the control port lists
    it (role: "supervisor", "control", "stage", "recorder", "audience"; name unique, e.g.
    "stage:<space>", "audience:1")."""

    role: str
    name: str
    pid: int
    started_at: float = 0.0
    restarts: int = 0
    last_exit: str = ""


def parse_process_table(body: object) -> list[ServeProcess] | None:
    """The processes a healthz body lists; None when it lists none (an older server)."""
    rows = body.get("processes") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        return None
    out = []
    for row in rows:
        if not isinstance(row, dict) or "pid" not in row or "role" not in row:
            continue
        started = row.get("started_at", row.get("started_at_unix_s", 0.0))
        out.append(
            ServeProcess(
                role=str(row["role"]),
                name=str(row.get("name") or row["role"]),
                pid=int(row["pid"]),
                started_at=float(started or 0.0),
                restarts=int(row.get("restarts") or 0),
                last_exit=str(row.get("last_exit") or ""),
            )
        )
    return out


def process_table(control_url: str, timeout_s: float = 1.0) -> list[ServeProcess] | None:
    """``GET {control_url}/healthz``'s process list; None if it has none or did not answer
    200 (a control process restarting)."""
    try:
        resp = httpx.get(f"{control_url}/healthz", timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    try:
        return parse_process_table(resp.json())
    except ValueError:
        return None


def children_on_port(server_pid: int, port: int) -> list[ServeProcess]:
    """Fallback for a server whose healthz lists no processes: its child processes that
    listen on ``port`` (the audience workers), named by their pid."""
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                for c in child.net_connections(kind="tcp")
            ):
                found.append(ServeProcess("audience", f"audience:pid{child.pid}", child.pid))
    return found


def serving_pid(pids: Iterable[int], port: int, peer_port: int) -> int | None:
    """Which of ``pids`` holds the connection from local ``peer_port`` to ``port``."""
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if c.laddr and c.raddr and c.laddr.port == port and c.raddr.port == peer_port:
                    return pid
    return None


def kill9(pid: int) -> None:
    """SIGKILL, the fault being measured; a process already gone is fine. A pid of 0
    or less (a process listed as down) is refused: ``kill(0)`` would signal our own
    process group."""
    if pid <= 0:
        raise ValueError(f"refusing to kill pid {pid}")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def replacement(
    before: Sequence[ServeProcess], after: Sequence[ServeProcess], victim: ServeProcess
) -> ServeProcess | None:
    """The process that took ``victim``'s place: same name with another pid, or (names
    that carry pids) a new pid of the same role. A row with pid 0 is a process listed
    as down, never a replacement."""
    alive = [p for p in after if p.pid > 0]
    for p in alive:
        if p.name == victim.name and p.pid != victim.pid:
            return p
    old = {p.pid for p in before}
    for p in alive:
        if p.role == victim.role and p.pid not in old and p.name != victim.name:
            return p
    return None


def wait_replaced(
    lookup: Callable[[], Sequence[ServeProcess] | None],
    before: Sequence[ServeProcess],
    victim: ServeProcess,
    timeout_s: float,
    poll_s: float = 0.05,
) -> tuple[ServeProcess, float] | None:
    """Poll ``lookup`` until a replacement of ``victim`` is listed; returns it and the
    monotonic time it was first seen, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        table = lookup()
        if table is not None and (new := replacement(before, table, victim)) is not None:
            return new, time.monotonic()
        time.sleep(poll_s)
    return None


class MountRefused(Exception):
    """This machine would not mount a filesystem here (not root, or not allowed)."""


@contextlib.contextmanager
def tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    """A real filesystem of ``size_kib`` at ``path``: writes past it fail with ENOSPC,
    as on a full disk. Unmounted on exit; ``MountRefused`` where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise MountRefused(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
