"""Token buckets for listener actions (hands, reactions, sign-ins), time passed in.

Each key (a participant, an address) gets ``burst_actions`` tokens refilled at ``rate_per_s``.
The table of keys is bounded: past ``max_keys`` the least recently used are forgotten,
which can only make the limiter more lenient, never use unbounded memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from townhall.control.config import RateLimitConfig
from townhall.errors import TownhallError


class RateLimited(TownhallError):
    status = 429
    code = "rate_limited"

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


@dataclass
class RateLimiter:
    rate_per_s: float
    burst_actions: float
    max_keys: int = 100_000
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    @classmethod
    def of(cls, config: RateLimitConfig) -> RateLimiter:
        return cls(config.rate_per_s, config.burst_actions, config.max_keys)

    def take(self, key: str, now: float, what: str = "requests") -> None:
        tokens, last = self._buckets.pop(key, (self.burst_actions, now))
        tokens = min(self.burst_actions, tokens + (now - last) * self.rate_per_s)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited(f"too many {what}; slow down", (1.0 - tokens) / self.rate_per_s)
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
