"""A listener: records what the audience hears, over the Ogg stream or LL-HLS.

Ogg: one GET that streams until the space ends or time is up.
LL-HLS (RFC 8216bis 6.2.5.2): each playlist request blocks on the preload-hinted part
(``_HLS_msn``/``_HLS_part``); every newly listed part is then fetched once. The fMP4
is written as received, or remuxed to Ogg when ``out`` ends in ``.ogg``.

A dropped connection (end of stream, reset, refused, 5xx, 503 + Retry-After) is
reconnected on the reconnect schedule until time is up; a 4xx that retrying cannot fix
(the space ended: 404) ends the listening. A reconnected Ogg stream is spliced into the
same capture so it stays one decodable file: the cut page is dropped, the server's
header pages are kept when they start a new logical stream (a chained Ogg stream, RFC
3533 section 4: a restarted stage) and skipped when they repeat the one already open (a
restarted audience worker: the same stream goes on).
"""

from __future__ import annotations

import asyncio
import io
import random
import struct
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import av
import httpx

from townhall.peers.backoff import parse_retry_after, reconnect_delay


@dataclass
class Received:
    data: bytearray = field(default_factory=bytearray)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, offset)
    first_byte_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)
    retries: int = 0  # requests answered 503 (busy) and tried again
    reconnects: int = 0  # connections opened again after a drop
    drops: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, why)

    def add(self, chunk: bytes) -> None:
        now = time.monotonic()
        if self.first_byte_at is None:
            self.first_byte_at = now
        self.arrivals.append((now, len(self.data)))
        self.data += chunk

    def truncate(self, size: int) -> None:
        """Forget everything from byte ``size`` on (a page cut by a dropped connection)."""
        del self.data[size:]
        self.arrivals = [(at, off) for at, off in self.arrivals if off < size]


class Refused(RuntimeError):
    """The server answered with an error that retrying cannot fix."""


# -- the pure cores -------------------------------------------------------------------


class DropVerdict(Enum):
    RECONNECT = "reconnect"
    STOP = "stop"


def drop_verdict(status: int | None) -> DropVerdict:
    """After a stream dropped or a request failed: ``status`` is the HTTP answer, or
    None for a connection that ended, was reset or refused, or timed out."""
    if status is None or status in (408, 425, 429) or status >= 500:
        return DropVerdict.RECONNECT
    return DropVerdict.STOP


_PAGE = struct.Struct("<4sBBqIIIB")  # RFC 3533 section 6: 27 bytes before the lacing


def ogg_page_ends(data: bytes | bytearray, start: int = 0) -> list[tuple[int, int]]:
    """(end offset, serial) of every complete page from ``start``, in order; stops at
    the first incomplete or unsynchronised page."""
    ends, pos = [], start
    while len(data) - pos >= _PAGE.size:
        capture, _v, _flags, _granule, serial, _seq, _crc, nseg = _PAGE.unpack_from(data, pos)
        lacing_end = pos + _PAGE.size + nseg
        if capture != b"OggS" or len(data) < lacing_end:
            break
        end = lacing_end + sum(data[pos + _PAGE.size : lacing_end])
        if len(data) < end:
            break
        ends.append((end, serial))
        pos = end
    return ends


def is_ogg_header_page(data: bytes | bytearray, start: int) -> bool:
    nseg = data[start + _PAGE.size - 1]
    body = start + _PAGE.size + nseg
    return bytes(data[body : body + 8]) in (b"OpusHead", b"OpusTags")


