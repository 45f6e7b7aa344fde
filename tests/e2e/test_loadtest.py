"""A real crowd against a real townhall: ``townhall serve`` in a subprocess, a tone bot
on stage, and 2,000 Ogg and LL-HLS listeners from the load generator."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from townhall.bench.stack import LiveSpace, live_space
from townhall.loadtest import Arrival, LoadPlan, Mix, run_loadtest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def space() -> Iterator[LiveSpace]:
    with live_space() as s:
        yield s


def test_a_flash_crowd_of_2000_mixed_listeners_all_hear_the_program(space: LiveSpace) -> None:
    plan = LoadPlan(
        space.ogg_url,
        2_000,
        Arrival.FLASH,
        over_s=3.0,
        duration_s=8.0,
        mix=Mix.MIXED,
        processes=2,
        server_pid=space.server_pid,
    )
    report = run_loadtest(plan, progress=None)
    rows = report.rows()
    assert not report.watchdog_fired
    assert set(rows) == {"ogg", "hls", "all"}
    everyone = rows["all"]
    assert everyone["failures"] == {}
    assert (everyone["listeners"], everyone["connected"], everyone["failed"]) == (2000, 2000, 0)
    assert everyone["with_media"] == 2000
    assert rows["ogg"]["listeners"] == rows["hls"]["listeners"] == 1000
    assert 0 < everyone["first_audio_p50_s"] <= everyone["first_audio_p99_s"] < 5.0
    assert (
        0 <= everyone["lateness_p50_s"] <= everyone["lateness_p99_s"] <= everyone["lateness_max_s"]
    )
    # 32 kbit/s for the ~5 s each listener stays is about 20 kB; far less means no audio.
    assert rows["ogg"]["bytes_per_listener"] > 10_000
    assert rows["hls"]["bytes_per_listener"] > 10_000
    assert report.server is not None and report.server.cpu_mean is not None
    json.dumps(report.to_json())  # the --json report is plain JSON


def test_the_command_refuses_a_remote_target(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "townhall",
            "loadtest",
            "http://192.0.2.1:8001/live/x.ogg",
            "--listeners",
            "1",
            "--duration",
            "2",
            "--over",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "not loopback" in out.stderr


def test_the_command_prints_a_report_and_writes_json(space: LiveSpace, tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "townhall",
            "loadtest",
            space.ogg_url,
            "--listeners",
            "50",
            "--arrival",
            "burst",
            "--over",
            "1",
            "--duration",
            "3",
            "--mix",
            "ogg",
            "--json",
            str(report_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "lateness_p99_s" in out.stdout
    assert "connected" in out.stderr  # the per-second progress lines
    assert json.loads(report_file.read_text())["results"]["all"]["connected"] == 50
