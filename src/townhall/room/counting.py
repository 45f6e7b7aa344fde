"""Honest listener counting: one listening session is one listener.

Two numbers are shown to hosts and the audience:

``listening_now``
    sessions alive right now. A session is alive while it has at least one open
    connection (an Ogg/Opus stream, a WebSocket) or sent a heartbeat within
    ``session_timeout_s`` (an LL-HLS player polls playlists over short-lived requests,
    so it has no long connection to hold).
``total_tuned_in``
    distinct sessions ever seen, estimated in fixed memory (``room/sketch.py``: exact
    below 1,024, then within about 2 %).

The unit is the player's session id, never a connection or a request. A reconnect,
a retried request, the several parallel HTTP connections of one HLS player and a
second tab sharing the session id are all the same session, so none of them inflate
either number. When the last connection of a session closes, the session stays alive
for ``session_timeout_s``: a listener whose network blips and who reconnects within
that grace is still one listener who never left.

Anonymous sessions (ids made by ``townhall.sessions.anonymous_session`` for requests
whose ``sid`` the server did not issue) are bounded per client address: at most
``max_anonymous_address_sessions`` of one address are alive at once, a new one past
that is refused (the audience port serves it, uncounted), and each takes one of that
address's numbered slots, which is what ``total_tuned_in`` remembers of it. So one
address adds at most that many to either number, however many ids it makes up.

Memory is bounded: at most ``max_sessions`` sessions are alive at once and a new one
beyond that is refused with :class:`~townhall.errors.Unavailable`. Expiry is O(1) per
expired session: idle sessions sit in an ordered dict in the order they last showed
signs of life, so the stale ones are always at the front. That relies on ``now``
never going backwards; pass ``time.monotonic()``.

Across a cluster (edges serving the same Space), each node counts its own listeners the
same way and reports two sketches (``room/sketch.py``): who listens there now, and who
ever tuned in there. ``counted_elsewhere`` takes them: the tuned-in sketch is merged into
this counter's for good (a merge is a register-wise maximum, so the same report merged
twice changes nothing), and ``listening_now`` adds the listeners the other nodes have that
this one does not (``room/elsewhere.py``), so a session heard on two nodes counts once.
Both sketches know a session by the same key on every node: its signed id, or its
address's anonymous slot, so an address counts at most its anonymous bound however many
nodes it reaches.

Pure: ``now`` is passed in, nothing here does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from townhall.errors import BadRequest, Unavailable
from townhall.room.elsewhere import CountedElsewhere
from townhall.room.sketch import DistinctSketch, hash64
from townhall.sessions import anonymous_address


@dataclass(frozen=True, slots=True)
class CounterConfig:
    session_timeout_s: float = 30.0
    max_sessions: int = 2_000_000
    max_session_id_chars: int = 128
    # Suggested back-off when full and no idle session is about to expire.
    full_retry_after_s: float = 10.0
    # Anonymous sessions (no valid signed id) alive at once per client address (an IPv4
    # address or an IPv6 /64): a household or a small office behind one address.
    max_anonymous_address_sessions: int = 16


@dataclass(slots=True)
class _Session:
    last_seen_at: float
    connections: set[str] = field(default_factory=set)
    # An anonymous session's (hashed address, slot): released when the session ends.
    slot: tuple[str, int] | None = None
    # What the sketches know the session by (its id, or its address's slot), hashed.
    key_hash: int = 0


class ListenerCounter:
    def __init__(self, config: CounterConfig | None = None) -> None:
        self.config = config or CounterConfig()
        self._sessions: dict[str, _Session] = {}
        # Sessions without an open connection, oldest sign of life first. Sessions with
        # a connection are alive whatever their age, so they are kept out of this queue.
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._tuned_in = DistinctSketch()
        # Per hashed address, the slots its anonymous sessions hold (bounded per address;
        # an address with none is dropped).
        self._slots: dict[str, set[int]] = {}
        # The other nodes' listeners of this Space, in a cluster (None: one machine).
        self.elsewhere: CountedElsewhere | None = None

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
        self._drop(session_id)

    def leave_if_unconnected(self, session_id: str, now: float) -> None:
        """A stream that was its own session closed: it ends unless it still has one."""
        session = self._sessions.get(session_id)
        if session is not None and not session.connections:
            self._drop(session_id)

    def expire(self, now: float) -> int:
        """Forget idle sessions older than the timeout; returns how many went."""
        expired = 0
        while self._idle:
            session_id = next(iter(self._idle))
            if not self._is_stale(self._sessions[session_id], now):
                break
            self._drop(session_id)
            expired += 1
        return expired

    # -- the numbers ---------------------------------------------------------

    def listening_now(self, now: float) -> int:
        """Sessions alive here, plus those alive only on the cluster's other nodes."""
        self.expire(now)
        here = len(self._sessions)
        if self.elsewhere is None:
            return here
        return here + self.elsewhere.extra(lambda: self.listening_sketch(now), now)

    def total_tuned_in(self) -> int:
        return self._tuned_in.estimate()

    # -- across a cluster ------------------------------------------------------

    def listening_sketch(self, now: float) -> DistinctSketch:
        """The sessions alive here now, as a sketch another node can merge."""
        self.expire(now)
        return DistinctSketch.of_hashes(s.key_hash for s in self._sessions.values())

    def tuned_in_sketch(self) -> DistinctSketch:
        """The counter's own sketch, not a copy (64 KiB): read it at once (a report
        encodes it), never keep or change it."""
        return self._tuned_in

    def counted_elsewhere(
        self, node: str, listening: DistinctSketch, tuned_in: DistinctSketch, now: float
    ) -> None:
        """Another node's report: its listeners now, and everyone it ever counted."""
        self._tuned_in.merge(tuned_in)
        if self.elsewhere is not None:
            self.elsewhere.put(node, listening, now)

    def anonymous_addresses(self) -> int:
        """Client addresses holding anonymous sessions now (bounded by the sessions)."""
        return len(self._slots)

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
        slot = self._anonymous_slot(session_id)
        # An address's anonymous audience is known by slot, not by the ids it sent: the
        # ids are free to make up, the slots are few.
        key = session_id if slot is None else f"{slot[0]}#{slot[1]}"
        session = _Session(last_seen_at=now, slot=slot, key_hash=hash64(key))
        self._sessions[session_id] = session
        if slot is not None:
            self._slots.setdefault(slot[0], set()).add(slot[1])
        self._tuned_in.add_hash(session.key_hash)
        return session

    def _anonymous_slot(self, session_id: str) -> tuple[str, int] | None:
        address = anonymous_address(session_id)
        if address is None:
            return None
        taken = self._slots.get(address, set())
        bound = self.config.max_anonymous_address_sessions
        free = next((n for n in range(bound) if n not in taken), None)
        if free is None:
            raise Unavailable(
                "too many anonymous listeners from one address",
                retry_after_s=self.config.session_timeout_s,
            )
        return address, free

    def _drop(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        self._idle.pop(session_id, None)
        if session is not None and session.slot is not None:
            address, n = session.slot
            taken = self._slots.get(address)
            if taken is not None:
                taken.discard(n)
                if not taken:
                    del self._slots[address]

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
