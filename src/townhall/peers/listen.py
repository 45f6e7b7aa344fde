"""A listener: records what the audience hears, over the Ogg stream or LL-HLS.

Ogg: one GET that streams until the space ends or time is up.
LL-HLS (RFC 8216bis 6.2.5.2): each playlist request blocks on the preload-hinted part
(``_HLS_msn``/``_HLS_part``); every newly listed part is then fetched once. The fMP4
is written as received, or remuxed to Ogg when ``out`` ends in ``.ogg``.

Both honour 503 + Retry-After with capped exponential backoff and full jitter.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import httpx

from townhall.peers.backoff import Backoff, parse_retry_after


@dataclass
class Received:
    data: bytearray = field(default_factory=bytearray)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, offset)
    first_byte_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)
    retries: int = 0

    def add(self, chunk: bytes) -> None:
        now = time.monotonic()
        if self.first_byte_at is None:
            self.first_byte_at = now
        self.arrivals.append((now, len(self.data)))
        self.data += chunk


class Refused(Exception):
    pass


async def _get_with_backoff(
    client: httpx.AsyncClient, url: str, backoff: Backoff, rng: random.Random, rec: Received
) -> httpx.Response:
    for attempt in range(backoff.max_attempts):
        resp = await client.send(client.build_request("GET", url), stream=True)
        if resp.status_code != 503:
            return resp
        retry_after = parse_retry_after(resp.headers.get("retry-after"))
        await resp.aclose()
        rec.retries += 1
        await asyncio.sleep(backoff.delay(attempt, retry_after, rng))
    raise Refused(f"{url} still refused after {backoff.max_attempts} attempts")


async def listen_ogg(url: str, seconds: float, backoff: Backoff | None = None) -> Received:
    rec = Received()
    rng = random.Random()
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=seconds + 10)) as client:
        resp = await _get_with_backoff(client, url, backoff or Backoff(), rng, rec)
        try:
            if resp.status_code != 200:
                await resp.aread()
                raise RuntimeError(f"GET {url}: {resp.status_code} {resp.text}")
            await _read_until(resp, rec, deadline)
        finally:
            await resp.aclose()
    return rec


async def _read_until(resp: httpx.Response, rec: Received, deadline: float) -> None:
    stream = resp.aiter_raw()
    while (left := deadline - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(anext(stream), left)
        except (StopAsyncIteration, TimeoutError):
            return
        rec.add(chunk)


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


async def listen_hls(url: str, seconds: float, backoff: Backoff | None = None) -> Received:
    rec = Received()
    rng = random.Random()
    base = url.rsplit("/", 1)[0]
    deadline = time.monotonic() + seconds
    fetched: set[str] = set()
    async with httpx.AsyncClient(timeout=15.0) as client:
        view = await _playlist(client, url, backoff or Backoff(), rng, rec)
        if view.init_uri is None:
            raise RuntimeError("playlist has no EXT-X-MAP")
        rec.add((await client.get(f"{base}/{view.init_uri}")).content)
        # Start at the live edge: only the newest listed part, then follow the hints.
        fetched.update(view.part_uris[:-1])
        while time.monotonic() < deadline:
            for uri in view.part_uris:
                if uri not in fetched:
                    fetched.add(uri)
                    rec.add((await client.get(f"{base}/{uri}")).content)
            if view.ended or view.hint is None:
                break
            msn, part = view.hint
            view = await _playlist(
                client, f"{url}?_HLS_msn={msn}&_HLS_part={part}", backoff or Backoff(), rng, rec
            )
    return rec


async def _playlist(
    client: httpx.AsyncClient, url: str, backoff: Backoff, rng: random.Random, rec: Received
) -> PlaylistView:
    resp = await _get_with_backoff(client, url, backoff, rng, rec)
    body = await resp.aread()
    await resp.aclose()
    if resp.status_code != 200:
        raise RuntimeError(f"GET {url}: {resp.status_code} {body[:200]!r}")
    return parse_playlist(body.decode())


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
