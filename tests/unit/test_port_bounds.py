"""The pure cores of the bounded ports: the descriptor budget and its caps, the ledger
of connections per address, trusted proxies, and list settings."""

from __future__ import annotations

import pytest

from townhall.config import ServerConfig, load
from townhall.fdbudget import (
    ADDRESS_SHARE_DIVISOR,
    RUNTIME_FDS,
    ConnectionCaps,
    ConnectionLedger,
    FdBudget,
    nofile_limit,
    raise_nofile_limit,
)
from townhall.proxies import TrustedProxies, parse_networks
from townhall.settings import Assignment, SettingError, from_mapping, to_toml

# -- the budget ---------------------------------------------------------------------


def test_connections_are_the_limit_less_every_reserve() -> None:
    budget = FdBudget(1_000, {"journal": 16, "link": 4})
    assert budget.reserved == RUNTIME_FDS + 20
    assert budget.connections == 1_000 - RUNTIME_FDS - 20
    caps = budget.caps()
    assert caps.max_connections == budget.connections
    assert caps.max_address_connections == budget.connections // ADDRESS_SHARE_DIVISOR


def test_a_configured_cap_can_lower_the_budget_but_never_raise_it() -> None:
    budget = FdBudget(1_000, {"journal": 16})
    assert budget.caps(max_connections=100).max_connections == 100
    assert budget.caps(max_connections=50_000).max_connections == budget.connections


def test_one_address_never_gets_more_than_its_share_of_the_process() -> None:
    budget = FdBudget(10_000)
    share = budget.connections // ADDRESS_SHARE_DIVISOR
    assert budget.caps(max_address_connections=512).max_address_connections == 512
    assert budget.caps(max_address_connections=100_000).max_address_connections == share
    assert budget.caps(max_connections=40, max_address_connections=512) == ConnectionCaps(40, 10)


def test_a_tiny_limit_still_leaves_one_connection() -> None:
    assert FdBudget(10, {"journal": 16}).caps() == ConnectionCaps(1, 1)


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    import resource

    raised = raise_nofile_limit()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raised == nofile_limit()
    if hard != resource.RLIM_INFINITY:
        assert raised == hard


def test_the_budget_describes_itself_for_the_log() -> None:
    budget = FdBudget(700, {"journal": 16})
    line = budget.describe(budget.caps(max_address_connections=50))
    assert "limit 700" in line and "journal 16" in line and "50 from one address" in line


# -- the ledger ---------------------------------------------------------------------


def test_the_ledger_refuses_past_the_address_cap_and_admits_again_after_a_close() -> None:
    ledger = ConnectionLedger(ConnectionCaps(10, 2))
    assert ledger.admit("10.0.0.1") is None
    assert ledger.admit("10.0.0.1") is None
    assert ledger.admit("10.0.0.1") == "too many connections from your address"
    assert ledger.admit("10.0.0.2") is None  # another address is not affected
    ledger.release("10.0.0.1")
    assert ledger.admit("10.0.0.1") is None
    assert ledger.open == 3 and ledger.refused == 1


def test_the_ledger_refuses_past_the_process_cap_whoever_asks() -> None:
    ledger = ConnectionLedger(ConnectionCaps(3, 3))
    for n in range(3):
        assert ledger.admit(f"10.0.0.{n}") is None
    assert ledger.admit("10.0.0.9") == "this server is at its connection capacity"
    ledger.release("10.0.0.0")
    assert ledger.admit("10.0.0.9") is None


def test_the_ledger_forgets_an_address_with_its_last_connection() -> None:
    ledger = ConnectionLedger(ConnectionCaps(100, 5))
    for n in range(50):
        ledger.admit(f"10.0.{n}.1")
    for n in range(50):
        ledger.release(f"10.0.{n}.1")
    assert ledger.by_address == {} and ledger.open == 0


def test_a_trusted_proxy_counts_only_against_the_process_cap() -> None:
    proxies = TrustedProxies(["10.9.0.0/16"])
    ledger = ConnectionLedger(ConnectionCaps(5, 1), proxies.trusts)
    for _ in range(5):
        assert ledger.admit("10.9.3.4") is None
    assert ledger.admit("10.9.3.4") is not None  # the process cap still holds
    assert "10.9.3.4" not in ledger.by_address


# -- trusted proxies ----------------------------------------------------------------


def test_nobody_is_trusted_by_default() -> None:
    proxies = TrustedProxies()
    assert not proxies
    assert proxies.client("127.0.0.1", "203.0.113.7") == "127.0.0.1"


def test_the_header_counts_only_from_a_configured_proxy() -> None:
    proxies = TrustedProxies(["127.0.0.4", "10.0.0.0/8", "::1"])
    assert proxies.client("127.0.0.4", "203.0.113.7") == "203.0.113.7"
    assert proxies.client("127.0.0.5", "203.0.113.7") == "127.0.0.5"
    assert proxies.client("::1", "2001:db8::1") == "2001:db8::1"
    assert proxies.client("127.0.0.4", "") == "127.0.0.4"


def test_the_client_is_the_first_hop_from_the_right_we_cannot_vouch_for() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    # A client can prepend anything; only what our proxies appended is believed.
    assert proxies.client("10.0.0.1", "1.1.1.1, 203.0.113.7, 10.2.3.4") == "203.0.113.7"
    assert proxies.client("10.0.0.1", "10.1.1.1, 10.2.2.2") == "10.1.1.1"
    assert not proxies.trusts("not-an-address")


def test_a_bad_proxy_entry_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.x'"):
        parse_networks(["10.0.0.0/8", "10.0.0.x"])
    with pytest.raises(SettingError, match=r"control.trusted_proxies: '10\.0\.0\.x'"):
        load(env={"TOWNHALL_CONTROL__TRUSTED_PROXIES": "10.0.0.x"})


# -- list settings ------------------------------------------------------------------


def test_a_list_setting_reads_commas_from_the_environment_and_arrays_from_toml() -> None:
    config = load(env={"TOWNHALL_CONTROL__TRUSTED_PROXIES": " 10.0.0.0/8, ::1 ,"})
    assert config.control.trusted_proxies == ("10.0.0.0/8", "::1")
    config = from_mapping(ServerConfig(), {"audience": {"trusted_proxies": ["::1"]}}, "t")
    assert config.audience.trusted_proxies == ("::1",)
    with pytest.raises(SettingError, match="a list of strings"):
        from_mapping(ServerConfig(), {"control": {"trusted_proxies": [1, 2]}}, "t")


def test_a_list_setting_prints_as_a_toml_array_that_reads_back() -> None:
    config = load(flags=[Assignment("control.trusted_proxies", "10.0.0.0/8,::1", "--set")])
    text = to_toml(config)
    assert 'trusted_proxies = ["10.0.0.0/8", "::1"]' in text
    assert "trusted_proxies = []" in text  # the audience's, left empty
    import tomllib

    assert from_mapping(ServerConfig(), tomllib.loads(text), "printed") == config


def test_the_trusted_proxies_flag_sets_both_ports() -> None:
    from townhall.cli import _parser, server_config

    args = _parser().parse_args(["serve", "--trusted-proxies", "10.0.0.0/8"])
    config = server_config(args)
    assert config.control.trusted_proxies == ("10.0.0.0/8",)
    assert config.audience.trusted_proxies == ("10.0.0.0/8",)
