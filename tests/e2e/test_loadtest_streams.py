"""The load generator's Ogg listener over real loopback sockets, against a small server
whose behaviour each test chooses: a 503 with Retry-After, a head split over writes,
a stream cut off, a malformed head. The real crowd against real townhall is in
``test_loadtest.py``; these are the edges a crowd rarely shows on its own."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest

from townhall.loadtest.listeners import ListenerPlan, run_ogg_listener
from townhall.loadtest.stats import ListenerRecord
from townhall.loadtest.streams import StreamReader, loopback_source
from townhall.loadtest.wire import parse_target
from townhall.media.mixer import FRAME_SAMPLES
from townhall.media.program import ProgramEncoder
from townhall.peers.backoff import Backoff

pytestmark = pytest.mark.e2e

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: audio/ogg\r\nConnection: close\r\n\r\n"


def ogg_program(seconds: float) -> tuple[bytes, list[bytes]]:
    """(Ogg header pages, one chunk of pages per 200 ms) of a 440 Hz tone."""
    encoder = ProgramEncoder()
    chunks = []
    for i in range(int(seconds / 0.02)):
        t = (np.arange(FRAME_SAMPLES) + i * FRAME_SAMPLES) / 48_000
        pages = encoder.encode((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)).ogg_pages
        if pages:
            chunks.append(b"".join(p.data for p in pages))
    return encoder.ogg_header, chunks


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    attempts = 0

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await reader.readuntil(b"\r\n\r\n")
        try:
            await handler(reader, writer, attempts)
        finally:
            writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/live/x.ogg"


async def listen(url: str, seconds: float) -> ListenerRecord:
    reader = StreamReader()
    reading = asyncio.create_task(reader.run())
    target = parse_target(url)
    plan = ListenerPlan(target, time.monotonic() + seconds, Backoff(base_s=0.05, cap_s=0.2))
    rec = ListenerRecord("ogg", started_at=time.monotonic())
    try:
        await run_ogg_listener(plan, random.Random(1), rec, reader, loopback_source(7, target))
    finally:
        reading.cancel()
        reader.close()
    return rec


async def run_against(handler: Handler, seconds: float) -> ListenerRecord:
    async with serve(handler) as url:
        return await listen(url, seconds)


def test_a_503_is_retried_after_its_retry_after_then_the_stream_is_heard() -> None:
    header, chunks = ogg_program(2.0)

    async def handler(_: asyncio.StreamReader, w: asyncio.StreamWriter, attempt: int) -> None:
        if attempt == 1:
            w.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0.3\r\n\r\n")
            return
        w.write(OK_HEAD[:20])  # the head split over two writes
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(OK_HEAD[20:] + header)
        for chunk in chunks:
            w.write(chunk)
            await w.drain()
            await asyncio.sleep(0.2)
        await asyncio.sleep(5)  # the live edge: nothing new, but the stream is still open

    started = time.monotonic()
    rec = asyncio.run(run_against(handler, 2.5))
    assert rec.failure is None and rec.connected and rec.retries == 1
    assert rec.first_media_at is not None and rec.first_media_at - started >= 0.3
    assert len(rec.arrivals) >= 5
    media = [m for _, m in rec.arrivals]
    assert media == sorted(media) and media[-1] > 0.5  # granule/48k, in order
    assert rec.bytes_received >= len(header) + sum(len(c) for c in chunks[:5])


def test_a_stream_cut_by_the_server_is_a_drop_then_a_reconnect() -> None:
    header, chunks = ogg_program(0.6)

    async def handler(_: asyncio.StreamReader, w: asyncio.StreamWriter, attempt: int) -> None:
        w.write(OK_HEAD + header + b"".join(chunks))
        await w.drain()
        if attempt > 1:
            await asyncio.sleep(5)  # the reconnected stream stays open

    rec = asyncio.run(run_against(handler, 3.0))
    assert rec.connected and rec.failure is None  # it heard audio and came back
    assert (rec.drops, rec.reconnects) == (1, 1)
    # The first reconnect waits 0 s + up to 1 s of jitter, then the pre-roll is audio.
    assert len(rec.reconnect_gaps) == 1 and 0 <= rec.reconnect_gaps[0] < 1.5
    assert rec.arrivals  # what came before the cut was heard


def test_a_malformed_head_is_a_clear_failure_not_a_hang() -> None:
    async def handler(_: asyncio.StreamReader, w: asyncio.StreamWriter, attempt: int) -> None:
        w.write(b"HTTP/1.1 abc nonsense\r\n\r\n")
        await w.drain()
        await asyncio.sleep(5)

    started = time.monotonic()
    rec = asyncio.run(run_against(handler, 1.5))
    assert not rec.connected and rec.failure is not None
    assert rec.failure.startswith("malformed response")  # said, after retrying in time
    assert rec.retries >= 1 and time.monotonic() - started < 3.0
