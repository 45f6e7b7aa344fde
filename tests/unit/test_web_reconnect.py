"""The browser's reconnect cores (web/common.js), run in Node: the same schedule as
the Python clients', and the stage watchdog's decisions."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from townhall.peers.backoff import reconnect_delay

COMMON_JS = Path(__file__).resolve().parents[2] / "src" / "townhall" / "web" / "common.js"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

SCRIPT = """
globalThis.window = {};
const m = await import(process.argv[1]);
const at = (share) => () => share;
const conn = (o) => ({createdAt: 0, connectedAt: 1000, lastPacketAt: null, state: "connected",
                      stateSince: 1000, ...o});
console.log(JSON.stringify({
  low: [...Array(8).keys()].map((n) => m.reconnectDelay(n, null, at(0))),
  high: [...Array(8).keys()].map((n) => m.reconnectDelay(n, null, at(1))),
  retryAfterWins: m.reconnectDelay(0, 5, at(0.5)),
  retryAfterShorter: m.reconnectDelay(5, 1, at(0.5)),
  retry: [0, 409, 503, 500, 401, 403, 404, 400].map(m.worthRetrying),
  lost: {
    hearing: m.stageLost({now: 5000, ...conn({lastPacketAt: 4900})}),
    silent: m.stageLost({now: 5000, ...conn({lastPacketAt: 2900})}),
    freshSilent: m.stageLost({now: 2900, ...conn({})}),
    freshTooLong: m.stageLost({now: 3100, ...conn({})}),
    closed: m.stageLost({now: 1001, ...conn({lastPacketAt: 1000, state: "closed"})}),
    disconnectedBriefly: m.stageLost({now: 2500, ...conn({lastPacketAt: 2400,
                                      state: "disconnected", stateSince: 1000})}),
    disconnectedLong: m.stageLost({now: 3100, ...conn({lastPacketAt: 3000,
                                   state: "failed", stateSince: 1000})}),
    neverConnected: m.stageLost({now: 10500, ...conn({connectedAt: null, state: "connecting"})}),
  },
}));
"""


@pytest.fixture(scope="module")
def js() -> dict[str, object]:
    out = subprocess.run(
        ["node", "--input-type=module", "-e", SCRIPT, COMMON_JS.as_uri()],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


class Share(random.Random):
    def __init__(self, share: float) -> None:
        super().__init__(0)
        self.share = share

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.share


def test_the_browser_schedule_is_the_python_one(js: dict[str, object]) -> None:
    assert js["low"] == [reconnect_delay(n, Share(0.0)) for n in range(8)]
    assert js["high"] == pytest.approx([reconnect_delay(n, Share(1.0)) for n in range(8)])
    assert js["retryAfterWins"] == 5
    assert js["retryAfterShorter"] == pytest.approx(7.5)


def test_the_browser_retries_what_the_bot_retries(js: dict[str, object]) -> None:
    assert js["retry"] == [True, True, True, True, False, False, False, False]


def test_the_browser_watchdog(js: dict[str, object]) -> None:
    lost = js["lost"]
    assert isinstance(lost, dict)
    assert lost["hearing"] is None
    assert "no audio" in lost["silent"]
    assert lost["freshSilent"] is None
    assert "no audio" in lost["freshTooLong"]
    assert "closed" in lost["closed"]
    assert lost["disconnectedBriefly"] is None
    assert "failed" in lost["disconnectedLong"]
    assert "never opened" in lost["neverConnected"]
