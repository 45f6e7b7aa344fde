"""The audience server: routes, the flush loop, and the per-process channel table.

Endpoints (all GET, all CORS-open, all errors JSON):

    /live/{space}.ogg                 live Ogg/Opus push stream (RFC 7845)
    /live/{space}/index.m3u8          LL-HLS playlist; _HLS_msn/_HLS_part block
    /live/{space}/init.mp4            CMAF init segment
    /live/{space}/p{msn}.{i}.m4s      partial segment; blocks if preload-hinted
    /live/{space}/s{msn}.m4s          full segment
    /events/{space}                   SSE room events, coalesced
    /replay/{space}.ogg, /replay/{space}/...   the recording, with Range (replay.py)
    /healthz                          which process answered (metrics: the control port)

Caching (RFC 9111) is set for a CDN: parts, segments and the init segment never change
(immutable, a year); a playlist answered to a blocking request names a fixed point so
it may be cached briefly; a plain playlist request gets a max-age of one part.

Every cacheable response (init, part, segment, playlist version) is built once as
complete bytes and written as-is to every client asking for it, including all the
blocking requests one part wakes up. ``builds`` counts those builds.

Before the program begins (a scheduled Space: the control plane publishes its room
snapshots, so its channel exists) every listener surface works: ``/events`` streams the
waiting room; ``/live/{space}.ogg`` is held (200 and the head at once, then nothing
until the stream's header arrives: the stream begins at Go live, which players such as
ffmpeg and VLC read as a slow start, not an error); the playlist request is held until
a segment is complete, at most ``max_playlist_hold_s``, then 503 with a Retry-After
that follows the schedule. Held requests cost no audio bytes and are bounded per
process by ``max_held_listeners``. A stream opened with ``?count=0`` is left out of the
waiting count (``ChannelStats.uncounted_*``): the listen page holds its Ogg stream as
well as its SSE stream while it waits, and is one person; the stage page follows the
events and is nobody waiting. On an Ogg stream the mark also takes a page out of those
starting at Go live, so it is honoured there only with a signed ``sid``, once per
session.

The SSE stream is cacheable for a streaming CDN: ``s-maxage=1`` lets an edge collapse
the requests of one second onto one origin stream and stream it to all of them (every
event is a whole snapshot, so a joiner who gets the stream from its start ends at the
current state); ``max-age=0`` keeps browsers from reusing it; ``X-Accel-Buffering: no``
tells nginx to pass events through unbuffered.

Channels that ended are kept ``ended_grace_s`` (players fetch the final playlist with
ENDLIST and the last parts), then dropped with their cached responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from townhall.audience.channel import Channel, ChannelConfig
from townhall.audience.fanout import Fanout, Sink
from townhall.audience.http import (
    HttpConnection,
    Reply,
    Request,
    response_bytes,
    stream_head,
)
from townhall.audience.plane import AudienceStats, ChannelStats, ListenerPresence
from townhall.audience.replay import ReplayFiles
from townhall.errors import BadRequest, NotFound, Unavailable
from townhall.fdbudget import ConnectionCaps, ConnectionLedger, FdBudget, nofile_limit
from townhall.feed import ChannelEnded, FeedMessage, HlsPart
from townhall.media.hls import part_uri, segment_uri
from townhall.proxies import TrustedProxies
from townhall.sessions import SessionSigner, anonymous_session

log = logging.getLogger("townhall.audience")

IMMUTABLE = "public, max-age=31536000, immutable"
M3U8 = "application/vnd.apple.mpegurl"
MP4 = "video/mp4"

_LIVE = re.compile(
    r"^/live/([A-Za-z0-9_-]{1,64})"
    r"(\.ogg|/index\.m3u8|/init\.mp4|/p(\d+)\.(\d+)\.m4s|/s(\d+)\.m4s)$"
)
_EVENTS = re.compile(r"^/events/([A-Za-z0-9_-]{1,64})$")
_REPLAY = re.compile(
    r"^/replay/([A-Za-z0-9_-]{1,64})(\.ogg|/index\.m3u8|/init\d{0,6}\.mp4|/s\d{1,9}\.m4s)$"
)


@dataclass(frozen=True)
class FeedLogConfig:
    """What the worker pool keeps of the feed to bring a replacement worker up to date
    (its LL-HLS parts follow from the HLS window)."""

    # 5 Ogg pages a second: 20 is 4 s, past any join burst.
    ogg_pages: int = 20
    ended_channels: int = 64


@dataclass(frozen=True)
class WorkerPoolConfig:
    """The audience worker processes' supervision and their reports to the main process."""

    start_timeout_s: float = 30.0
    # A replacement waits this long, and at most ``max_restarts`` of workers that died
    # within ``healthy_uptime_s`` of their start happen per ``restart_window_s``: a worker
    # that cannot stay up is respawned slowly, not in a tight loop.
    restart_delay_s: float = 0.5
    max_restarts: int = 5
    restart_window_s: float = 60.0
    healthy_uptime_s: float = 3.0
    # A dropped worker gets this long to exit on its own before it is killed: a hung
    # process would keep its place in the port's SO_REUSEPORT group and take newcomers.
    drop_grace_s: float = 2.0
    # At shutdown, a worker gets this long to end its listeners before it is terminated.
    exit_timeout_s: float = 5.0
    stats_every_s: float = 1.0
    # A session's playlist polls are reported at most once per this; the counters need
    # a heartbeat within tens of seconds, and a playlist hit must stay a dict lookup.
    presence_seen_every_s: float = 1.0
    # Presence reports are written together once per this: in a join storm, one write
    # in the worker and one read in the main process (on the stage's core) per batch.
    presence_batch_s: float = 0.05
    # Our own processes write the frames; the bound only guards against a broken stream.
    max_frame_bytes: int = 16 * 1024 * 1024
    feed_log: FeedLogConfig = field(default_factory=FeedLogConfig)
    # Bounds of a worker's presence reports in a flood of distinct sessions: sessions
    # whose polls are deduplicated per period, and reports held for one batch.
    max_presence_seen_sessions: int = 100_000
    max_presence_batch_messages: int = 4_096


