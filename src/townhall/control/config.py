"""Bounds and limits of the control plane, each named with its unit."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RateLimitConfig:
    """A token bucket per key: ``burst_actions`` actions at once, refilled at ``rate_per_s``."""

    rate_per_s: float
    burst_actions: int
    max_keys: int = 100_000


@dataclass(frozen=True)
class ControlConfig:
    # A request body past this is refused with 413 before it is read whole.
    max_body_bytes: int = 64 * 1024
    # Listener sign-ins per client address.
    signin_limit: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(5.0, 50))
    # Room commands and reactions per participant.
    actions_limit: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(2.0, 10))
    # Messages queued for one stage WebSocket before it is closed as too slow.
    watcher_queue_messages: int = 64
    # A command's target (a participant id) and a reaction (one emoji, with modifiers).
    max_target_chars: int = 64
    max_emoji_chars: int = 8
    # Spaces held in memory at once (live ones are always held; idle ones are evicted).
    max_cached_spaces: int = 1_024
    # How often the coalesced room snapshot may go to the audience's SSE stream.
    room_update_interval_s: float = 0.25
    # A stage process that has not answered a request (an SDP offer) by then is taken
    # for gone: the client gets 503 and retries.
    stage_reply_timeout_s: float = 5.0
    # Listener actions per client address (the address ``client_address`` resolves, so
    # one NAT shares one allowance: the defaults leave room for a few hundred people
    # behind one address). Each kind has its own bucket so a reaction flood cannot use up
    # the hands or the heartbeats of the people sharing an address.
    address_reactions_limit: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(20.0, 60)
    )
    # Commands from listeners (raise or lower a hand, answer an invitation).
    address_hands_limit: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(2.0, 30))
    address_heartbeats_limit: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(30.0, 300)
    )
    # Heartbeats per listener session: the web page sends one every 10 s.
    heartbeat_limit: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(0.5, 5))
    # SDP offers per participant: a reconnecting speaker sends a few; every offer costs
    # the stage a peer connection and its sockets.
    offer_limit: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(1.0, 6))
    # Stage WebSockets open at once per participant; a new one closes the oldest (4409).
    max_stage_socket_connections: int = 3
    # Room snapshots and meters go to a stage WebSocket at most this often (the newest
    # one wins); discrete events are sent at once.
    watcher_push_interval_s: float = 0.1
    # A WebSocket message from a client over this is refused with close code 1009; the
    # page sends only short pings. The control server's ``ws_max_size`` is set from it.
    max_ws_message_bytes: int = 4 * 1024
