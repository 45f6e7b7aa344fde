"""The two kinds of simulated listener, as thin asyncio adapters around ListenerRecord.

* Ogg: one endless GET; once the head is in, the socket is read in batches by the
  process's ``StreamReader`` and each chunk is dated by its newest Ogg page header
  (RFC 3533), whose granule position counts 48 kHz samples (RFC 7845 section 4).
* LL-HLS: blocking playlist reloads on the preload hint (RFC 8216bis 6.2.5.2), each new
  part fetched once on the same keep-alive connection; a part's media time is its
  ``tfdt`` decode time.

Both start when told, stop at ``end_at`` and honour 503 + Retry-After (and refused
connects) with ``Backoff``: capped exponential backoff with full jitter. An Ogg stream
that drops once it is open is reconnected like a player does, on the reconnect schedule
(``reconnect_delay``) until the run ends; a stage restart on the same connection (a
chained Ogg link: new serial, fresh header pages) is followed without a reconnect.
LL-HLS parts are listed only for segments that have media, so ``EXT-X-GAP`` segments
are never fetched and the parts after an ``EXT-X-DISCONTINUITY`` are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from townhall.loadtest.client import (
    ClientError,
    ConnectionDropped,
    HttpClientConnection,
    ServiceUnavailable,
    connect,
)
from townhall.loadtest.stats import ListenerRecord
from townhall.loadtest.streams import Stream, StreamReader
from townhall.loadtest.wire import Target, decode_time, timescale, with_query
from townhall.peers.backoff import Backoff, reconnect_delay
from townhall.peers.listen import PlaylistView, parse_playlist

OPUS_GRANULE_RATE_HZ = 48_000  # RFC 7845 section 4: granule positions count 48 kHz samples
T = TypeVar("T")


@dataclass(frozen=True)
class ListenerPlan:
    target: Target  # the Ogg URL, or the playlist URL for LL-HLS
    end_at: float  # monotonic
    backoff: Backoff
    request_timeout_s: float = 10.0
    # The listener's own source address on a loopback target (streams.loopback_source).
    source_ip: str | None = None


class GaveUp(Exception):
    """Retries ran out or would outlast the run; ``last`` is why the last attempt failed."""

    def __init__(self, retries: int, last: ClientError) -> None:
        super().__init__(f"gave up after {retries} retries: {last}")
        self.last = last


async def with_backoff(
    plan: ListenerPlan,
    rng: random.Random,
    rec: ListenerRecord,
    attempt_once: Callable[[], Awaitable[T]],
) -> T:
    last: ClientError = ConnectionDropped("no attempt fitted in the run")
    for attempt in range(plan.backoff.max_attempts):
        try:
            return await attempt_once()
        except ServiceUnavailable as exc:
            last, delay = exc, plan.backoff.delay(attempt, exc.retry_after_s, rng)
        except ConnectionDropped as exc:
            last, delay = exc, plan.backoff.delay(attempt, None, rng)
        if time.monotonic() + delay >= plan.end_at:
            break
        rec.retries += 1
        await asyncio.sleep(delay)
    raise GaveUp(rec.retries, last)


def _left(plan: ListenerPlan) -> float:
    return plan.end_at - time.monotonic()


# -- Ogg ----------------------------------------------------------------------------------
class OggPageClock:
    """Stamps each chunk of the stream with its arrival and its freshest granule.

    The unit is the chunk (what one read brings): the server cuts a chunk right after
    its freshest page, so that page's granule dates the chunk. Older pages in the same
    chunk waited inside it on purpose (the flush interval), which is not lateness.

    Lean on purpose, because one client core must keep up with tens of thousands of
    listeners: the newest page header in a read is found with one ``rfind`` instead of
    parsing every page (RFC 3533 section 6: "OggS", version 0, then the 64-bit granule
    at offset 6).
    """

    def __init__(self, rec: ListenerRecord) -> None:
        self.rec = rec
        self.serial: int | None = None

    def reconnected(self) -> None:
        """A new connection: its first serial is not a restart of the stream."""
        self.serial = None

    def feed(self, data: bytes | bytearray, size: int, now: float) -> None:
        """``size`` new bytes at the start of ``data`` (a reused buffer), read at ``now``."""
        self.rec.bytes_received += size
        page = newest_page(data, size)
        if page is None:
            return
        granule, serial = page
        if serial != self.serial:
            if self.serial is not None:
                self.rec.restarted_stream()  # a chained link: the program's clock restarted
            self.serial = serial
        if granule <= 0:
            return  # only the OpusHead/OpusTags pages (granule 0)
        self.rec.media_arrived(now, granule / OPUS_GRANULE_RATE_HZ)


def newest_page(data: bytes | bytearray, size: int | None = None) -> tuple[int, int] | None:
    """(granule position, serial) of the last page header that starts in ``data[:size]``."""
    end = len(data) if size is None else size
    limit = end
    while (at := data.rfind(b"OggS", 0, end)) >= 0:
        if at + 18 <= limit and data[at + 4] == 0:
            granule = int.from_bytes(data[at + 6 : at + 14], "little", signed=True)
            return granule, int.from_bytes(data[at + 14 : at + 18], "little")
        end = at
    return None


def newest_granule(data: bytes | bytearray, size: int | None = None) -> int | None:
    """The granule position of the last page header that starts in ``data[:size]``."""
    page = newest_page(data, size)
    return None if page is None else page[0]


async def run_ogg_listener(
    plan: ListenerPlan,
    rng: random.Random,
    rec: ListenerRecord,
    reader: StreamReader,
    source_ip: str | None = None,
) -> None:
    rec.skip_join_burst = True
    clock = OggPageClock(rec)
    opened: list[Stream] = []

    async def attempt() -> Stream:
        stream = reader.open(plan.target, clock.feed, source_ip)
        opened.append(stream)
        try:
            async with asyncio.timeout(min(plan.request_timeout_s, max(0.0, _left(plan)))):
                await stream.opened
        except TimeoutError as exc:
            stream.close()
            raise ConnectionDropped("no response head in time") from exc
        return stream

    try:
        stream = await with_backoff(plan, rng, rec, attempt)
        rec.connected = True
        while True:
            try:
                async with asyncio.timeout(_left(plan)):
                    await stream.ended
            except ConnectionDropped:
                rec.dropped(time.monotonic())
                clock.reconnected()
                stream = await _reconnect(plan, rng, rec, attempt)
    except TimeoutError:
        pass  # the run is over: the normal end of an endless stream
    except (ClientError, GaveUp, ValueError) as exc:
        rec.failure = _reason(exc)
    finally:
        for each in opened:
            each.close()
        rec.ended_at = min(time.monotonic(), plan.end_at)  # not the teardown after it
    if rec.failure is None and rec.first_media_at is None and rec.drops:
        rec.failure = "dropped"  # never got audio: reconnecting did not help


async def _reconnect(
    plan: ListenerPlan,
    rng: random.Random,
    rec: ListenerRecord,
    attempt_once: Callable[[], Awaitable[T]],
) -> T:
    """Like a player after a drop: the reconnect schedule, Retry-After honoured, until
    the run ends (then TimeoutError, the normal end of the run)."""
    retry_after_s: float | None = None
    for attempt in itertools.count():
        delay = reconnect_delay(attempt, rng, retry_after_s)
        if delay >= _left(plan):
            raise TimeoutError("the run ends before the next reconnect")
        await asyncio.sleep(delay)  # even the first waits its jitter: no reconnect herd
        try:
            opened = await attempt_once()
        except ServiceUnavailable as exc:
            retry_after_s = exc.retry_after_s
        except ConnectionDropped:
            retry_after_s = None
        else:
            rec.reconnects += 1
            return opened
        rec.retries += 1
    raise AssertionError("unreachable: itertools.count is endless")


def _reason(exc: Exception) -> str:
    if isinstance(exc, GaveUp):
        return "refused" if isinstance(exc.last, ServiceUnavailable) else _reason(exc.last)
    if isinstance(exc, ValueError):
        return "bad media"  # lost Ogg sync, or an fMP4 part without a decode time
    return "dropped" if "lost" in str(exc) or "closed" in str(exc) else str(exc)[:60]


# -- the web page in its waiting room ------------------------------------------------------
async def run_web_listener(
    plan: ListenerPlan,
    events: Target,
    rng: random.Random,
    rec: ListenerRecord,
    reader: StreamReader,
    source_ip: str | None = None,
) -> None:
    """What the listen page does from the moment it loads (web/waiting.js): the SSE
    stream, then its Ogg stream opened at once (held by the audience port until the
    program begins, and marked ``count=0``: the SSE stream counts the page). At Go live
    nothing connects; the audio flows on the held stream. The SSE stream stays open,
    as the page keeps it."""

    async def attempt() -> Stream:
        stream = reader.open(events, _ignore, source_ip)
        try:
            async with asyncio.timeout(min(plan.request_timeout_s, max(0.0, _left(plan)))):
                await stream.opened
        except TimeoutError as exc:
            stream.close()
            raise ConnectionDropped("no response head in time") from exc
        return stream

    stream: Stream | None = None
    try:
        stream = await with_backoff(plan, rng, rec, attempt)
    except (ClientError, GaveUp) as exc:
        rec.failure = "events: " + _reason(exc)
        rec.ended_at = time.monotonic()
        return
    held = dataclasses.replace(
        plan, target=plan.target.with_path(with_query(plan.target.path, count=0))
    )
    try:
        await run_ogg_listener(held, rng, rec, reader, source_ip)
    finally:
        stream.close()


def _ignore(_data: bytes | bytearray, _size: int, _now: float) -> None:
    """The room snapshots: the page renders them; the crowd needs none of them."""


# -- LL-HLS -------------------------------------------------------------------------------
class HlsSession:
    """One keep-alive connection for one listener; reconnects if the server closed it."""

    def __init__(self, plan: ListenerPlan, rng: random.Random, rec: ListenerRecord) -> None:
        self.plan, self.rng, self.rec = plan, rng, rec
        self.conn: HttpClientConnection | None = None
        self.base = plan.target.path.rsplit("/", 1)[0] + "/"

    async def get(self, path: str) -> bytes:
        async def once() -> bytes:
            if self.conn is None or self.conn.closed:
                plan = self.plan
                self.conn = await connect(plan.target, plan.request_timeout_s, plan.source_ip)
            resp = await self.conn.get(self.plan.target, path)
            if resp.status != 200:
                raise ValueError(f"GET {path}: status {resp.status}")
            self.rec.bytes_received += len(resp.body)
            return resp.body

        return await with_backoff(self.plan, self.rng, self.rec, once)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@functools.lru_cache(maxsize=64)
def parsed_playlist(body: bytes) -> PlaylistView:
    # Every listener in this process gets the same few playlist versions: parse each once.
    return parse_playlist(body.decode())


async def run_hls_listener(plan: ListenerPlan, rng: random.Random, rec: ListenerRecord) -> None:
    session = HlsSession(plan, rng, rec)
    try:
        # One deadline for the whole run: cheaper than a wait_for task per request.
        async with asyncio.timeout(_left(plan)):
            await _follow_playlist(session, plan, rec)
    except TimeoutError:
        pass
    except (ClientError, GaveUp, ValueError) as exc:
        rec.failure = _reason(exc) if not str(exc).startswith("GET") else str(exc)[:60]
    finally:
        session.close()
        rec.ended_at = min(time.monotonic(), plan.end_at)  # not the teardown after it


async def _follow_playlist(session: HlsSession, plan: ListenerPlan, rec: ListenerRecord) -> None:
    view = parsed_playlist(await session.get(plan.target.path))
    rec.connected = True
    if view.init_uri is None:
        raise ValueError("playlist has no EXT-X-MAP")
    scale = timescale(await session.get(session.base + view.init_uri)) or OPUS_GRANULE_RATE_HZ
    fetched = set(view.part_uris[:-1])  # join at the live edge, like a player
    while _left(plan) > 0:
        for uri in view.part_uris:
            if uri not in fetched:
                fetched.add(uri)
                await _fetch_part(session, uri, scale, rec)
        fetched &= set(view.part_uris)  # bounded by the playlist window
        if view.ended or view.hint is None:
            return
        msn, part = view.hint
        reload = with_query(plan.target.path, _HLS_msn=msn, _HLS_part=part)
        view = parsed_playlist(await session.get(reload))


async def _fetch_part(session: HlsSession, uri: str, scale: int, rec: ListenerRecord) -> None:
    body = await session.get(session.base + uri)
    now = time.monotonic()
    media = decode_time(body)
    if media is None:
        raise ValueError(f"part {uri} has no tfdt")
    rec.media_arrived(now, media / scale)
