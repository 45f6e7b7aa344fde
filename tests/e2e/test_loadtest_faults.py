"""The load generator's listeners through a fault, like real players: a real
``townhall serve`` with two audience workers, one killed with SIGKILL mid-run; the Ogg
listeners it carried reconnect (the supervisor replaces it) and hear the program again."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from benchmarks.harness.server import Space, on_air
from townhall.loadtest import Arrival, LoadPlan, Mix, run_loadtest
from townhall.loadtest.report import Report

pytestmark = pytest.mark.e2e

LISTENERS = 120
RUN_S = 14.0
KILL_AFTER_S = 6.0  # the crowd is in (1 s arrivals) and hearing the program


@pytest.fixture(scope="module")
def space() -> Iterator[Space]:
    args = ("--audience-workers", "2", "--audience-worker-nice", "0")
    with on_air(server_args=args) as s:
        yield s


def audience_pids(space: Space) -> list[int]:
    health = httpx.get(f"{space.server.control_url}/healthz", timeout=10.0).json()
    return [p["pid"] for p in health["processes"] if p["role"] == "audience"]


def test_ogg_listeners_reconnect_when_their_audience_worker_is_killed(space: Space) -> None:
    plan = LoadPlan(
        space.ogg_url, LISTENERS, Arrival.RAMP, over_s=1.0, duration_s=RUN_S, mix=Mix.OGG,
        processes=1,
    )  # fmt: skip
    result: list[Report] = []
    runner = threading.Thread(target=lambda: result.append(run_loadtest(plan, progress=None)))
    started = time.monotonic()
    runner.start()
    try:
        workers = audience_pids(space)
        assert len(workers) == 2
        time.sleep(max(0.0, KILL_AFTER_S - (time.monotonic() - started)))
        os.kill(workers[0], signal.SIGKILL)
    finally:
        runner.join(timeout=RUN_S + 60.0)
    [report] = result
    ogg = report.rows()["ogg"]
    assert ogg["failures"] == {}
    assert (ogg["listeners"], ogg["failed"], ogg["with_media"]) == (LISTENERS, 0, LISTENERS)
    # SO_REUSEPORT spread the crowd over both workers: the killed one carried some.
    assert 0 < ogg["drops"] < LISTENERS
    assert ogg["reconnects"] == ogg["drops"]
    # Each dropped listener heard the program again, within the 5 s.
    assert 0 < ogg["reconnect_gap_p50_s"] <= ogg["reconnect_gap_max_s"] <= 5.0
    # The reconnect gap is not lateness of the stream.
    assert ogg["lateness_p99_s"] < 2.0
    assert "reconnect_gap_p99_s" in report.table()
    assert workers[0] not in audience_pids(space)  # replaced by the supervisor
