"""The fault benchmark's pure parts: statistics, verdicts, metrics text, recording holes,
the process table and who replaced whom."""

from __future__ import annotations

import itertools
import threading

import pytest

from benchmarks.faults import (
    AUDIBLE_SUSTAIN_FRAMES,
    BACK_SUSTAIN_FRAMES,
    TONES,
    Target,
    _heard_again,
    _worst_back,
    hole_at,
    metric_max,
    percentile,
    recordings_setting,
    replay_timeline,
    silent_stretches,
    summarise,
    verdict,
)
from benchmarks.harness.probe import Frame, FrameLog
from benchmarks.harness.processes import ServeProcess, parse_process_table, replacement
from tests.unit.test_bench_probe import incarnation


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
    assert verdict(target, summarise([None])) == "FAIL"  # it never came back
    assert verdict(target, summarise([None]), "tick_gap_s") == "n/a"  # metric not served
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


class _HeardProbe:
    """What ``_worst_back`` reads of a probe: its lock and its frame log."""

    def __init__(self, log: FrameLog) -> None:
        self.lock = threading.Lock()
        self.log = log


def _log_with(*runs: tuple[float, int, tuple[bool, bool]]) -> FrameLog:
    log = FrameLog(TONES)
    for start, n, tones in runs:
        for i in range(n):
            log.add(Frame(start + i * 0.02, start + i * 0.02, 1, tones))
    return log


def test_the_worst_probe_decides_when_the_program_is_back() -> None:
    both, host_only = (True, True), (True, False)
    early = _HeardProbe(_log_with((100.5, 20, host_only), (101.0, 20, both)))
    late = _HeardProbe(_log_with((102.0, 20, host_only), (103.0, 20, both)))
    probes = [early, late]
    audible = _worst_back(probes, 100.0, 1.0, any_=True, sustain=AUDIBLE_SUSTAIN_FRAMES)  # type: ignore[arg-type]
    both_back = _worst_back(probes, 100.0, 1.0, any_=False, sustain=BACK_SUSTAIN_FRAMES)  # type: ignore[arg-type]
    assert audible == pytest.approx(2.0)
    assert both_back == pytest.approx(3.0)
    silent = _HeardProbe(FrameLog(TONES))
    assert _worst_back([early, silent], 100.0, 0.2, any_=True, sustain=5) is None  # type: ignore[list-item]


def test_a_replay_of_restarted_streams_that_restart_their_granules_is_detected() -> None:
    data = incarnation(440) + incarnation(660)
    media, toned, streams = replay_timeline(data)
    assert streams == 2
    assert any(b < a for a, b in itertools.pairwise(media))  # granules start over at 0
    assert sum(toned) >= 2 * 45


def test_frames_in_flight_at_a_stage_kill_do_not_count_as_back() -> None:
    log = FrameLog(TONES)
    log.streams.append((90.0, 1))
    for i in range(30):  # the old stage's last frames, arriving just after the kill at 100
        log.add(Frame(100.0 + i * 0.01, 50.0 + i * 0.02, 1, (True, True)))
    assert _heard_again(log, 100.0, True, AUDIBLE_SUSTAIN_FRAMES, "kill") == pytest.approx(100.0)
    assert _heard_again(log, 100.0, True, AUDIBLE_SUSTAIN_FRAMES, "new_stream") is None
    log.streams.append((101.5, 2))
    for i in range(10):
        log.add(Frame(101.6 + i * 0.02, 52.0 + i * 0.02, 2, (True, True)))
    assert _heard_again(log, 100.0, True, 5, "new_stream") == pytest.approx(101.6)


def test_a_killed_workers_listener_is_back_only_on_a_new_connection() -> None:
    log = FrameLog(TONES)
    log.connects.append(90.0)
    for i in range(10):  # read from the socket's buffer after the kill
        log.add(Frame(100.0 + i * 0.02, 10.0 + i * 0.02, 1, (True, True)))
    assert _heard_again(log, 100.0, True, 5, "reconnect") is None
    log.connects.append(100.9)
    for i in range(10):
        log.add(Frame(101.0 + i * 0.02, 11.0 + i * 0.02, 1, (True, True)))
    assert _heard_again(log, 100.0, True, 5, "reconnect") == pytest.approx(101.0)
