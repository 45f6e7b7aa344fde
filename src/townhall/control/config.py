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
    # The longest a Space may run: the host's and the links' tokens for a Space scheduled
    # at T stay valid until T plus this (or the default lifetime, if that is later).
    max_space_duration_s: float = 12 * 3600.0
