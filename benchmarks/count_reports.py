"""How long an edge's count reports hold its event loop, which also passes the program
from NATS to its audience workers.

One report period of an edge counting ``--spaces`` Spaces of ``--listeners`` listeners
each (every Space past the sketch's exact size, so both sketches are dense), sent to a
fake NATS client while a task ticks on the same loop. Prints the period's total encode
time and the longest the ticking task waited (the loop's longest stall):

    python -m benchmarks count-reports --spaces 50 --listeners 20000
"""

from __future__ import annotations

import argparse
import asyncio
import time

from townhall.cluster.config import ClusterConfig
from townhall.cluster.count_reports import CountReporter
from townhall.cluster.counts import EdgeTally
from townhall.room.counting import CounterConfig

KEY = bytes(range(32))


class FakeNats:
    """The NATS client's side the reporter uses: the payload bound and ``publish``."""

    max_payload = 1 << 20

    def __init__(self) -> None:
        self.sent_bytes = 0

    async def publish(self, subject: str, payload: bytes) -> None:
        self.sent_bytes += len(payload)


def crowded_tally(spaces: int, listeners: int) -> EdgeTally:
    tally = EdgeTally(CounterConfig(session_timeout_s=3600.0), max_spaces=spaces)
    for n in range(spaces):
        for i in range(listeners):
            tally.seen(f"space{n}", f"listener{n}-{i}")
    return tally


async def one_period(tally: EdgeTally) -> tuple[float, list[float], int]:
    """(the period's wall time, the loop's stalls, bytes sent), in seconds."""
    nc = FakeNats()
    reporter = CountReporter(ClusterConfig(), tally, KEY, "edge")
    stalls: list[float] = []

    async def ticking() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            stalls.append(now - last)
            last = now

    ticker = asyncio.get_running_loop().create_task(ticking())
    await asyncio.sleep(0)
    began = time.perf_counter()
    await reporter._send(nc)  # type: ignore[arg-type]  # a fake of the client's publish
    spent = time.perf_counter() - began
    await asyncio.sleep(0)  # the ticking task's wait past the last Space is counted too
    ticker.cancel()
    return spent, stalls, nc.sent_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", type=int, default=50)
    parser.add_argument("--listeners", type=int, default=20_000)
    parser.add_argument("--periods", type=int, default=3)
    args = parser.parse_args(argv)
    tally = crowded_tally(args.spaces, args.listeners)
    for _ in range(args.periods):
        spent, stalls, sent = asyncio.run(one_period(tally))
        stalls.sort()
        print(
            f"{args.spaces} Spaces x {args.listeners} listeners: a period took "
            f"{spent * 1000:.0f} ms ({spent * 1000 / args.spaces:.1f} ms a Space); the loop "
            f"stalled {len(stalls)} times, median {stalls[len(stalls) // 2] * 1000:.1f} ms, "
            f"longest {stalls[-1] * 1000:.1f} ms; {sent // 1024} KiB sent"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
