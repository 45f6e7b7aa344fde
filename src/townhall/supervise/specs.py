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
