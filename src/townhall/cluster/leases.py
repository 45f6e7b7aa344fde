"""Which node holds a Space's stage: leases in the cluster, with a short time to live.

The node that runs a Space's stage renews its lease every ``lease_s / 3``; a lease not
renewed for ``lease_s`` is gone (JetStream's key-value TTL drops it, and readers treat
an old one as gone too). Any control node can then answer a request for a Space it does
not hold by sending it to the holder, and say clearly when the holder has stopped
answering instead of pretending the Space does not exist.

Pure: the table and the codec; the adapters are in ``jetstream.py`` and ``routing.py``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from enum import Enum
from urllib.parse import urlsplit

from townhall.cluster.wire import WireError


@dataclass(frozen=True)
class Lease:
    space_id: str
    node: str
    control_url: str
    at_unix_s: float


def encode_lease(lease: Lease) -> bytes:
    return json.dumps(asdict(lease)).encode()


def decode_lease(data: bytes) -> Lease:
    try:
        raw = json.loads(data)
        return Lease(
            str(raw["space_id"]), str(raw["node"]), str(raw["control_url"]),
            float(raw["at_unix_s"]),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"not a lease: {exc}") from exc


# Addresses that name no machine: every node bound to one would call itself by it.
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def default_node_url(host: str, control_port: int) -> str:
    """A node's control URL when ``cluster.node_url`` is not set."""
    return f"http://[{host}]:{control_port}" if ":" in host else f"http://{host}:{control_port}"


def identity_problem(host: str, control_port: int, node_url: str) -> str | None:
    """Why a node could not be told apart from the others, or reached by them (None: it
    can). Its name and its address default to its control URL; bound to a wildcard
    address that URL is the same on every machine (two nodes would renew one lease, and
    a request forwarded to it would come back to its sender), so such a node needs its
    own ``cluster.node_url``. Loopback is fine: nodes on one machine differ by port."""
    url = node_url or default_node_url(host, control_port)
    try:
        url_host = urlsplit(url).hostname
    except ValueError:
        url_host = None
    if url_host is None or url_host in _WILDCARD_HOSTS:
        setting = "cluster.node_url" if node_url else f"host {host!r}"
        return (f"this node's address would be {url} ({setting}), the same on every node; "
                "set cluster.node_url to a URL the other nodes reach this node's "
                "control port at")  # fmt: skip
    return None


class LeaseTable:
    """The leases a node has seen, newest per Space, at most ``max_leases`` (oldest
    forgotten first)."""

    def __init__(self, lease_s: float, max_leases: int) -> None:
        self.lease_s = lease_s
        self.max_leases = max_leases
        self._leases: OrderedDict[str, Lease] = OrderedDict()

    def put(self, lease: Lease) -> None:
        self._leases.pop(lease.space_id, None)
        self._leases[lease.space_id] = lease
        while len(self._leases) > self.max_leases:
            self._leases.popitem(last=False)

    def drop(self, space_id: str) -> None:
        self._leases.pop(space_id, None)

    def holder(self, space_id: str, now_unix_s: float) -> Lease | None:
        """The node holding ``space_id`` now; None if none does (or its lease lapsed)."""
        lease = self._leases.get(space_id)
        if lease is None or now_unix_s - lease.at_unix_s > self.lease_s:
            return None
        return lease

    def lapsed(self, space_id: str, now_unix_s: float) -> Lease | None:
        """A lease seen for ``space_id`` that was not renewed in time: its node is gone."""
        lease = self._leases.get(space_id)
        if lease is None or now_unix_s - lease.at_unix_s <= self.lease_s:
            return None
        return lease

    def lapsed_leases(self, now_unix_s: float) -> list[Lease]:
        """Every lease seen that was not renewed in time, oldest renewal first."""
        return [
            lease for lease in self._leases.values() if now_unix_s - lease.at_unix_s > self.lease_s
        ]


class Renewal(Enum):
    """What a node does when its lease on a Space was written by someone since its last
    renewal (the conditional update failed)."""

    CREATE = "create"  # the key is gone (it aged out while the cluster stalled): again
    OURS = "ours"  # this node wrote it (a takeover, a restarted keeper): renew from it
    LOST = "lost"  # another node holds it: the Space is theirs now


def after_conflict(current: Lease | None, node: str) -> Renewal:
    if current is None:
        return Renewal.CREATE
    return Renewal.OURS if current.node == node else Renewal.LOST
