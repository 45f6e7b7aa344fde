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


# The reconnect schedule of a client that lost its connection (a stage, a stream): the
# first retry is immediate, later ones back off to a cap. The jitter spreads a crowd that
# lost the same process over a second instead of letting it return in one burst.
RECONNECT_STEPS_S = (0.0, 0.3, 1.2, 2.7, 4.8)
RECONNECT_CAP_S = 7.0
RECONNECT_JITTER_S = 1.0


def reconnect_delay(attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
    """Seconds to wait before reconnect ``attempt`` (0 = the first after a loss); a
    server's Retry-After wins when it asks for longer."""
    step = RECONNECT_STEPS_S[attempt] if attempt < len(RECONNECT_STEPS_S) else RECONNECT_CAP_S
    delay = step + rng.uniform(0.0, RECONNECT_JITTER_S)
    return max(delay, retry_after_s) if retry_after_s is not None else delay
