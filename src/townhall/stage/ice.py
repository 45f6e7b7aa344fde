"""ICE on a closed network.

aioice leaves 127.0.0.1 out of its host candidates, so two peers on one machine (a
test, a rehearsal, a speaker bot next to the server) never connect. We add loopback
to the candidate list once, at start-up. No STUN server is used: townhall passes
``iceServers=[]`` everywhere because nothing outside is reachable here.
"""

from __future__ import annotations

import aioice.ice
from aiortc import RTCConfiguration

_original = aioice.ice.get_host_addresses


def _with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = _original(use_ipv4, use_ipv6)
    return ["127.0.0.1", *addresses] if use_ipv4 else addresses


def allow_loopback_candidates() -> None:
    aioice.ice.get_host_addresses = _with_loopback


def rtc_configuration() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[])
