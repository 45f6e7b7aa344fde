"""The root configuration: one typed dataclass per component, combined here.

Set from defaults, then the environment (``TOWNHALL_<FIELD>``), then CLI flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from townhall.audience.server import AudienceConfig
from townhall.control.config import ControlConfig
from townhall.recorder import RecorderConfig
from townhall.stage.runtime import StageConfig


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    control_port: int = 8000
    audience_port: int = 8001
    data_dir: Path = Path("./townhall-data")
    # The URLs people are given; default to the listening address.
    public_control_url: str = ""
    public_audience_url: str = ""
    max_body_bytes: int = 64 * 1024
    audience_workers: int = 0
    stage: StageConfig = field(default_factory=StageConfig)
    audience: AudienceConfig = field(default_factory=AudienceConfig)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    control: ControlConfig = field(default_factory=ControlConfig)

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


_SCALARS = {
    "host",
    "control_port",
    "audience_port",
    "data_dir",
    "public_control_url",
    "public_audience_url",
    "max_body_bytes",
    "audience_workers",
}


def from_env(base: ServerConfig, env: dict[str, str] | None = None) -> ServerConfig:
    env = dict(os.environ) if env is None else env
    changes: dict[str, object] = {}
    for f in fields(base):
        raw = env.get(f"TOWNHALL_{f.name.upper()}")
        if f.name in _SCALARS and raw is not None:
            changes[f.name] = _coerce(getattr(base, f.name), raw)
    return replace(base, **changes)  # type: ignore[arg-type]


def with_stream_fanout(base: ServerConfig, **changes: float | int) -> ServerConfig:
    """Set fields of the Ogg stream's FanoutConfig (e.g. ``flush_interval_s``)."""
    if not changes:
        return base
    channel = base.audience.channel
    fanout = replace(channel.fanout, **changes)  # type: ignore[arg-type]
    audience = replace(base.audience, channel=replace(channel, fanout=fanout))
    return replace(base, audience=audience)


def _coerce(current: object, raw: str) -> object:
    if isinstance(current, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, Path):
        return Path(raw)
    return raw