@dataclass(frozen=True)
class AudienceConfig:
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    flush_tick_s: float = 0.02
    # Subscribers written per slice before yielding to the loop, so a big pass never
    # blocks new connections or blocking HLS requests for long.
    pass_slice_listeners: int = 2_000
    blocking_timeout_s: float = 6.0
    ended_grace_s: float = 60.0
    # Kernel send buffer of a stream listener. Left alone, Linux grows it to megabytes,
    # so a stalled reader would hide there for minutes before the engine could see it.
    stream_sndbuf_bytes: int = 32 * 1024
    # The audience workers' nice value (absolute): the stage's 20 ms clock outranks
    # bulk fan-out, so a join storm that saturates the core delays chunks a little,
    # never the speakers.
    worker_nice: int = 8
    # A request head must arrive within this; an idle keep-alive is closed after that.
    head_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    # Feed bytes queued for one worker process before it is dropped (pool.py).
    max_worker_backlog_bytes: int = 8 * 1024 * 1024
    workers: WorkerPoolConfig = field(default_factory=WorkerPoolConfig)
    max_request_head_bytes: int = 16 * 1024
    # Connections the kernel queues before accept: a join storm arrives all at once.
    listen_backlog_connections: int = 4096
    # Immutable responses kept ready per live channel; older ones are rebuilt on demand.
    max_cached_responses: int = 256
    reap_every_s: float = 1.0
    # Replay files being sent at once per process (each holds a file and a socket);
    # past it a download gets 503 with Retry-After.
    max_replay_connections: int = 64
    # A replay download that takes nothing for this long is cut off.
    replay_stall_timeout_s: float = 30.0
    # Connections at once per worker process, streams included; 0: derived from the
    # process's descriptor budget (fdbudget.py), which a configured value can only
    # lower. Past it a newcomer gets 503 with Retry-After and is closed.
    max_connections: int = 0
    # From one client address. A crowd behind one NAT (a hall on one Wi-Fi, a carrier
    # NAT) shares an address and each listener holds a stream and the room's event
    # stream: 2048 lets about a thousand such listeners in per worker, while one address
    # still never takes more than a quarter of a worker. 0: only that quarter bounds it.
    max_address_connections: int = 2048
    # Proxies (addresses or CIDR networks) whose X-Forwarded-For names the client; their
    # own connections count only against max_connections. Default: trust nobody.
    trusted_proxies: tuple[str, ...] = ()
    # Listeners held before the program begins, per process: Ogg streams waiting for
    # the header and playlist requests waiting for the first segment. Past it, 503 with
    # a Retry-After that follows the schedule.
    max_held_listeners: int = 50_000
    # A playlist request is held this long at most: hls.js gives up on a manifest after
    # 20 s and retries (twice, by default), so it is still waiting when answered.
    max_playlist_hold_s: float = 30.0


