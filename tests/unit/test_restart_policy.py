"""The restart rate bound: at most N restarts per window per process name."""

from __future__ import annotations

from townhall.supervise.restart import RestartPolicy
from townhall.supervise.supervisor import exit_reason


def test_restarts_are_allowed_up_to_the_bound_then_wait_for_the_window() -> None:
    policy = RestartPolicy(max_restarts=3, window_s=60.0)
    assert [policy.allow("control", t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert not policy.allow("control", 3.0)
    assert policy.next_restart_at("control", 3.0) == 60.0  # the first leaves the window
    assert not policy.allow("control", 59.9)
    assert policy.allow("control", 60.0)
    assert policy.next_restart_at("control", 60.0) == 61.0


def test_the_bound_is_per_process_name() -> None:
    policy = RestartPolicy(max_restarts=1, window_s=10.0)
    assert policy.allow("stage:a", 0.0)
    assert not policy.allow("stage:a", 1.0)
    assert policy.allow("stage:b", 1.0)
    assert policy.next_restart_at("recorder", 1.0) == 1.0


def test_a_refused_restart_is_not_counted() -> None:
    policy = RestartPolicy(max_restarts=2, window_s=10.0)
    policy.allow("x", 0.0)
    policy.allow("x", 5.0)
    for t in (6.0, 7.0, 8.0):
        assert not policy.allow("x", t)
    assert policy.allow("x", 10.0)  # the refusals did not push the window out
    assert not policy.allow("x", 11.0)
    assert policy.allow("x", 15.0)


def test_zero_restarts_means_never() -> None:
    policy = RestartPolicy(max_restarts=0, window_s=10.0)
    assert policy.next_restart_at("x", 0.0) == float("inf")
    assert not policy.allow("x", 1e9)


def test_forgetting_a_name_clears_its_history() -> None:
    policy = RestartPolicy(max_restarts=1, window_s=10.0)
    policy.allow("stage:a", 0.0)
    policy.forget("stage:a")
    assert policy.allow("stage:a", 1.0)


def test_exit_reasons_name_the_signal_or_the_code() -> None:
    assert exit_reason(-9) == "killed by signal 9 (SIGKILL)"
    assert exit_reason(1) == "exit code 1"
    assert exit_reason(None) == "exit status unknown"


def test_a_process_that_had_been_serving_is_not_counted_as_a_crash_loop() -> None:
    policy = RestartPolicy(max_restarts=2, window_s=60.0, healthy_uptime_s=3.0)
    for now in (0.0, 5.0):
        assert policy.allow("stage:a", now)
    assert policy.next_restart_at("stage:a", 10.0) == 60.0  # two young deaths: bounded
    policy.ran("stage:a", uptime_s=8.0)  # this one had been serving
    assert policy.next_restart_at("stage:a", 10.0) == 10.0
    policy.ran("stage:a", uptime_s=0.5)  # dying in start-up keeps counting
    assert policy.allow("stage:a", 11.0) and policy.allow("stage:a", 12.0)
    assert not policy.allow("stage:a", 13.0)
