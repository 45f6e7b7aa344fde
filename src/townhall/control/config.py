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
    # Spaces in one state the public list (the front page) answers with.
    max_listed_spaces: int = 50
    # Named listeners the moderators' audience list answers with.
    max_listed_listeners: int = 500
    # The port's bounds (docs/operations.md, "Bounded ports"). Connections at once, in
    # all and from one client address; the process's descriptor budget (fdbudget.py)
    # lowers them further, and 0 leaves only the budget. Past a cap a newcomer gets 503
    # with Retry-After and is closed at once. Pages hold a control connection for a
    # moment (the crowd waits on the audience port), so 8,192 is room for a storm of
    # sign-ins while idle connections cost at most about 55 MiB (6.7 KiB each, measured).
    max_connections: int = 8_192
    # Web pages behind one NAT (a campus, an office, a carrier) share an address; each
    # holds a keep-alive connection for at most ``idle_timeout_s`` between requests.
    max_address_connections: int = 512
    # A request head (and the body after it) must arrive within this from its first
    # byte: a slowloris is closed.
    head_timeout_s: float = 10.0
    # A connection with no request in flight (a fresh one that sends nothing, a
    # keep-alive between requests) is closed after this.
    idle_timeout_s: float = 10.0
    # A request head past this gets 431 and the connection is closed.
    max_head_bytes: int = 16 * 1024
    # A WebSocket message from a client over this is refused with close code 1009 (the
    # page sends only short pings); uvicorn's ``ws_max_size`` is set from it too.
    max_ws_message_bytes: int = 4 * 1024
    # Pings find the dead stage sockets.
    ws_ping_interval_s: float = 20.0
    # Peers (addresses or CIDR networks) whose X-Forwarded-For names the client; the
    # default trusts nobody, so the header cannot dodge a per-address limit.
    trusted_proxies: tuple[str, ...] = ()
    # "host:port" to serve /metrics on, open, instead of on the control port behind the
    # admin key (e.g. 127.0.0.1:9464, reachable only by the Prometheus next to it).
    metrics_address: str = ""
    # The longest a Space may run: the host's and the links' tokens for a Space scheduled
    # at T stay valid until T plus this (or the default lifetime, if that is later).
    max_space_duration_s: float = 12 * 3600.0
    # Scheduled Spaces whose public snapshot goes to the audience port (their waiting
    # rooms), soonest first; how often each is refreshed there (the waiting count).
    max_waiting_spaces: int = 1_000
    waiting_update_interval_s: float = 1.0
    # A waiting room that did not change is published again this often, so a restarted
    # audience worker or a listener's snapshot never stays stale for long.
    waiting_refresh_s: float = 15.0
    # Cache-Control max-age of the public ``GET /api/spaces/{id}``: a CDN in front of
    # the control API absorbs a crowd opening the link at once.
    space_max_age_s: int = 5
    # The waiting pages start their players spread over a window this wide at least,
    # wider for a bigger crowd: its web pages divided by the joins a second the audience
    # port takes while the rest of the crowd already streams (at 2,000 a second on one
    # core, with 10,000 streams flowing, 3,752 of 10,000 pages got no answer within
    # 10 s: benchmarks/results/waiting.txt), so a start is a ramp it keeps up with.
    start_joins_per_s: float = 1_000.0
    min_start_spread_s: float = 1.5
    max_start_spread_s: float = 15.0
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
