"""Retry pacing for a crowd: capped exponential backoff with full jitter.

A refused listener waits what the server asked (Retry-After, itself jittered) plus a
uniformly random share of an exponentially growing, capped window. Full jitter spreads
a crowd's retries over the window instead of letting them arrive together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.5
    cap_s: float = 30.0
    max_attempts: int = 8

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        window = min(self.cap_s, self.base_s * 2**attempt)
        return (retry_after_s or 0.0) + rng.uniform(0, window)


def parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date; we only ever send seconds
