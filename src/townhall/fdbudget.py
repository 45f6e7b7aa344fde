"""The file-descriptor budget of one process, and the connection caps it allows.

Every process of ``townhall serve`` has its own ``RLIMIT_NOFILE``. A process that takes
connections (the control process, each audience worker) must never reach it: at the
limit ``accept`` fails, and so does everything else that needs a descriptor in that
process (the journal, the link to the supervisor, a replay file). So each such process
names what it needs besides its clients (its *reserves*), and the clients get the rest:

    connections = limit - sum(reserves)

A configured cap is used when it is smaller (0 means "derived from the budget"). One
client address gets at most ``max_address_connections``, and by default at most a
quarter of the process's connections: one address can never take a whole process.

The stage and the recorder take no connections; being separate processes with their own
limit, no crowd on a port can take their descriptors. ``ConnectionLedger`` does the
counting at accept time for both ports.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Descriptors any of our processes uses besides its clients: stdio, the event loop
# (epoll, its self-pipe, signal wakeups), imported modules being read, log handlers,
# the listening socket and a margin for a library that opens a file now and then.
RUNTIME_FDS = 64
# One address may take this share of a process's connections at most, so that a single
# address (an attacker, or a proxy not declared as one) always leaves room for others.
ADDRESS_SHARE_DIVISOR = 4


def raise_nofile_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (children inherit it); the new soft
    limit. Connections, journal files and peers all need descriptors, and the soft
    default (often 1024) is far below what the hard limit allows without privilege."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def nofile_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass(frozen=True)
class ConnectionCaps:
    """What one process lets in: connections in all, and from one client address."""

    max_connections: int
    max_address_connections: int


@dataclass(frozen=True)
class FdBudget:
    """A process's descriptor limit and what it keeps for itself (name -> count)."""

    limit: int
    reserves: Mapping[str, int] = field(default_factory=dict)

    @property
    def reserved(self) -> int:
        return RUNTIME_FDS + sum(self.reserves.values())

    @property
    def connections(self) -> int:
        """Descriptors left for client connections (at least one, so a process with a
        tiny limit still answers, if slowly)."""
        return max(1, self.limit - self.reserved)

    def caps(
        self,
        max_connections: int = 0,
        max_address_connections: int = 0,
        default_address_connections: int = 0,
    ) -> ConnectionCaps:
        """The caps: configured values (0: derived) never above what the budget allows.

        ``default_address_connections`` is the port's own default for one address
        (0: only the budget's share bounds it)."""
        total = _smaller(max_connections, self.connections)
        share = max(1, total // ADDRESS_SHARE_DIVISOR)
        per_address = max_address_connections or default_address_connections or share
        return ConnectionCaps(total, max(1, min(per_address, share, total)))

    def describe(self, caps: ConnectionCaps) -> str:
        """One log line: the limit, the reserves, the caps derived from them."""
        named = ", ".join(f"{k} {v}" for k, v in self.reserves.items())
        return (
            f"descriptor limit {self.limit}; reserved {self.reserved} (runtime {RUNTIME_FDS}"
            f"{', ' + named if named else ''}); at most {caps.max_connections} connections, "
            f"{caps.max_address_connections} from one address"
        )


def _smaller(configured: int, budget: int) -> int:
    return budget if configured <= 0 else min(configured, budget)


class ConnectionLedger:
    """Open connections, in all and per client address, against ``ConnectionCaps``.

    ``admit`` at accept time, ``release`` exactly once for each admitted connection when
    it closes. Addresses for which ``exempt`` is true (configured proxies, which carry
    many clients) are only counted in the total. Bounded: an address is forgotten when
    its last connection closes, so the table holds at most the open connections."""

    def __init__(
        self, caps: ConnectionCaps, exempt: Callable[[str], bool] = lambda _address: False
    ) -> None:
        self.caps = caps
        self.exempt = exempt
        self.open = 0
        self.by_address: dict[str, int] = {}
        self.refused = 0

    def admit(self, address: str) -> str | None:
        """None if the connection may stay (it is counted), else why it may not."""
        if self.open >= self.caps.max_connections:
            self.refused += 1
            return "this server is at its connection capacity"
        if not self.exempt(address):
            held = self.by_address.get(address, 0)
            if held >= self.caps.max_address_connections:
                self.refused += 1
                return "too many connections from your address"
            self.by_address[address] = held + 1
        self.open += 1
        return None

    def release(self, address: str) -> None:
        self.open = max(0, self.open - 1)
        held = self.by_address.get(address)
        if held is None:
            return
        if held <= 1:
            del self.by_address[address]
        else:
            self.by_address[address] = held - 1