@dataclass
class OggSplice:
    """Keeps one capture decodable across reconnects (see the module docstring)."""

    serial: int | None = None  # the logical stream the capture is in
    _pending: bytearray = field(default_factory=bytearray)
    _deciding: bool = False  # a new connection's header pages are not judged yet
    _connection_start: int = 0

    def connected(self, size: int) -> None:
        """A new connection starts at capture offset ``size``."""
        self._pending.clear()
        self._deciding = True
        self._connection_start = size

    def feed(self, chunk: bytes) -> bytes:
        """What of a new connection's bytes goes into the capture."""
        if not self._deciding:
            return chunk
        self._pending += chunk
        pages = ogg_page_ends(self._pending)
        pos = 0
        for end, serial in pages:
            if not is_ogg_header_page(self._pending, pos):
                if pos and serial == self.serial:
                    del self._pending[:pos]  # the same stream goes on: skip its headers
                self.serial = serial
                self._deciding = False
                out = bytes(self._pending)
                self._pending.clear()
                return out
            pos = end
        return b""

    def dropped(self, data: bytes | bytearray) -> int:
        """Where the capture must end after a drop: past its last complete page."""
        ends = ogg_page_ends(data, self._connection_start)
        return ends[-1][0] if ends else self._connection_start


# -- Ogg ------------------------------------------------------------------------------


class _Dropped(Exception):
    def __init__(self, status: int | None, why: str, retry_after_s: float | None = None):
        super().__init__(why)
        self.status = status
        self.retry_after_s = retry_after_s


async def listen_ogg(url: str, seconds: float, rng: random.Random | None = None) -> Received:
    rec = Received()
    rng = rng or random.Random()
    deadline = time.monotonic() + seconds
    splice = OggSplice()
    attempt = 0
    timeout = httpx.Timeout(10.0, read=5.0)
    async with httpx.AsyncClient(timeout=timeout) as client:
        while time.monotonic() < deadline:
            start = len(rec.data)
            try:
                await _stream_ogg(client, url, rec, splice, deadline)
                return rec  # time is up
            except _Dropped as drop:
                got_media = len(rec.data) > start
                size = splice.dropped(rec.data)
                rec.truncate(size)
                rec.drops.append((time.monotonic(), str(drop)))
                if drop_verdict(drop.status) is DropVerdict.STOP:
                    if not rec.data:
                        raise Refused(f"GET {url}: {drop}") from drop
                    return rec  # the space ended
                if drop.status == 503:
                    rec.retries += 1
                attempt = 0 if got_media else attempt + 1
                delay = reconnect_delay(attempt, rng, drop.retry_after_s)
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                rec.reconnects += 1
    return rec


async def _stream_ogg(
    client: httpx.AsyncClient, url: str, rec: Received, splice: OggSplice, deadline: float
) -> None:
    """Stream into ``rec`` until the deadline; raises _Dropped on anything else."""
    try:
        async with client.stream("GET", url) as resp:
            if resp.status_code != 200:
                body = (await resp.aread())[:200]
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
                raise _Dropped(resp.status_code, f"{resp.status_code} {body!r}", retry_after)
            splice.connected(len(rec.data))
            stream = resp.aiter_raw()
            while (left := deadline - time.monotonic()) > 0:
                try:
                    chunk = await asyncio.wait_for(anext(stream), left)
                except TimeoutError:
                    return
                except StopAsyncIteration:
                    raise _Dropped(None, "the stream ended") from None
                if kept := splice.feed(chunk):
                    rec.add(kept)
    except httpx.HTTPError as exc:
        raise _Dropped(None, f"{type(exc).__name__}: {exc}") from exc


@dataclass
class PlaylistView:
    init_uri: str | None
    part_uris: list[str]
    segment_uris: list[str]
    hint: tuple[int, int] | None
    ended: bool


def parse_playlist(text: str) -> PlaylistView:
    init_uri, parts, segments, hint, ended = None, [], [], None, False
    msn = 0
    parts_in_open = 0
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            msn = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-MAP:"):
            init_uri = _attr(line, "URI")
        elif line.startswith("#EXT-X-PART:"):
            parts.append(_attr(line, "URI"))
            parts_in_open += 1
        elif line.startswith("#EXT-X-PRELOAD-HINT:"):
            hint = (msn, parts_in_open)
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif line and not line.startswith("#"):
            segments.append(line)
            msn += 1
            parts_in_open = 0
    return PlaylistView(init_uri, parts, segments, hint, ended)


