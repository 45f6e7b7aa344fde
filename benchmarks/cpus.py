"""Who runs on which core: a benchmark pins the measured server to one core and keeps
everything else (the crowd, the speakers, a source relay) on another."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psutil


def other_cpu(cpu: int) -> int:
    """A core this process may use other than ``cpu`` (the measured one)."""
    cpus = sorted(os.sched_getaffinity(0))
    rest = [c for c in cpus if c != cpu]
    if cpu not in cpus or not rest:
        raise SystemExit(f"need CPU {cpu} and at least one other; this process may use {cpus}")
    return rest[0]


def pin_threads(pids: list[int], cpus: set[int]) -> dict[int, set[int]]:
    """Pin every thread of these processes (affinity is per thread: pinning a pid moves
    only its main thread); returns each thread's previous affinity."""
    before: dict[int, set[int]] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                with contextlib.suppress(OSError):  # a thread that just ended
                    before[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, cpus)
    return before


@contextlib.contextmanager
def moved(pid: int, cpu: int) -> Iterator[None]:
    """The process tree of ``pid`` on ``cpu`` for a while, then back where each thread was."""
    root = psutil.Process(pid)
    before = pin_threads([pid, *(p.pid for p in root.children(recursive=True))], {cpu})
    try:
        yield
    finally:
        for tid, cpus in before.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)
