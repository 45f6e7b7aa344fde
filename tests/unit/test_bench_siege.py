"""The siege benchmark's pure core: attack plans, the count's truth, figures and verdicts."""

from __future__ import annotations

import pytest

from benchmarks.harness.attacks import ONE_ADDRESS, source_address
from benchmarks.siege import (
    ATTACKS,
    BASELINE,
    MIB,
    Figures,
    SiegePlan,
    SiegeReport,
    Targets,
    anonymous_clients,
    attack_orders,
    count_holds,
    idle_target,
    parse_attacks,
    truth_range,
    verdicts,
)

PORTS = (8000, 8001)


def orders(plan: SiegePlan, attack: str) -> list:  # type: ignore[type-arg]
    return attack_orders(plan, attack, PORTS, "space1", "/live/space1/index.m3u8", "tok")


def test_the_baseline_runs_first_and_unknown_attacks_are_named() -> None:
    assert parse_attacks("hands,slowloris") == (BASELINE, "slowloris", "hands")
    assert parse_attacks(" forged-sids , ") == (BASELINE, "forged-sids")
    with pytest.raises(ValueError, match="nope"):
        parse_attacks("slowloris,nope")


def test_forged_sessions_run_last_as_they_linger_in_the_count() -> None:
    assert ATTACKS[0] == BASELINE
    assert ATTACKS[-1] == "forged-sids"


def test_the_baseline_has_no_attacker() -> None:
    assert orders(SiegePlan(), BASELINE) == []


def test_idle_connections_are_split_over_processes_within_their_file_limit() -> None:
    split = orders(SiegePlan(idle_connections=20_000), "idle-spread")
    assert len(split) == 3
    assert sum(o.count for o in split) == 20_000
    assert all(o.count <= 9_000 for o in split)
    assert [o.shard for o in split] == [0, 1, 2]
    assert not any(o.one_address for o in split)
    assert all(o.one_address for o in orders(SiegePlan(idle_connections=100), "idle-one"))


def test_every_attack_is_bounded_in_time_and_count() -> None:
    plan = SiegePlan.quick()
    for attack in ATTACKS[1:]:
        for o in orders(plan, attack):
            assert o.seconds == plan.attack_s
            assert 0 < o.count <= 20_000
            assert o.control_port == 8000 and o.audience_port == 8001


def test_quick_is_shorter_and_smaller_and_takes_overrides() -> None:
    quick, full = SiegePlan.quick(), SiegePlan()
    assert quick.attack_s < full.attack_s
    assert quick.idle_connections < full.idle_connections
    assert quick.hand_tokens < full.hand_tokens
    assert SiegePlan.quick(attack_s=2.0).attack_s == 2.0


def test_the_idle_attack_stops_at_the_control_processs_connection_cap() -> None:
    printed = (
        "[stage]\nmax_connections = 5\n[control]\nmax_body_bytes = 1\nmax_connections = 4_096\n"
    )
    assert idle_target(printed, 20_000) == 4_096
    assert idle_target("[control]\nmax_body_bytes = 65_536\n", 20_000) == 20_000
    assert idle_target("[control]\nmax_connections = 50_000\n", 20_000) == 20_000
    assert idle_target("[control]\nmax_connections = 0\n", 20_000) == 20_000  # derived


def test_source_addresses_are_loopback_distinct_and_never_network_or_broadcast() -> None:
    addresses = [source_address(11, i) for i in range(20_000)]
    assert len(set(addresses)) == 20_000
    for a in addresses:
        octets = [int(x) for x in a.split(".")]
        assert octets[0] == 127 and octets[1] == 11
        assert 1 <= octets[3] <= 254
    assert ONE_ADDRESS not in addresses


def test_truth_counts_sessions_open_and_those_within_the_timeout_of_leaving() -> None:
    sessions = [(0.0, None), (10.0, None), (0.0, 50.0), (0.0, 20.0), (59.0, None)]
    # At 60 s with a 30 s timeout: two open since long, one left 10 s ago (counted),
    # one left 40 s ago (expired), one opened 1 s ago (maybe not reported yet).
    assert truth_range(sessions, 60.0, 30.0) == (3, 4)
    assert truth_range([], 60.0, 30.0) == (0, 0)
    # Near the timeout's edge a correct count may show it or not.
    assert truth_range([(0.0, 31.0)], 60.0, 30.0) == (0, 1)


