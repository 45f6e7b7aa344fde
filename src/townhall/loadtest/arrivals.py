"""When each listener arrives: the crowd shapes a load test can replay.

Pure and deterministic given a seed. Offsets are seconds from the start of the run.

* ``ramp``: evenly spaced over ``over_s`` (a steady build-up);
* ``flash``: uniformly random within ``over_s`` (a link shared in a busy chat);
* ``burst``: a push notification: arrivals decay exponentially (time constant
  ``over_s / 5``, truncated at ``over_s``), so most of the crowd lands in the first
  seconds and the rest trickles in.
"""

from __future__ import annotations

import math
import random
from enum import StrEnum


class Arrival(StrEnum):
    RAMP = "ramp"
    FLASH = "flash"
    BURST = "burst"


BURST_TIME_CONSTANTS = 5.0  # over_s spans this many time constants of the decay


def schedule(shape: Arrival, listeners: int, over_s: float, seed: int = 0) -> list[float]:
    """Sorted arrival offsets, one per listener, all within ``[0, over_s]``."""
    if listeners < 0 or over_s < 0:
        raise ValueError("listeners and over_s must not be negative")
    rng = random.Random(seed)
    if shape is Arrival.RAMP:
        return [over_s * i / listeners for i in range(listeners)]
    if shape is Arrival.FLASH:
        return sorted(rng.uniform(0, over_s) for _ in range(listeners))
    return sorted(_truncated_exponential(rng.random(), over_s) for _ in range(listeners))


def _truncated_exponential(u: float, over_s: float) -> float:
    # Inverse CDF of an exponential truncated to [0, over_s], so no one arrives late.
    if over_s == 0:
        return 0.0
    tau = over_s / BURST_TIME_CONSTANTS
    return -tau * math.log(1 - u * (1 - math.exp(-over_s / tau)))


def deal(offsets: list[float], workers: int) -> list[list[tuple[int, float]]]:
    """Deal ``(listener index, offset)`` round-robin so every worker sees the same shape."""
    hands: list[list[tuple[int, float]]] = [[] for _ in range(workers)]
    for i, offset in enumerate(offsets):
        hands[i % workers].append((i, offset))
    return hands
