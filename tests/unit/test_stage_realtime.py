"""The stage clock's real-time policy: every thread of the stage process gets it.

Run in a child interpreter (the policy must not reach the test runner). A thread that
exists before the call (as uvloop's resolver threads and aiortc's executor may) and one
started after it must both be SCHED_FIFO: a thread left at the normal policy that holds
the GIL while the scheduler has it waiting stalls the clock with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from townhall.stage.process import realtime_clock

CHILD = """
import os, threading, time
from townhall.stage.process import realtime_clock
go = threading.Event()
before = threading.Thread(target=go.wait, daemon=True)
before.start()
ok = realtime_clock(10)
after = threading.Thread(target=go.wait, daemon=True)
after.start()
time.sleep(0.05)
policies = {os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}
import resource
print(ok, len(os.listdir("/proc/self/task")), sorted(policies))
print(resource.getrlimit(resource.RLIMIT_RTTIME)[0])
go.set()
"""


def _permitted() -> bool:
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling API")
def test_every_thread_of_the_stage_runs_on_the_real_time_policy() -> None:
    if not _permitted():
        pytest.skip("SCHED_FIFO is not permitted here (needs CAP_SYS_NICE or RLIMIT_RTPRIO)")
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    first, runaway_us = out.stdout.strip().splitlines()
    ok, threads, policies = first.split(maxsplit=2)
    assert ok == "True" and int(threads) >= 3
    assert policies == f"[{os.SCHED_FIFO}]", out.stdout
    # A thread spinning on the real-time policy is stopped, not left holding a core.
    assert int(runaway_us) == 2_000_000


SPIN = """
import time
from townhall.stage.process import realtime_clock
assert realtime_clock(10, runaway_s=0.3)
while True:
    pass
"""


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling API")
def test_a_spinning_real_time_stage_is_stopped_by_the_kernel() -> None:
    if not _permitted():
        pytest.skip("SCHED_FIFO is not permitted here (needs CAP_SYS_NICE or RLIMIT_RTPRIO)")
    done = subprocess.run([sys.executable, "-c", SPIN], capture_output=True, timeout=30)
    assert done.returncode in (-signal.SIGXCPU, -signal.SIGKILL), done


def test_priority_0_leaves_the_policy_alone() -> None:
    assert realtime_clock(0) is False
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
