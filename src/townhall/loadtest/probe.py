"""The server's CPU and memory while it is under load, sampled with psutil.

The server is given by pid, or found as every process listening on the target port
(several with SO_REUSEPORT audience workers). CPU is the sum over those processes and
their children, in percent of one core.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import psutil


def listening_pids(port: int) -> list[int]:
    pids = {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }
    return sorted(pids)


@dataclass
class ServerUsage:
    pids: list[int]
    cpu_samples: list[float] = field(default_factory=list)
    rss_samples: list[int] = field(default_factory=list)

    @property
    def cpu_mean(self) -> float | None:
        return sum(self.cpu_samples) / len(self.cpu_samples) if self.cpu_samples else None

    @property
    def cpu_max(self) -> float | None:
        return max(self.cpu_samples, default=None)

    @property
    def rss_max_bytes(self) -> int | None:
        return max(self.rss_samples, default=None)


class ServerSampler:
    def __init__(self, pids: list[int]) -> None:
        self.usage = ServerUsage(pids)
        self._procs: dict[int, psutil.Process] = {}
        self._refresh()

    def _refresh(self) -> None:
        for pid in self.usage.pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                for p in (proc, *proc.children(recursive=True)):
                    if p.pid not in self._procs:
                        self._procs[p.pid] = p
                        p.cpu_percent(None)  # the first call only sets the baseline

    def sample(self) -> None:
        """Call about once a second; cpu_percent measures since the previous call."""
        self._refresh()
        cpu, rss = 0.0, 0
        for pid, proc in list(self._procs.items()):
            try:
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss
            except psutil.Error:
                del self._procs[pid]
        self.usage.cpu_samples.append(cpu)
        self.usage.rss_samples.append(rss)
