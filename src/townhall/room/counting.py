"""Honest listener counting: one listening session is one listener.

Two numbers are shown to hosts and the audience:

``listening_now``
    sessions alive right now. A session is alive while it has at least one open
    connection (an Ogg/Opus stream, a WebSocket) or sent a heartbeat within
    ``session_timeout_s`` (an LL-HLS player polls playlists over short-lived requests,
    so it has no long connection to hold).
``total_tuned_in``
    distinct session ids ever seen.

The unit is the player's session id, never a connection or a request. A reconnect,
a retried request, the several parallel HTTP connections of one HLS player and a
second tab sharing the session id are all the same session, so none of them inflate
either number. When the last connection of a session closes, the session stays alive
for ``session_timeout_s``: a listener whose network blips and who reconnects within
that grace is still one listener who never left.

Memory is bounded: at most ``max_sessions`` sessions are alive at once and a new one
beyond that is refused with :class:`~townhall.errors.Unavailable`. Expiry is O(1) per
expired session: idle sessions sit in an ordered dict in the order they last showed
signs of life, so the stale ones are always at the front. That relies on ``now``
never going backwards; pass ``time.monotonic()``.

Pure: ``now`` is passed in, nothing here does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from townhall.errors import BadRequest, Unavailable


@dataclass(frozen=True, slots=True)
class CounterConfig:
    session_timeout_s: float = 30.0
    max_sessions: int = 2_000_000
    max_session_id_chars: int = 128
    # Suggested back-off when full and no idle session is about to expire.
    full_retry_after_s: float = 10.0


@dataclass(slots=True)
class _Session:
    last_seen_at: float
    connections: set[str] = field(default_factory=set)


class ListenerCounter:
    def __init__(self, config: CounterConfig | None = None) -> None:
        self.config = config or CounterConfig()
        self._sessions: dict[str, _Session] = {}
        # Sessions without an open connection, oldest sign of life first. Sessions with
        # a connection are alive whatever their age, so they are kept out of this queue.
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._tuned_in: set[str] = set()

    # -- signs of life -------------------------------------------------------

    def heartbeat(self, session_id: str, now: float) -> None:
        session = self._touch(session_id, now)
        if not session.connections:
            self._idle[session_id] = None
            self._idle.move_to_end(session_id)

    def connection_opened(self, session_id: str, conn_id: str, now: float) -> None:
        session = self._touch(session_id, now)
        session.connections.add(conn_id)
        self._idle.pop(session_id, None)

    def connection_closed(self, session_id: str, conn_id: str, now: float) -> None:
        session = self._sessions.get(session_id)
        if session is None or conn_id not in session.connections:
            return  # a close we already saw, or one after leave(): nothing to undo
        session.connections.discard(conn_id)
        session.last_seen_at = now
        if not session.connections:
            self._idle[session_id] = None  # grace period starts now

    def leave(self, session_id: str, now: float) -> None:
        """The player said goodbye: the session stops counting at once."""
        self._sessions.pop(session_id, None)
        self._idle.pop(session_id, None)

    def expire(self, now: float) -> int:
        """Forget idle sessions older than the timeout; returns how many went."""
        expired = 0
        while self._idle:
            session_id = next(iter(self._idle))
            if not self._is_stale(self._sessions[session_id], now):
                break
            del self._idle[session_id]
            del self._sessions[session_id]
            expired += 1
        return expired

    # -- the numbers ---------------------------------------------------------

    def listening_now(self, now: float) -> int:
        self.expire(now)
        return len(self._sessions)

    def total_tuned_in(self) -> int:
        return len(self._tuned_in)

    def is_listening(self, session_id: str, now: float) -> bool:
        self.expire(now)
        return session_id in self._sessions

    # -- internals -----------------------------------------------------------

    def _touch(self, session_id: str, now: float) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._open_session(session_id, now)
        session.last_seen_at = now
        return session

    def _open_session(self, session_id: str, now: float) -> _Session:
        self._check_session_id(session_id)
        if len(self._sessions) >= self.config.max_sessions:
            self.expire(now)
        if len(self._sessions) >= self.config.max_sessions:
            raise Unavailable("too many listeners", retry_after_s=self._retry_after_s(now))
        session = _Session(last_seen_at=now)
        self._sessions[session_id] = session
        self._tuned_in.add(session_id)
        return session

    def _retry_after_s(self, now: float) -> float:
        """When the oldest idle session frees its slot, if one will."""
        if not self._idle:
            return self.config.full_retry_after_s
        oldest = self._sessions[next(iter(self._idle))]
        return max(0.0, oldest.last_seen_at + self.config.session_timeout_s - now)

    def _is_stale(self, session: _Session, now: float) -> bool:
        return now - session.last_seen_at > self.config.session_timeout_s

    def _check_session_id(self, session_id: str) -> None:
        if not session_id or len(session_id) > self.config.max_session_id_chars:
            raise BadRequest(
                f"session id must be 1 to {self.config.max_session_id_chars} characters"
            )
