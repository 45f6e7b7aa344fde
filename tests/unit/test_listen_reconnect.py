"""``townhall listen`` reconnects a dropped stream and keeps one decodable Ogg file."""

from __future__ import annotations

import asyncio
import io
import random
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import av
import numpy as np
import pytest

from townhall.media.ogg import parse_pages
from townhall.peers.listen import (
    DropVerdict,
    OggSplice,
    drop_verdict,
    listen_hls,
    listen_ogg,
    ogg_page_ends,
)

RATE = 48_000


def ogg_tone(freq_hz: float, seconds: float) -> tuple[bytes, list[bytes]]:
    """(header pages, media pages) of an Ogg Opus tone, one 20 ms packet a page."""
    out = io.BytesIO()
    with av.open(out, "w", format="ogg", options={"page_duration": "20000"}) as container:
        stream = container.add_stream("libopus", rate=RATE)
        stream.layout = "mono"
        for i in range(int(seconds * 50)):
            t = (np.arange(960) + i * 960) / RATE
            pcm = (np.sin(2 * np.pi * freq_hz * t) * 0.3 * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = i * 960
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    pages, _ = parse_pages(out.getvalue())
    header = b"".join(p.data for p in pages if p.is_header)
    return header, [p.data for p in pages if not p.is_header]


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), "r") as container:
        frames = [f.to_ndarray()[0] for f in container.decode(audio=0)]  # fltp: float32
    return np.concatenate(frames)


def amplitude_at(pcm: np.ndarray, freq_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)))) / (len(pcm) / 4)
    return float(spectrum[round(freq_hz * len(pcm) / RATE)])


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (None, DropVerdict.RECONNECT),  # ended, reset, refused, timed out
        (503, DropVerdict.RECONNECT),
        (500, DropVerdict.RECONNECT),
        (502, DropVerdict.RECONNECT),
        (429, DropVerdict.RECONNECT),
        (404, DropVerdict.STOP),  # the space ended (or never was)
        (403, DropVerdict.STOP),
        (400, DropVerdict.STOP),
    ],
)
def test_drop_verdicts(status: int | None, verdict: DropVerdict) -> None:
    assert drop_verdict(status) is verdict


def test_a_cut_page_is_dropped_from_the_capture() -> None:
    header, media = ogg_tone(440, 0.2)
    data = header + media[0] + media[1][:20]
    splice = OggSplice()
    assert splice.dropped(data) == len(header) + len(media[0])
    assert [end for end, _ in ogg_page_ends(data)][-1] == len(header) + len(media[0])


def test_the_same_stream_again_skips_its_headers_and_a_new_one_keeps_them() -> None:
    header, media = ogg_tone(440, 0.2)
    splice = OggSplice()
    splice.connected(0)
    first = splice.feed(header + media[0])
    assert first == header + media[0]
    splice.connected(len(first))
    # The headers may arrive in any slicing; nothing is let through before a decision.
    assert splice.feed(header[:10]) == b""
    assert splice.feed(header[10:] + media[3]) == media[3]
    assert splice.feed(media[4]) == media[4]

    other_header, other_media = ogg_tone(660, 0.2)  # another encoder: another serial
    splice.connected(0)
    assert splice.feed(other_header + other_media[0]) == other_header + other_media[0]


@asynccontextmanager
async def cutting_server(
    links: list[tuple[bytes, list[bytes]]], cut_bytes: int = 25
) -> AsyncIterator[str]:
    """Serves one link per connection, cut in the middle of a page, then 404s."""
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        if served >= len(links):
            body = b'{"error":"not_found","detail":"the space has ended"}'
            writer.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
        else:
            header, pages = links[served]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: audio/ogg\r\nConnection: close\r\n\r\n")
            writer.write(header)
            for page in pages:
                writer.write(page)
                await writer.drain()
                await asyncio.sleep(0.002)
            writer.write(pages[0][:cut_bytes])  # the connection dies mid-page
        served += 1
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/live/x.ogg"


