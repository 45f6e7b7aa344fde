"""The root configuration: one typed dataclass per component, combined in one tree.

Every setting is named by its path through the tree (``audience.channel.fanout.
flush_interval_s``) and set, in rising precedence, from the defaults below, a TOML file
whose tables mirror the tree, ``TOWNHALL_<PATH>`` environment variables (levels joined by
``__``) and flags. :mod:`townhall.settings` does the walking, so a field added to any
component config is settable at once, everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from townhall import settings
from townhall.audience.server import AudienceConfig
from townhall.cluster.config import ClusterConfig
from townhall.control.config import ControlConfig
from townhall.proxies import parse_networks
from townhall.recording.recorder import RecorderConfig
from townhall.room.counting import CounterConfig
from townhall.room.state import RoomConfig
from townhall.stage.runtime import StageConfig
from townhall.supervise.config import SupervisorConfig

ENV_PREFIX = "TOWNHALL_"
# Variables with the prefix that are not server settings: the ``space`` command's server
# and admin key, and where the pages find hls.js.
OTHER_ENV_NAMES = frozenset({"TOWNHALL_URL", "TOWNHALL_ADMIN_KEY", "TOWNHALL_HLS_JS"})


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    control_port: int = 8000
    audience_port: int = 8001
    data_dir: Path = Path("./townhall-data")
    # The URLs people are given; default to the listening address.
    public_control_url: str = ""
    public_audience_url: str = ""
    # Audience processes sharing the audience port (at least one: the audience never
    # runs in the same process as a stage).
    audience_workers: int = 1
    stage: StageConfig = field(default_factory=StageConfig)
    audience: AudienceConfig = field(default_factory=AudienceConfig)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    room: RoomConfig = field(default_factory=RoomConfig)
    counter: CounterConfig = field(default_factory=CounterConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def control_url(self) -> str:
        return self.public_control_url or f"http://{self.host}:{self.control_port}"

    @property
    def audience_url(self) -> str:
        return self.public_audience_url or f"http://{self.host}:{self.audience_port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "townhall.sqlite3"

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"


def from_env(base: ServerConfig, env: Mapping[str, str] | None = None) -> ServerConfig:
    """``base`` with every ``TOWNHALL_<PATH>`` variable of ``env`` (default: the process's)."""
    env = os.environ if env is None else env
    return settings.from_env(base, env, ENV_PREFIX, ignore=OTHER_ENV_NAMES)


def load(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Iterable[settings.Assignment] = (),
) -> ServerConfig:
    """The effective configuration: defaults < ``file`` (TOML) < ``env`` < ``flags``.

    Raises :class:`townhall.settings.SettingError` naming the key and the expected type.
    """
    config = ServerConfig()
    if file is not None:
        config = settings.from_toml_file(config, file)
    return check_proxies(settings.with_values(from_env(config, env), flags))


def check_proxies(config: ServerConfig) -> ServerConfig:
    """``config`` if every trusted proxy is an address or a CIDR network, else a
    SettingError naming the entry: a typo must not silently trust nobody (or anybody)."""
    for path, entries in (
        ("control.trusted_proxies", config.control.trusted_proxies),
        ("audience.trusted_proxies", config.audience.trusted_proxies),
    ):
        try:
            parse_networks(entries)
        except ValueError as e:
            raise settings.SettingError(f"{path}: {e}") from None
    return config


def to_toml(config: ServerConfig) -> str:
    return settings.to_toml(config)