def test_the_count_holds_within_tolerance_of_the_nearest_truth() -> None:
    assert count_holds(100, 100, 100, 0.02)
    assert count_holds(102, 100, 100, 0.02)
    assert not count_holds(103, 100, 100, 0.02)
    assert count_holds(13, 12, 14, 0.02)
    assert not count_holds(15, 12, 14, 0.02)
    assert not count_holds(10_825, 13, 13, 0.02)  # forged sessions
    assert not count_holds(None, 13, 13, 0.02)
    assert count_holds(0, 0, 0, 0.02)


def good() -> Figures:
    return Figures(
        "baseline",
        stage_gap_s=0.04,
        audio_share=0.999,
        join_s=[0.2, 0.3, 0.25],
        host_s=[0.02] * 40,
        rss_growth_bytes={"control": 2 * MIB, "stage:x": MIB},
        fd_growth={"control": 3},
        count_shown=10,
        truth=(10, 10),
    )


def test_figures_within_every_target_pass() -> None:
    v = verdicts(good(), Targets(), join_timeout_s=10.0)
    assert v == {k: True for k in ("audio", "gap", "join", "host", "memory", "count")}


@pytest.mark.parametrize(
    ("change", "missed"),
    [
        ({"stage_gap_s": 0.1}, "gap"),
        ({"audio_share": 0.994}, "audio"),
        ({"join_s": [0.2, None]}, "join"),  # a join that never heard counts as the timeout
        ({"host_s": [0.02] * 40 + [0.6]}, "host"),
        ({"rss_growth_bytes": {"control": 65 * MIB}}, "memory"),
        ({"count_shown": 117_911}, "count"),
        ({"count_shown": None}, "count"),
    ],
)
def test_each_target_missed_is_named(change: dict[str, object], missed: str) -> None:
    f = good()
    for k, val in change.items():
        setattr(f, k, val)
    v = verdicts(f, Targets(), join_timeout_s=10.0)
    assert v[missed] is False
    assert all(ok for k, ok in v.items() if k != missed)


def test_unmeasured_figures_are_neither_pass_nor_fail() -> None:
    f = Figures("slowloris")
    v = verdicts(f, Targets(), join_timeout_s=10.0)
    assert v["gap"] is None and v["audio"] is None and v["join"] is None and v["host"] is None


def test_join_percentiles_are_nearest_rank_with_failures_as_the_timeout() -> None:
    f = Figures("x", join_s=[0.1, 0.2, 0.3, None])
    assert f.join_percentile(50, 10.0) == 0.2
    assert f.join_percentile(99, 10.0) == 10.0
    assert Figures("x").join_percentile(99, 10.0) is None


def test_the_report_prints_a_row_per_attack_with_targets_and_what_was_missed() -> None:
    bad = good()
    bad.attack, bad.count_shown, bad.host_s = "forged-sids", 10_825, [5.0]
    bad.attacker = [{"attack": "forged-sids", "opened": 20, "statuses": {"200": 10_814}}]
    report = SiegeReport(SiegePlan(), Targets(), [good(), bad])
    text = report.table()
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["attack", "gap", "ms"]
    assert lines[1].startswith("baseline") and lines[1].rstrip().endswith("-")
    assert lines[2].startswith("forged-sids") and lines[2].rstrip().endswith("host count")
    assert "10825/10!" in lines[2]
    assert "targets: gap < 100 ms, audio >= 99.5 %" in text
    assert "forged-sids: attacker: opened 20; answers 200 x10814" in text
    assert text.endswith("FAIL") and not report.passed
    assert SiegeReport(SiegePlan(), Targets(), [good()]).passed


def test_the_json_carries_each_phases_figures_and_verdicts() -> None:
    body = SiegeReport(SiegePlan(), Targets(), [good()]).to_json()
    (phase,) = body["phases"]
    assert phase["attack"] == "baseline" and phase["verdicts"]["count"] is True
    assert phase["join_p99_s"] == 0.3 and body["passed"] is True


def test_forged_ids_may_add_one_anonymous_listener_per_attacking_address_and_no_more() -> None:
    plan = SiegePlan()
    assert anonymous_clients(plan, "forged-sids") == plan.forged_sid_connections
    assert anonymous_clients(plan, "reactions") == 0
    # Honest listeners plus one per attacking address holds; one more (a forged id
    # counted) does not.
    hi = 16 + anonymous_clients(plan, "forged-sids")
    assert count_holds(hi, 16, hi, 0.0)
    assert not count_holds(hi + 1, 16, hi, 0.0)