def _attr(line: str, name: str) -> str:
    for item in line.split(":", 1)[1].split(","):
        key, _, value = item.partition("=")
        if key == name:
            return value.strip('"')
    raise ValueError(f"no {name} in {line!r}")


async def listen_hls(url: str, seconds: float, rng: random.Random | None = None) -> Received:
    rec = Received()
    rng = rng or random.Random()
    deadline = time.monotonic() + seconds
    session = _HlsSession(url, rec)
    attempt = 0
    async with httpx.AsyncClient(timeout=15.0) as client:
        while time.monotonic() < deadline:
            before = len(rec.data)
            try:
                await session.follow(client, deadline)
                return rec  # time is up, or the playlist ended
            except _Dropped as drop:
                rec.drops.append((time.monotonic(), str(drop)))
                if drop_verdict(drop.status) is DropVerdict.STOP:
                    if not rec.data:
                        raise Refused(f"GET {url}: {drop}") from drop
                    return rec
                if drop.status == 503:
                    rec.retries += 1
                attempt = 0 if len(rec.data) > before else attempt + 1
                delay = reconnect_delay(attempt, rng, drop.retry_after_s)
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                rec.reconnects += 1
    return rec


@dataclass
class _HlsSession:
    """What a listener has fetched so far; a reconnect picks up after it."""

    url: str
    rec: Received
    init_uri: str | None = None
    fetched: set[str] = field(default_factory=set)

    async def follow(self, client: httpx.AsyncClient, deadline: float) -> bool:
        """Fetch parts as they are listed until the deadline (False) or the end (True)."""
        base = self.url.rsplit("/", 1)[0]
        view = await self._playlist(client, self.url)
        if view.init_uri is None:
            raise RuntimeError("playlist has no EXT-X-MAP")
        if self.init_uri is None:
            self.rec.add(await self._get(client, f"{base}/{view.init_uri}"))
            self.init_uri = view.init_uri
            # Start at the live edge: only the newest listed part, then follow the hints.
            self.fetched.update(view.part_uris[:-1])
        while time.monotonic() < deadline:
            for uri in view.part_uris:
                if uri not in self.fetched:
                    self.fetched.add(uri)
                    part = await self._get(client, f"{base}/{uri}", missing_ok=True)
                    if part:
                        self.rec.add(part)
            if view.ended or view.hint is None:
                return True
            msn, part_index = view.hint
            view = await self._playlist(client, f"{self.url}?_HLS_msn={msn}&_HLS_part={part_index}")
        return False

    async def _playlist(self, client: httpx.AsyncClient, url: str) -> PlaylistView:
        return parse_playlist((await self._get(client, url)).decode())

    async def _get(self, client: httpx.AsyncClient, url: str, missing_ok: bool = False) -> bytes:
        try:
            resp = await client.get(url)
        except httpx.HTTPError as exc:
            raise _Dropped(None, f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code == 200:
            return resp.content
        if missing_ok and resp.status_code == 404:
            return b""  # a part that left the window while we reconnected
        retry_after = parse_retry_after(resp.headers.get("retry-after"))
        raise _Dropped(resp.status_code, f"GET {url}: {resp.status_code}", retry_after)


def remux_to_ogg(fmp4: bytes) -> bytes:
    """Copy the Opus packets from fMP4 into an Ogg file (no re-encoding)."""
    out = io.BytesIO()
    with av.open(io.BytesIO(fmp4), "r") as src, av.open(out, "w", format="ogg") as dst:
        in_stream = src.streams.audio[0]
        out_stream = dst.add_stream_from_template(in_stream)
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            dst.mux(packet)
    return out.getvalue()


def save(rec: Received, out: Path, hls: bool) -> None:
    data = bytes(rec.data)
    if hls and out.suffix == ".ogg":
        data = remux_to_ogg(data)
    out.write_bytes(data)
