"""The fault benchmark's pure parts: statistics, verdicts, metrics text, recording holes,
the process table and who replaced whom."""

from __future__ import annotations

import pytest

from benchmarks.faults import (
    Target,
    hole_at,
    metric_max,
    percentile,
    recordings_setting,
    silent_stretches,
    summarise,
    verdict,
)
from benchmarks.harness.processes import ServeProcess, parse_process_table, replacement


def test_percentile_is_nearest_rank() -> None:
    ten = [float(i) for i in range(1, 11)]
    assert percentile(ten, 50) == 5.0
    assert percentile(ten, 99) == 10.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_a_kill_not_measured_fails_its_target() -> None:
    target = Target("p99", "<=", 3.0)
    assert verdict(target, summarise([1.0, 2.0, 2.5])) == "PASS"
    assert verdict(target, summarise([1.0, 2.0, 3.5])) == "FAIL"
    assert verdict(target, summarise([1.0, None])) == "FAIL"  # one timed out
    assert verdict(target, summarise([None])) == "n/a"
    assert verdict(None, summarise([1.0])) == "-"
    assert verdict(Target("max", "<", 0.1), summarise([0.1])) == "FAIL"
    assert verdict(Target("max", ">=", 1), summarise([1.0])) == "PASS"


def test_metric_max_reads_any_labels_and_only_that_name() -> None:
    text = "\n".join(
        [
            "# HELP townhall_stage_longest_tick_gap_seconds x",
            'townhall_stage_longest_tick_gap_seconds{space="a"} 0.021',
            'townhall_stage_longest_tick_gap_seconds{space="b"} 0.043',
            "townhall_stage_longest_tick_gap_seconds_total 9",
        ]
    )
    assert metric_max(text, "townhall_stage_longest_tick_gap_seconds") == 0.043
    assert metric_max(text, "townhall_recording_paused") is None
    assert metric_max("townhall_recording_paused 1\n", "townhall_recording_paused") == 1.0


def test_recording_holes_include_media_jumps_and_silence() -> None:
    step = 0.02
    media = [i * step for i in range(100)]  # 0 .. 1.98 s with tone
    toned = [True] * 100
    media += [3.0 + i * step for i in range(50)]  # media jumps 1.98 → 3.0
    toned += [False] * 10 + [True] * 40  # then 0.2 s of silence
    stretches = silent_stretches(media, toned)
    assert len(stretches) == 1
    start, end = stretches[0]
    assert start == pytest.approx(1.98)
    assert end == pytest.approx(3.18)
    assert hole_at(stretches, 2.5) == pytest.approx(1.2)
    assert hole_at(stretches, 30.0) == 0.0


def test_recordings_setting_is_found_only_in_the_recorder_table() -> None:
    assert recordings_setting("[recorder]\nfsync_interval_s = 2.0\n") is None
    assert recordings_setting('[recorder]\ndir = "/x"\n[room]\n') == "recorder.dir"
    assert recordings_setting('[audience]\ndir = "/x"\n') is None


def test_process_table_from_healthz() -> None:
    body = {
        "status": "ok",
        "processes": [
            {"role": "supervisor", "name": "supervisor", "pid": 10, "started_at": 1.5},
            {"role": "stage", "name": "stage:abc", "pid": 11, "restarts": 2, "last_exit": "x"},
            {"role": "audience", "name": "audience:1", "pid": 12, "started_at_unix_s": 3.0},
            {"oops": True},
        ],
    }
    table = parse_process_table(body)
    assert table is not None
    assert [p.name for p in table] == ["supervisor", "stage:abc", "audience:1"]
    assert table[1].restarts == 2 and table[1].last_exit == "x"
    assert table[2].started_at == 3.0
    assert parse_process_table({"ok": True, "pid": 5}) is None
    assert parse_process_table([1, 2]) is None


def test_replacement_by_name_or_by_a_new_pid_of_the_role() -> None:
    before = [ServeProcess("stage", "stage:a", 11), ServeProcess("control", "control", 12)]
    victim = before[0]
    assert replacement(before, before, victim) is None
    after = [ServeProcess("stage", "stage:a", 21), ServeProcess("control", "control", 12)]
    assert replacement(before, after, victim) == after[0]
    # names that carry pids (the psutil fallback): a new pid of that role
    workers = [
        ServeProcess("audience", "audience:pid5", 5),
        ServeProcess("audience", "audience:pid6", 6),
    ]
    later = [workers[1], ServeProcess("audience", "audience:pid9", 9)]
    assert replacement(workers, later, workers[0]) == later[1]
    assert replacement(workers, [workers[1]], workers[0]) is None
