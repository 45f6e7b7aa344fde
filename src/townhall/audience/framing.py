"""What crosses an audience worker's socket to the main process, and how it is framed.

Framing: a 4-byte big-endian length, then a pickled message. The main process sends
``FeedMessage``s; the worker sends ``WorkerReady`` once it listens on the port, then
presence reports (``StreamOpened``, ``StreamClosed``, ``SessionSeen``) and, every
``stats_every_s``, ``WorkerStats``.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any

from townhall.audience.plane import ChannelStats, ListenerPresence

_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class WorkerReady:
    """A worker's first word back: it listens on the shared port."""


@dataclass(frozen=True)
class StreamOpened:
    space_id: str
    session_id: str
    conn_id: str  # unique across workers: the worker's pid is part of it


@dataclass(frozen=True)
class StreamClosed:
    space_id: str
    session_id: str
    conn_id: str
    session_ended: bool


@dataclass(frozen=True)
class SessionSeen:
    """An HLS player polled its playlist (deduplicated per reporting period)."""

    space_id: str
    session_id: str


# A worker's listener presence, for the main process's honest counters.
PresenceReport = StreamOpened | StreamClosed | SessionSeen


@dataclass(frozen=True)
class WorkerStats:
    """A worker's fan-out state, reported periodically for the main's /metrics."""

    channels: tuple[ChannelStats, ...]
    loop_lag_s: float


def apply_presence(presence: ListenerPresence, report: PresenceReport) -> None:
    match report:
        case StreamOpened(space_id, session_id, conn_id):
            presence.stream_opened(space_id, session_id, conn_id)
        case StreamClosed(space_id, session_id, conn_id, session_ended):
            presence.stream_closed(space_id, session_id, conn_id, session_ended)
        case SessionSeen(space_id, session_id):
            presence.seen(space_id, session_id)


def encode_frame(msg: object) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Bytes in, messages out; pure, so partial reads are easy to test."""

    def __init__(self, max_frame_bytes: int) -> None:
        self._buf = bytearray()
        self._max_frame_bytes = max_frame_bytes

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out: list[Any] = []
        while len(self._buf) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buf)
            if size > self._max_frame_bytes:
                raise ValueError(f"frame of {size} bytes is over the limit")
            if len(self._buf) < _LENGTH.size + size:
                break
            out.append(pickle.loads(self._buf[_LENGTH.size : _LENGTH.size + size]))
            del self._buf[: _LENGTH.size + size]
        return out
