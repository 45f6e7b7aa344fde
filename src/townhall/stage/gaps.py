"""The stage clock's health over a sliding window: the longest gap between two ticks.

A maximum since the process started says little once anything has stalled it; an
operator (and a fault benchmark) wants the longest gap of the last few seconds.
Pure, time passed in: per-second buckets, at most ``window_s`` of them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class RecentMaximum:
    window_s: float = 10.0
    _buckets: deque[tuple[int, float]] = field(default_factory=deque)  # (second, max)

    def add(self, value: float, now: float) -> None:
        second = math.floor(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1] = (second, max(self._buckets[-1][1], value))
        else:
            self._buckets.append((second, value))
        self._trim(now)

    def value(self, now: float) -> float:
        self._trim(now)
        return max((v for _, v in self._buckets), default=0.0)

    def _trim(self, now: float) -> None:
        oldest = math.floor(now - self.window_s)
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()
