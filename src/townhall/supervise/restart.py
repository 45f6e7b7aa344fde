"""How often a dead process may be restarted: a pure rate bound, per process name.

A process that cannot stay up (a crash on every start) would otherwise be respawned in
a tight loop, eating the core the stage's clock needs. Past ``max_restarts`` in
``window_s`` the next restart is not refused for good: it waits until the window lets
one through, so a Space whose stage crashed repeatedly still comes back. Only a process
that dies young counts toward the bound: one that ran ``healthy_uptime_s`` or longer
before it died was not crash-looping, and its next restart is immediate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    max_restarts: int
    window_s: float
    healthy_uptime_s: float = 3.0
    _recent: dict[str, deque[float]] = field(default_factory=dict)

    def _window(self, name: str, now: float) -> deque[float]:
        recent = self._recent.setdefault(name, deque())
        while recent and now - recent[0] >= self.window_s:
            recent.popleft()
        return recent

    def next_restart_at(self, name: str, now: float) -> float:
        """The earliest time ``name`` may be restarted (``now`` if at once)."""
        recent = self._window(name, now)
        if len(recent) < self.max_restarts:
            return now
        if self.max_restarts <= 0:
            return float("inf")
        return recent[-self.max_restarts] + self.window_s

    def allow(self, name: str, now: float) -> bool:
        """Record a restart of ``name`` at ``now`` if the bound allows it."""
        if self.next_restart_at(name, now) > now:
            return False
        self._recent[name].append(now)
        return True

    def ran(self, name: str, uptime_s: float) -> None:
        """``name`` died after running ``uptime_s``: a long run clears its history."""
        if uptime_s >= self.healthy_uptime_s:
            self.forget(name)

    def forget(self, name: str) -> None:
        """A process that is gone for good (a closed Space's stage) leaves no state."""
        self._recent.pop(name, None)