@dataclass
class AudienceServer:
    config: AudienceConfig = field(default_factory=AudienceConfig)
    recordings_dir: Path | None = None
    channels: dict[str, Channel] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    _next_key: int = 0
    # Immutable responses by request target (see HttpConnection.ready).
    _cache: dict[bytes, bytes] = field(default_factory=dict)
    # The current plain playlist of each channel by request target, until the next part.
    _playlists: dict[bytes, tuple[str, bytes]] = field(default_factory=dict)
    # Request connections (reaped when idle) and streams (bounded by the fan-out engine).
    connections: set[HttpConnection] = field(default_factory=set)
    streams: set[HttpConnection] = field(default_factory=set)
    loop_lag_s: float = 0.0  # how late the flusher's timer fired (see run_flusher)
    builds: int = 0  # cacheable responses built (each served to any number of requests)
    presence: ListenerPresence | None = None
    _listener: asyncio.Server | None = None
    _flusher: asyncio.Task[None] | None = None
    replays: ReplayFiles | None = None
    # Checks the ``sid`` of a request; without it no ``sid`` verifies (all anonymous).
    sessions: SessionSigner | None = None

    ledger: ConnectionLedger | None = None
    proxies: TrustedProxies | None = None
    held_playlists: int = 0  # playlist requests waiting for the program (all channels)
    # Channels whose held Ogg listeners are released into the fan-out, slice by slice.
    _releasing: set[Channel] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.proxies = TrustedProxies(self.config.trusted_proxies)
        if self.ledger is None:
            caps = self.connection_caps(nofile_limit())
            self.ledger = ConnectionLedger(caps, self.proxies.trusts)
        if self.recordings_dir is not None and self.replays is None:
            c = self.config
            self.replays = ReplayFiles(
                self.recordings_dir, c.max_replay_connections, c.replay_stall_timeout_s, self.rng
            )

    def fd_budget(self, limit: int) -> FdBudget:
        """This process's descriptors: a file per replay download besides its socket."""
        reserves = {"feed link": 4, "replay files": self.config.max_replay_connections}
        return FdBudget(limit, reserves)

    def connection_caps(self, limit: int) -> ConnectionCaps:
        c = self.config
        return self.fd_budget(limit).caps(c.max_connections, c.max_address_connections)

    # -- the audience plane (see plane.py) --------------------------------------------
    async def open(self, host: str, port: int, reuse_port: bool = False) -> asyncio.Server:
        """Listen on the audience port and run the flush loop until ``close``."""
        if self.ledger is not None:
            budget = self.fd_budget(nofile_limit())
            log.info("audience port (pid %d): %s", os.getpid(), budget.describe(self.ledger.caps))
        self._listener = await self.serve(host, port, reuse_port)
        self._flusher = asyncio.create_task(self.run_flusher(), name="audience-flusher")
        return self._listener

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._listener is not None:
            self._listener.close()

    def stats(self) -> AudienceStats:
        return AudienceStats(tuple(self.channel_stats()))

    def channel_stats(self) -> list[ChannelStats]:
        return [
            ChannelStats(
                space_id,
                len(c.ogg.subscribers),
                len(c.events.subscribers),
                c.ogg.interval_s,
                c.ogg.last_pass_s,
                len(c.held),
                len(set(c.uncounted_ogg.values())),
                len(c.uncounted_events),
            )
            for space_id, c in self.channels.items()
        ]

    # -- feed ------------------------------------------------------------------------
    def publish(self, msg: FeedMessage) -> None:
        channel = self.channels.get(msg.space_id)
        if channel is None:
            channel = self.channels[msg.space_id] = Channel(msg.space_id, self.config.channel)
        channel.apply(msg)
        if channel.held and channel.ogg.header:
            self._releasing.add(channel)
        if isinstance(msg, HlsPart | ChannelEnded):
            self._playlists.pop(_playlist_target(msg.space_id), None)
        if channel.ended:
            self._finish(channel)

    def _finish(self, channel: Channel) -> None:
        if channel.ended_at is None:
            channel.ended_at = time.monotonic()
            channel.ogg.close_all()
            channel.events.close_all()
            for transport in list(channel.held.values()):
                transport.close()  # a cancelled Space: its stream never began
            channel.held.clear()

    def drop_ended(self, now: float) -> None:
        """Bounded memory: forget channels that ended more than ``ended_grace_s`` ago."""
        grace = self.config.ended_grace_s
        for space_id, channel in list(self.channels.items()):
            if channel.ended_at is not None and now - channel.ended_at >= grace:
                del self.channels[space_id]
                prefix = f"/live/{space_id}/".encode()
                for target in [t for t in self._cache if t.startswith(prefix)]:
                    del self._cache[target]

    # -- serving ---------------------------------------------------------------------
    def protocol(self) -> HttpConnection:
        conn = HttpConnection(
            self.handle,
            self.connections.discard,
            self.config.max_request_head_bytes,
            self._cache,
            self._playlists,
            self._seen_on,
            self.ledger,
            self.proxies,
            lambda: 1.0 + self.rng.random(),
        )
        self.connections.add(conn)
        return conn

    async def serve(self, host: str, port: int, reuse_port: bool = False) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.protocol,
            host,
            port,
            reuse_port=reuse_port,
            backlog=self.config.listen_backlog_connections,
        )

    def handle(self, conn: HttpConnection, req: Request) -> Reply:
        if req.method == "OPTIONS":
            allow = (("Access-Control-Allow-Methods", "GET"),)
            return response_bytes(204, b"", "text/plain", extra=allow)
        if req.method not in ("GET", "HEAD"):
            raise BadRequest(f"method {req.method} is not allowed on the audience port")
        if m := _LIVE.match(req.path):
            return self._live(conn, req, m)
        if m := _EVENTS.match(req.path):
            self._events(conn, self._channel(m.group(1)), req)
            return None  # the connection is a stream now
        if m := _REPLAY.match(req.path):
            return self._replay(m.group(1), m.group(2), req)
        if req.path == "/healthz":
            # The pid tells which of several audience workers on one port answered.
            body = json.dumps({"ok": True, "pid": os.getpid()}).encode()
            return response_bytes(200, body, "application/json")
        raise NotFound(f"no such audience resource: {req.path}")

    def _channel(self, space_id: str) -> Channel:
        channel = self.channels.get(space_id)
        if channel is None:
            raise NotFound(f"space {space_id!r} is not live on this server")
        return channel

    def _live(self, conn: HttpConnection, req: Request, m: re.Match[str]) -> Reply:
        channel = self._channel(m.group(1))
        kind = m.group(2)
        if kind == ".ogg":
            if req.method == "HEAD":
                return _OGG_HEAD
            self._ogg(conn, channel, req)
            return None  # the connection is a stream now
        if kind == "/index.m3u8":
            return self._playlist(conn, channel, req)
        if kind == "/init.mp4":
            if channel.hls.init_segment is None:
                raise NotFound("the init segment is not ready yet")
            return self._cached(channel, "init.mp4", channel.hls.init_segment)
        if m.group(3) is not None:
            return self._part(channel, int(m.group(3)), int(m.group(4)))
        return self._segment(channel, int(m.group(5)))

    def _ogg(self, conn: HttpConnection, channel: Channel, req: Request) -> None:
        if channel.ended:
            replay = f"/replay/{channel.space_id}.ogg"
            raise NotFound(f"space {channel.space_id!r} has ended; see {replay}")
        if not channel.ogg.header:
            self._check_room_to_hold(channel)
        channel.ogg.admit(self.rng, self.loop_lag_s)
        key = self._key()
        transport = self._take_over(conn, _OGG_HEAD)
        if channel.ogg.header:
            channel.ogg.subscribe(key, transport, time.monotonic())
        else:
            channel.held[key] = transport  # joins the fan-out with the header
        conn.on_lost = self._unsubscriber(channel.ogg, key, channel.held)
        signed = self._signed_session(conn, channel.space_id, req.query.get("sid"))
        if signed is not None and _uncounted(req):
            self._uncount_page(conn, key, signed, channel.uncounted_ogg)
        if self.presence is not None:
            # The pid keeps unnamed streams apart across the workers on one port.
            session = signed or self._anonymous(conn.peer, f"ogg-{os.getpid()}-{key}")
            self._track_stream(conn, channel.space_id, session, key, signed is None)

    def _track_stream(
        self, conn: HttpConnection, space_id: str, session: str, key: int, unnamed: bool
    ) -> None:
        presence, lost = self.presence, conn.on_lost
        assert presence is not None
        presence.stream_opened(space_id, session, str(key))

        def closed(c: HttpConnection) -> None:
            lost(c)
            # An unnamed stream is its own session: it ends with the connection.
            presence.stream_closed(space_id, session, str(key), unnamed)

        conn.on_lost = closed

    def _check_room_to_hold(self, channel: Channel) -> None:
        held = self.held_playlists + sum(len(c.held) for c in self.channels.values())
        if held >= self.config.max_held_listeners:
            retry = channel.retry_after_s(time.time(), self.rng)
            raise Unavailable("too many listeners are waiting for the start here", retry)

    def _events(self, conn: HttpConnection, channel: Channel, req: Request) -> None:
        channel.events.admit(self.rng, self.loop_lag_s)
        key = self._key()
        transport = self._take_over(conn, _EVENTS_HEAD)
        channel.events.subscribe(key, transport, time.monotonic())
        transport.write(f"event: room\ndata: {channel.last_room_json}\n\n".encode())
        conn.on_lost = self._unsubscriber(channel.events, key)
        if _uncounted(req):
            self._uncount(conn, key, channel.uncounted_events)

    def _uncount(self, conn: HttpConnection, key: int, uncounted: set[int]) -> None:
        """The stream is left out of the waiting count while it lasts (``?count=0``)."""
        uncounted.add(key)
        lost = conn.on_lost

        def closed(c: HttpConnection) -> None:
            uncounted.discard(key)
            lost(c)

        conn.on_lost = closed

    def _uncount_page(
        self, conn: HttpConnection, key: int, session: str, uncounted: dict[int, str]
    ) -> None:
        """A waiting page's held Ogg stream (``?count=0`` with its signed ``sid``): the
        page is counted by its SSE stream, and does not open a stream at Go live. Each
        session is one such page however many streams it opens, so taking pages out of
        the start's spread costs an attacker one rate-limited sign-in each."""
        uncounted[key] = session
        lost = conn.on_lost

        def closed(c: HttpConnection) -> None:
            uncounted.pop(key, None)
            lost(c)

        conn.on_lost = closed

    def _take_over(self, conn: HttpConnection, head: bytes) -> asyncio.Transport:
        """The connection becomes a stream: out of the idle reaper's set, and its kernel
        send buffer bounded so the engine sees a stalled reader."""
        self.connections.discard(conn)
        self.streams.add(conn)
        transport = conn.take_over(head)
        self._bound_kernel_buffer(transport)
        return transport

    def _bound_kernel_buffer(self, transport: asyncio.Transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and self.config.stream_sndbuf_bytes > 0:
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.stream_sndbuf_bytes
                )

    def _unsubscriber(
        self, fanout: Fanout, key: int, held: dict[int, Sink] | None = None
    ) -> Callable[[HttpConnection], None]:
        def lost(conn: HttpConnection) -> None:
            self.streams.discard(conn)
            fanout.unsubscribe(key)
            if held is not None:
                held.pop(key, None)

        return lost

    async def release_held(self, channel: Channel) -> None:
        """The stream began: every held Ogg listener joins the fan-out (header first),
        a slice at a time so the loop keeps answering in between."""
        step = self.config.pass_slice_listeners
        while channel.held and not channel.ended:
            now = time.monotonic()
            for key in list(channel.held)[:step]:
                channel.ogg.subscribe(key, channel.held.pop(key), now)
            await asyncio.sleep(0)

    def _key(self) -> int:
        self._next_key += 1
        return self._next_key

    # -- LL-HLS ----------------------------------------------------------------------
    def _playlist(self, conn: HttpConnection, channel: Channel, req: Request) -> Reply:
        self._seen(conn, channel.space_id, req.query.get("sid"))
        msn, part = _int_param(req, "_HLS_msn"), _int_param(req, "_HLS_part")
        if channel.hls.init_segment is None and not channel.ended:
            # Asked before the program began: held until a player can start from it.
            self._check_room_to_hold(channel)
            return self._playlist_when_on_air(conn, channel, req)
        channel.hls.check_blocking_request(msn, part)
        if msn is None:
            max_age = f"public, max-age={max(1, int(channel.hls.config.part_target_s))}"
            reply = self._playlist_bytes(channel, max_age)
            if not req.query and not channel.ended:
                self._playlists[_playlist_target(channel.space_id)] = (channel.space_id, reply)
            return reply
        cache = "public, max-age=60"
        if channel.hls.ready(msn, part):
            return self._playlist_bytes(channel, cache)
        return self._blocking(channel, msn, part, lambda: self._playlist_bytes(channel, cache))

    async def _playlist_when_on_air(
        self, conn: HttpConnection, channel: Channel, req: Request
    ) -> bytes:
        """Hold a playlist request until the program has a segment (bounded)."""
        self.held_playlists += 1
        try:
            async with asyncio.timeout(self.config.max_playlist_hold_s):
                await asyncio.shield(channel.on_air())
        except TimeoutError as exc:
            retry = channel.retry_after_s(time.time(), self.rng)
            raise Unavailable("the Space has not started yet", retry) from exc
        finally:
            self.held_playlists -= 1
        reply = self._playlist(conn, channel, req)
        if isinstance(reply, bytes):
            return reply
        assert isinstance(reply, Awaitable), "a playlist is bytes or a blocking request"
        return await reply

    def _seen(self, conn: HttpConnection, space_id: str, sid: str | None) -> None:
        """An HLS player polled: count its signed session, or it by address and agent."""
        if self.presence is None:
            return
        signed = self._signed_session(conn, space_id, sid)
        self.presence.seen(space_id, signed or self._anonymous_of(conn))

    def _seen_on(self, space_id: str, conn: HttpConnection) -> None:
        """A playlist served from the fast path (no ``sid``): the connection's anonymous
        session, hashed once per connection."""
        if self.presence is not None:
            self.presence.seen(space_id, self._anonymous_of(conn))

    def _signed_session(self, conn: HttpConnection, space_id: str, sid: str | None) -> str | None:
        """``sid`` if the server issued it for this Space. The last one that verified is
        kept on the connection: a player's polls are checked once, not each time."""
        if not sid or self.sessions is None:
            return None
        if conn.verified == (space_id, sid):
            return sid
        if not self.sessions.verify(space_id, sid):
            return None
        conn.verified = (space_id, sid)
        return sid

    def _anonymous_of(self, conn: HttpConnection) -> str:
        if conn.session is None:
            conn.session = self._anonymous(conn.peer, conn.user_agent)
        return conn.session

    def _anonymous(self, peer: str, detail: str) -> str:
        return anonymous_session(self.sessions.key if self.sessions else b"", peer, detail)

    def _playlist_bytes(self, channel: Channel, cache: str) -> bytes:
        # Keyed by the body's identity, not id(): a freed body's id can be reused by a
        # newer playlist, which would then be answered with stale bytes.
        body = channel.hls.playlist()
        built = channel.playlist_replies.get(cache)
        if built is None or built[0] is not body:
            self.builds += 1
            built = channel.playlist_replies[cache] = (body, response_bytes(200, body, M3U8, cache))
        return built[1]

    def _part(self, channel: Channel, msn: int, index: int) -> Reply:
        part = channel.hls.part(msn, index)
        if part is not None:
            return self._cached(channel, part_uri(msn, index), part.data)
        future = channel.hls.part_is_future(msn, index)
        # A part index past the segment's length is never produced; do not hold it.
        if not future or index >= channel.hls.config.parts_per_segment:
            raise NotFound(f"part {msn}.{index} is not in the live window")
        # A preload-hinted request (8216bis 6.2.6): answer it the moment the part exists.
        return self._blocking(channel, msn, index, lambda: self._part_now(channel, msn, index))

    def _part_now(self, channel: Channel, msn: int, index: int) -> bytes:
        part = channel.hls.part(msn, index)
        if part is None:
            raise NotFound(f"part {msn}.{index} was not produced (the space ended)")
        return self._cached(channel, part_uri(msn, index), part.data)

    def _segment(self, channel: Channel, msn: int) -> bytes:
        seg = channel.hls.segment(msn)
        if seg is None:
            raise NotFound(f"segment {msn} is not in the live window")
        return self._cached(channel, segment_uri(msn), seg.data)

    def _cached(self, channel: Channel, uri: str, body: bytes) -> bytes:
        key = f"/live/{channel.space_id}/{uri}".encode()
        hit = self._cache.get(key)
        if hit is None:
            self.builds += 1
            hit = self._cache[key] = response_bytes(200, body, MP4, IMMUTABLE)
            self._trim_cache()
        return hit

    def _trim_cache(self) -> None:
        # Bounded: drop the oldest entries; they are rebuilt on demand if still live.
        bound = self.config.max_cached_responses * max(1, len(self.channels))
        while len(self._cache) > bound:
            del self._cache[next(iter(self._cache))]

    async def _wait_then(
        self, channel: Channel, msn: int, part: int | None, build: Callable[[], bytes]
    ) -> bytes:
        fut = channel.wait_for(msn, part)
        channel.waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.config.blocking_timeout_s)
        except TimeoutError as exc:
            raise Unavailable("the requested part was not produced in time", 1.0) from exc
        finally:
            channel.waiting -= 1
        return build()

    def _blocking(
        self, channel: Channel, msn: int, part: int | None, build: Callable[[], bytes]
    ) -> Awaitable[bytes]:
        if channel.waiting >= channel.config.max_waiters:
            raise Unavailable("too many blocking requests are waiting", 1.0 + self.rng.random())
        return self._wait_then(channel, msn, part, build)

    # -- replay ----------------------------------------------------------------------
    def _replay(self, space_id: str, rest: str, req: Request) -> Reply:
        if self.replays is None:
            raise NotFound("this server keeps no recordings")
        return self.replays.reply(space_id, rest, req)

    # -- the flush loop --------------------------------------------------------------
    async def run_flusher(self) -> None:
        next_reap = time.monotonic() + self.config.reap_every_s
        tick = self.config.flush_tick_s
        while True:
            asked = time.monotonic()
            await asyncio.sleep(tick)
            # How late the loop woke up: a decaying maximum, so one late tick counts for
            # about half a second.
            lag = time.monotonic() - asked - tick
            self.loop_lag_s = max(lag, self.loop_lag_s * 0.9)
            await self.flush_due()
            now = time.monotonic()
            self.drop_ended(now)
            if now >= next_reap:
                next_reap = now + self.config.reap_every_s
                self.reap_idle(now)

    def reap_idle(self, now: float) -> int:
        """Close connections that hold a socket without a request in flight."""
        c = self.config
        stale = [
            x for x in self.connections if x.overstayed(now, c.head_timeout_s, c.idle_timeout_s)
        ]
        for conn in stale:
            if conn.transport is not None:
                conn.transport.close()
        return len(stale)

    async def flush_due(self) -> None:
        """Play every due fan-out turn, yielding to the loop between slices of a turn so
        it still accepts and answers while a big crowd is written."""
        step = self.config.pass_slice_listeners
        for channel in list(self._releasing):
            self._releasing.discard(channel)
            await self.release_held(channel)
        for channel in list(self.channels.values()):
            for fanout in (channel.ogg, channel.events):
                while (turn := fanout.next_turn(time.monotonic())) is not None:
                    for _ in fanout.play(turn, step):
                        await asyncio.sleep(0)


_OGG_HEAD = stream_head("audio/ogg", (("X-Content-Type-Options", "nosniff"),))
# See the module docstring: what a streaming CDN may do with the room events.
_EVENTS_HEAD = stream_head(
    "text/event-stream",
    (("X-Accel-Buffering", "no"),),
    cache="public, max-age=0, s-maxage=1, no-transform",
)


def _playlist_target(space_id: str) -> bytes:
    return f"/live/{space_id}/index.m3u8".encode()


def _uncounted(req: Request) -> bool:
    """``?count=0``: this stream is not one more person waiting. Unsigned on an SSE
    stream, where it takes only its own connection out of the count; honoured on an Ogg
    stream only with a signed ``sid`` (``_uncount_page``), since there it also says a
    page will not start at Go live, which moves the start's spread."""
    return req.query.get("count") == "0"


def _int_param(req: Request, name: str) -> int | None:
    raw = req.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise BadRequest(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


__all__ = ["AudienceConfig", "AudienceServer"]