@pytest.mark.parametrize("restarted", [False, True], ids=["worker-lost", "stage-restarted"])
async def test_a_stream_cut_once_is_reconnected_into_one_decodable_file(restarted: bool) -> None:
    header, media = ogg_tone(440, 3.0)
    # A restarted stage sends a new encoder's stream (a new serial) after the gap; another
    # audience worker sends the same stream on from a later page.
    second = ogg_tone(660, 1.0) if restarted else (header, media[100:])
    async with cutting_server([(header, media[:50]), second]) as url:
        rec = await listen_ogg(url, 8.0, random.Random(1))
    assert rec.reconnects >= 1
    assert len(rec.drops) == 3  # cut, cut, then the 404 that ends it
    data = bytes(rec.data)
    # Every byte is whole pages: nothing of the cut pages is left.
    assert ogg_page_ends(data)[-1][0] == len(data)
    audio = decode(data)
    first_s = 50 * 0.02
    second_s = (1.0 if restarted else 50 * 0.02) - 0.1
    assert len(audio) >= (first_s + second_s) * RATE
    before, after = audio[: RATE // 2], audio[-RATE // 2 :]
    assert amplitude_at(before, 440) > 0.1
    assert amplitude_at(after, 660 if restarted else 440) > 0.1
    if shutil.which("ffmpeg"):  # and the ffmpeg CLI reads it without a complaint
        run = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", "-", "-f", "null", "-"],
            input=data,
            capture_output=True,
            timeout=30,
        )
        assert run.returncode == 0 and not run.stderr, run.stderr.decode()


class LiveHls:
    """A tiny LL-HLS origin: a part every 50 ms, one segment of everything, blocking
    playlist requests; it drops the 3rd playlist request's connection and answers the
    4th with 503, as a lost audience worker and a restarting stage would."""

    PART_S = 0.05

    def __init__(self) -> None:
        self.started = asyncio.get_running_loop().time()
        self.playlist_requests = 0

    def parts(self) -> int:
        return int((asyncio.get_running_loop().time() - self.started) / self.PART_S) + 1

    def playlist(self) -> bytes:
        n = self.parts()
        lines = ["#EXTM3U", "#EXT-X-MEDIA-SEQUENCE:0", '#EXT-X-MAP:URI="init.mp4"']
        lines += [f'#EXT-X-PART:DURATION=0.05,URI="p{i}.m4s"' for i in range(n)]
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p{n}.m4s"')
        return ("\n".join(lines) + "\n").encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                path = head.split(" ")[1]
                if not await self._answer(path, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test is over
        writer.close()

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> bool:
        status, body, extra = 200, b"", ""
        if path.startswith("/index.m3u8"):
            self.playlist_requests += 1
            if self.playlist_requests == 3:
                return False  # the worker died: the connection closes unanswered
            if self.playlist_requests == 4:
                status, extra = 503, "Retry-After: 0\r\n"
            elif "_HLS_part=" in path:
                wanted = int(path.split("_HLS_part=")[1])
                while self.parts() <= wanted:
                    await asyncio.sleep(0.01)
            body = self.playlist() if status == 200 else b"{}"
        elif path == "/init.mp4":
            body = b"<init>"
        else:
            body = f"<{path.strip('/').removesuffix('.m4s')}>".encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        await writer.drain()
        return True


async def test_an_hls_session_that_drops_resumes_after_the_parts_it_has() -> None:
    origin = LiveHls()
    server = await asyncio.start_server(origin.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        rec = await listen_hls(f"http://127.0.0.1:{port}/index.m3u8", 4.0, random.Random(2))
    assert rec.reconnects == 2 and rec.retries == 1, rec.drops
    got = bytes(rec.data).decode()
    assert got.startswith("<init>") and got.count("<init>") == 1
    parts = [int(p) for p in re.findall(r"<p(\d+)>", got)]
    assert len(parts) > 5
    # Every part once, in order, none skipped: the reconnect picked up where it was.
    assert parts == list(range(parts[0], parts[0] + len(parts))), parts
