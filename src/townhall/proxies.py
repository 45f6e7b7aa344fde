"""Which peers may name the client they forward (``X-Forwarded-For``): only configured
proxies. Anyone else could put any address in that header, so for everyone else the
client is the socket's peer. Entries are addresses or CIDR networks (IPv4 or IPv6)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """The networks named by ``entries``; ValueError naming the first bad entry."""
    found: list[Network] = []
    for entry in entries:
        try:
            found.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an IP address or a CIDR network") from exc
    return tuple(found)


class TrustedProxies:
    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks = parse_networks(entries)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        if not self.networks or not host:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in n for n in self.networks)

    def client(self, peer: str, forwarded_for: str) -> str:
        """The client a request comes from: walking ``X-Forwarded-For`` from the right
        while the hop that added the entry is trusted, the first address we cannot vouch
        for (the same rule as uvicorn's ProxyHeadersMiddleware, used on the control port)."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        client = peer
        for hop in reversed(hops):
            client = hop
            if not self.trusts(hop):
                break
        return client
