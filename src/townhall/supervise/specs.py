"""What each child process of ``townhall serve`` is given at spawn (picklable)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from townhall.config import ServerConfig
from townhall.supervise.messages import OpenStage


@dataclass(frozen=True)
class ControlSpec:
    config: ServerConfig
    # The control port's listening socket, owned by the supervisor: connections queue in
    # its backlog while a control process restarts, instead of being refused.
    listen_socket: socket.socket


@dataclass(frozen=True)
class StageSpec:
    config: ServerConfig
    open: OpenStage
    incarnation: int  # 0 for the first start of this Space's stage, +1 per restart
    # One past the last LL-HLS part the hub saw for this Space (None: none yet).
    next_part_seq: int | None = None


@dataclass(frozen=True)
class RecorderSpec:
    config: ServerConfig


@dataclass(frozen=True)
class StandbySpec:
    """A stage process started ahead of need: it imports everything, opens its link and
    waits for ``AssignStage``. Taking one up saves a replacement stage the start-up of a
    fresh interpreter (most of a stage restart's time)."""

    config: ServerConfig


@dataclass(frozen=True)
class AssignStage:
    """supervisor → a standby stage process: become this Space's stage."""

    spec: StageSpec
