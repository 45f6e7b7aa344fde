"""The configuration tree and its one loader: defaults < TOML file < environment < flags."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from townhall.cli import _parser, main, server_config
from townhall.config import ServerConfig, load, to_toml
from townhall.control.config import ControlConfig
from townhall.room.counting import CounterConfig
from townhall.room.state import RoomConfig
from townhall.settings import (
    Assignment,
    SettingError,
    from_env,
    from_mapping,
    parse_assignment,
    settings,
    with_values,
)

FLUSH = "audience.channel.fanout.flush_interval_s"
FLUSH_ENV = "TOWNHALL_AUDIENCE__CHANNEL__FANOUT__FLUSH_INTERVAL_S"


def flags(*argv: str) -> ServerConfig:
    return server_config(_parser().parse_args(["serve", *argv]))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "townhall.toml"
    path.write_text(text)
    return path


# -- the tree ------------------------------------------------------------------------


def test_the_root_holds_every_component_config() -> None:
    config = ServerConfig()
    assert config.room == RoomConfig()
    assert config.counter == CounterConfig()
    assert config.control == ControlConfig()
    paths = {s.path for s in settings(ServerConfig)}
    assert {"control.max_body_bytes", "room.max_participants", "counter.max_sessions"} <= paths
    assert {"stage.member.max_inbox_frames", "recorder.fsync_interval_s", FLUSH} <= paths
    assert "max_body_bytes" not in paths  # a control-plane bound, under control


# A bound names its unit, or (a count) the thing it counts.
_UNITS = re.compile(
    r"_(s|bytes|bps|frames|ticks|chars|messages|segments|segment|fraction|port|workers"
    r"|nice|listeners|waiters|participants|cohosts|sessions|keys|spaces|seats|actions"
    r"|connections|restarts|pages|channels|responses|processes|replicas|leases|hands|nodes"
    r"|priority)$"
)
# Bounds whose names do not say their unit yet (none: keep it so).
_UNNAMED: set[str] = set()


def test_every_numeric_bound_is_named_with_its_unit() -> None:
    numeric = [s.path for s in settings(ServerConfig) if s.type in (int, float)]
    unnamed = {p for p in numeric if not _UNITS.search(p.rsplit(".", 1)[-1])}
    assert unnamed == _UNNAMED


# -- defaults and the TOML file ------------------------------------------------------


def test_defaults_without_any_source() -> None:
    assert load(env={}) == ServerConfig()


def test_printed_config_reads_back_unchanged() -> None:
    changed = with_values(
        ServerConfig(),
        [
            Assignment("data_dir", "/srv/th", "test"),
            Assignment("public_control_url", 'https://x.example/"q"\\\x7f', "test"),
            Assignment(FLUSH, "1.0", "test"),
        ],
    )
    for config in (ServerConfig(), changed):
        assert from_mapping(ServerConfig(), tomllib.loads(to_toml(config)), "x") == config


def test_file_tables_mirror_the_tree(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "control_port = 9000\n"
        "data_dir = '/srv/th'\n"
        "[audience.channel.fanout]\nflush_interval_s = 1\n"  # an integer is a number
        "[control.signin_limit]\nrate_per_s = 0.5\n",
    )
    config = load(file=path, env={})
    assert config.control_port == 9000
    assert config.data_dir == Path("/srv/th")
    assert config.audience.channel.fanout.flush_interval_s == 1.0
    assert config.control.signin_limit.rate_per_s == 0.5
    # Untouched neighbours keep their defaults.
    assert config.control.signin_limit.burst_actions == ControlConfig().signin_limit.burst_actions
    assert config.audience.channel.events == ServerConfig().audience.channel.events


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[roomz]\nmax_stage_seats = 3\n",
            "no setting named 'roomz.max_stage_seats'; did you mean 'room.max_stage_seats'",
        ),
        ("room = 3\n", "room is a table"),
        ("[control_port]\nx = 1\n", "control_port is a setting, not a table"),
        ("control_port = '8000'\n", "control_port must be an integer, got '8000'"),
        ("[stage]\nmax_offer_bytes = 1.5\n", "stage.max_offer_bytes must be an integer"),
        ("[room]\nmax_stage_seats = true\n", "room.max_stage_seats must be an integer, got True"),
        ("host = 1\n", "host must be a string, got 1"),
        ("[room\n", "is not valid TOML"),
    ],
)
def test_a_bad_file_names_the_key_and_the_type(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingError, match=re.escape(message)):
        load(file=write(tmp_path, text), env={})


def test_a_missing_file_is_a_setting_error(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="cannot read the config file"):
        load(file=tmp_path / "absent.toml", env={})


# -- the environment -----------------------------------------------------------------


def test_environment_paths_join_levels_with_double_underscores() -> None:
    config = load(
        env={
            "TOWNHALL_CONTROL_PORT": "9000",
            FLUSH_ENV: "1.5",
            "TOWNHALL_CONTROL__MAX_BODY_BYTES": "1024",
            "TOWNHALL_DATA_DIR": "/srv/th",
            "PATH": "/usr/bin",  # without the prefix: not ours
        }
    )
    assert config.control_port == 9000
    assert config.audience.channel.fanout.flush_interval_s == 1.5
    assert config.control.max_body_bytes == 1024
    assert config.data_dir == Path("/srv/th")


def test_other_programs_variables_are_left_alone() -> None:
    env = {"TOWNHALL_URL": "http://x", "TOWNHALL_ADMIN_KEY": "k", "TOWNHALL_HLS_JS": "/x.js"}
    assert load(env=env) == ServerConfig()


def test_a_misspelt_variable_is_an_error_with_the_right_name() -> None:
    with pytest.raises(SettingError, match=f"did you mean {FLUSH_ENV}"):
        load(env={"TOWNHALL_AUDIENCE_CHANNEL_FANOUT_FLUSH_INTERVAL_S": "1"})


def test_a_bad_variable_value_names_the_variable_and_the_type() -> None:
    with pytest.raises(SettingError, match=f"{FLUSH_ENV}: {FLUSH} must be a number, got 'fast'"):
        load(env={FLUSH_ENV: "fast"})


# -- coercion ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Leaf:
    on: bool = False
    where: Path = Path("/tmp")


@dataclass(frozen=True)
class _Tree:
    count: int = 1
    leaf: _Leaf = field(default_factory=_Leaf)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("Yes", True), ("on", True), ("false", False), ("0", False)],
)
def test_booleans_from_text(raw: str, expected: bool) -> None:
    config = with_values(_Tree(), [Assignment("leaf.on", raw, "test")])
    assert config.leaf.on is expected


def test_a_word_that_is_no_boolean_is_refused() -> None:
    with pytest.raises(SettingError, match=r"leaf.on must be a boolean \(true or false\)"):
        with_values(_Tree(), [Assignment("leaf.on", "maybe", "test")])


def test_paths_from_text_and_an_empty_path_is_refused() -> None:
    config = with_values(_Tree(), [Assignment("leaf.where", "data/here", "test")])
    assert config.leaf.where == Path("data/here")
    with pytest.raises(SettingError, match=re.escape("leaf.where must be a path")):
        with_values(_Tree(), [Assignment("leaf.where", "", "test")])


def test_the_environment_walks_any_tree() -> None:
    config = from_env(_Tree(), {"APP_COUNT": "3", "APP_LEAF__ON": "true"}, "APP_")
    assert config == _Tree(count=3, leaf=_Leaf(on=True))


def test_a_field_of_an_unsupported_type_is_a_programming_error() -> None:
    @dataclass(frozen=True)
    class Odd:
        names: list[str] = field(default_factory=list)

    with pytest.raises(TypeError, match="cannot have type"):
        settings(Odd)


# -- flags ---------------------------------------------------------------------------


def test_set_reaches_any_path() -> None:
    config = flags("--set", f"{FLUSH}=1.0", "--set", "room.max_participants=5000")
    assert config.audience.channel.fanout.flush_interval_s == 1.0
    assert config.room.max_participants == 5000


def test_named_flags_are_aliases_of_their_paths() -> None:
    config = flags(
        "--host=0.0.0.0",
        "--control-port=9000",
        "--audience-port=9001",
        "--data-dir=/srv/th",
        "--public-control-url=https://th.example",
        "--public-audience-url=https://listen.example",
        "--audience-workers=2",
        "--audience-worker-nice=0",
        "--stream-flush-interval-s=1",
        "--max-listeners=7",
    )
    assert (config.host, config.control_port, config.audience_port) == ("0.0.0.0", 9000, 9001)
    assert config.data_dir == Path("/srv/th")
    assert config.control_url == "https://th.example"
    assert config.audience_url == "https://listen.example"
    assert (config.audience_workers, config.audience.worker_nice) == (2, 0)
    assert config.audience.channel.fanout.flush_interval_s == 1.0
    assert config.audience.channel.fanout.max_listeners == 7


def test_the_last_flag_for_a_setting_wins() -> None:
    assert flags("--control-port", "1", "--set", "control_port=2").control_port == 2
    assert flags("--set", "control_port=2", "--control-port", "1").control_port == 1


def test_a_bad_flag_names_the_flag_and_the_type() -> None:
    with pytest.raises(SettingError, match="--control-port: control_port must be an integer"):
        flags("--control-port", "abc")
    with pytest.raises(SettingError, match=re.escape("did you mean 'room.max_participants'")):
        flags("--set", "room.max_participant=1")


def test_an_assignment_needs_an_equals_sign() -> None:
    assert parse_assignment(" room.max_stage_seats = 3") == Assignment(
        "room.max_stage_seats", " 3", "--set"
    )
    with pytest.raises(SettingError, match=re.escape("expected path.to.setting=value")):
        parse_assignment("room.max_stage_seats")


# -- precedence and the command ------------------------------------------------------


def test_precedence_is_defaults_then_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "control_port = 1\naudience_port = 1\nhost = 'file'\n")
    monkeypatch.setenv("TOWNHALL_AUDIENCE_PORT", "2")
    monkeypatch.setenv("TOWNHALL_HOST", "env")
    config = flags("--config", str(path), "--host", "flag")
    assert (config.control_port, config.audience_port, config.host) == (1, 2, "flag")
    assert config.data_dir == ServerConfig().data_dir


def test_print_config_prints_the_effective_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FLUSH_ENV, "1.0")
    path = write(tmp_path, "[room]\nmax_stage_seats = 5\n")
    assert main(["serve", "--config", str(path), "--print-config", "--control-port", "9"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["control_port"] == 9
    assert printed["room"]["max_stage_seats"] == 5
    assert printed["audience"]["channel"]["fanout"]["flush_interval_s"] == 1.0


def test_a_bad_setting_exits_2_with_a_message_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--set", "room.max_stage_seats=many", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "townhall serve: error: --set: room.max_stage_seats must be an integer, got 'many'\n"
    )


def test_a_malformed_set_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--set", "room.max_stage_seats"])
    assert exited.value.code == 2
    assert "expected path.to.setting=value" in capsys.readouterr().err
