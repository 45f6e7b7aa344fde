"""Replays over real sockets: byte ranges, HEAD, 416, the download bound, a large file
sent with sendfile while the server's memory stays flat, and ffmpeg seeking in a replay.

The audience server runs in its own process under uvloop, as an audience worker does
(uvloop has no ``loop.sendfile``: this is the path that drives sendfile(2) itself); one
test runs it on asyncio's own loop too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.harness.audio import amplitude_at
from tests.unit.test_recorder import ffmpeg_decode, program_feed
from townhall.feed import ChannelEnded
from townhall.media.hls import HlsConfig
from townhall.media.mixer import SAMPLE_RATE_HZ
from townhall.recording.recorder import Recorder, RecorderConfig

SERVE = """
import asyncio, sys
from pathlib import Path
from townhall.audience.server import AudienceConfig, AudienceServer

async def main() -> None:
    config = AudienceConfig(
        max_replay_connections=int(sys.argv[2]), replay_stall_timeout_s=float(sys.argv[4])
    )
    server = AudienceServer(config, Path(sys.argv[1]))
    listener = await server.open("127.0.0.1", 0)
    print(listener.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

if sys.argv[3] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


class Served:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@contextlib.contextmanager
def serving(
    root: Path, max_replay_connections: int = 64, loop: str = "uvloop", stall_timeout_s: float = 30
) -> Iterator[Served]:
    args = [str(root), str(max_replay_connections), loop, str(stall_timeout_s)]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield Served(proc, int(proc.stdout.readline()))
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """A finished 10 s recording of a 440 Hz tone, and a 6 MB file for the big tests."""

    async def record() -> None:
        rec = Recorder(tmp_path, HlsConfig(), RecorderConfig(fsync_interval_s=0.0))
        for msg in program_feed(500):
            rec.publish(msg)
        rec.publish(ChannelEnded("sp", 2e9))

    asyncio.run(record())
    (tmp_path / "big.ogg").write_bytes(np.random.default_rng(1).bytes(6 * 1024 * 1024))
    return tmp_path


def test_ranges_head_and_416_over_one_keep_alive_connection(recording: Path) -> None:
    data = (recording / "sp.ogg").read_bytes()
    size = len(data)
    with serving(recording) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        whole = client.get("/replay/sp.ogg")
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-length"] == str(size)
        assert whole.headers["content-type"] == "audio/ogg"
        for header, (start, end) in {
            "bytes=10-19": (10, 19),
            f"bytes={size - 100}-": (size - 100, size - 1),
            "bytes=-50": (size - 50, size - 1),
            f"bytes=100-{size * 2}": (100, size - 1),
        }.items():
            part = client.get("/replay/sp.ogg", headers={"Range": header})
            assert part.status_code == 206, header
            assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
            assert part.content == data[start : end + 1]
        for header in (f"bytes={size}-", "bytes=-0"):
            past = client.get("/replay/sp.ogg", headers={"Range": header})
            assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
        several = client.get("/replay/sp.ogg", headers={"Range": "bytes=0-1,5-6"})
        assert several.status_code == 200 and several.content == data
        head = client.head("/replay/sp.ogg")
        assert head.status_code == 200 and head.headers["content-length"] == str(size)
        head_part = client.head("/replay/sp.ogg", headers={"Range": "bytes=0-9"})
        assert head_part.status_code == 206 and head_part.headers["content-length"] == "10"
        # The same connection still answers exactly: HEAD sent no body.
        assert client.get("/replay/sp.ogg", headers={"Range": "bytes=0-3"}).content == b"OggS"
        assert client.get("/replay/nosuch.ogg").status_code == 404


def test_replay_files_have_their_types_and_sealed_ones_are_immutable(recording: Path) -> None:
    with serving(recording) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        types = {
            "/replay/sp.ogg": "audio/ogg",
            "/replay/sp/index.m3u8": "application/vnd.apple.mpegurl",
            "/replay/sp/init.mp4": "audio/mp4",
            "/replay/sp/s0.m4s": "audio/mp4",
        }
        for path, ctype in types.items():
            reply = client.get(path)
            assert reply.status_code == 200 and reply.headers["content-type"] == ctype, path
            assert "immutable" in reply.headers["cache-control"], path
        # A live recording (no ENDLIST yet) grows: players must revalidate.
        playlist = recording / "sp" / "vod.m3u8"
        playlist.write_text(playlist.read_text().replace("#EXT-X-ENDLIST\n", ""))
        assert client.get("/replay/sp.ogg").headers["cache-control"] == "no-cache"


def test_downloads_past_the_bound_get_503_with_retry_after(recording: Path) -> None:
    with serving(recording, max_replay_connections=1) as srv:
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /replay/big.ogg HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled.recv(1024)  # it is being sent, and we read no more
        with httpx.Client(base_url=srv.url, timeout=10) as client:
            busy = client.get("/replay/sp.ogg")
            assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
            assert client.head("/replay/big.ogg").status_code == 200  # HEAD holds no slot
            stalled.close()
            deadline = time.monotonic() + 5
            while (again := client.get("/replay/sp.ogg")).status_code == 503:
                assert time.monotonic() < deadline, "the slot was never given back"
                time.sleep(0.05)
            assert again.status_code == 200


def test_a_download_that_stalls_is_cut_off_and_frees_its_slot(recording: Path) -> None:
    with serving(recording, max_replay_connections=1, stall_timeout_s=1.0) as srv:
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /replay/big.ogg HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled.recv(1024)
        with httpx.Client(base_url=srv.url, timeout=10) as client:
            assert client.get("/replay/sp.ogg").status_code == 503
            time.sleep(1.5)  # the stall timeout passes; the stalled client is still there
            assert client.get("/replay/sp.ogg").status_code == 200
        stalled.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_large_file_is_sent_whole_while_memory_stays_flat(recording: Path, loop: str) -> None:
    """Eight concurrent 6 MB downloads, read slowly: the body never passes through the
    server's memory (sendfile), so its resident size barely moves."""
    data = (recording / "big.ogg").read_bytes()
    with serving(recording, loop=loop) as srv:
        with httpx.Client(base_url=srv.url, timeout=10) as client:
            assert client.get("/replay/sp.ogg").status_code == 200  # warmed up
        before = srv.rss_bytes()

        async def download() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET /replay/big.ogg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            chunks = []
            while chunk := await reader.read(256 * 1024):
                chunks.append(chunk)
                await asyncio.sleep(0.005)  # a slow reader: the kernel buffers fill
            writer.close()
            reply = b"".join(chunks)
            return reply[reply.index(b"\r\n\r\n") + 4 :]

        async def all_downloads() -> list[bytes]:
            return await asyncio.gather(*(download() for _ in range(8)))

        bodies = asyncio.run(all_downloads())
        grown = srv.rss_bytes() - before
    assert all(body == data for body in bodies)
    assert grown < 4 * 1024 * 1024, f"the server grew by {grown} bytes"


def ffmpeg_over_http(url: str, seek: tuple[str, ...], after: tuple[str, ...] = ()) -> np.ndarray:
    done = subprocess.run(
        ["ffmpeg", "-v", "error", *seek, "-i", url, *after,
         "-f", "f32le", "-ac", "1", "-ar", "48000", "-"],
        capture_output=True,
        check=False,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return np.frombuffer(done.stdout, np.float32)


def test_ffmpeg_seeks_in_the_replay_by_range(recording: Path) -> None:
    full_s = len(ffmpeg_decode(recording / "sp.ogg")) / SAMPLE_RATE_HZ
    with serving(recording) as srv:
        # Input seeking: ffmpeg asks for the file's length, then a Range near 2 s.
        ogg = ffmpeg_over_http(srv.url + "/replay/sp.ogg", ("-ss", "2"))
        assert abs(len(ogg) / SAMPLE_RATE_HZ - (full_s - 2)) < 0.5
        assert amplitude_at(ogg, 440) > 0.1
        # ffmpeg 5.1 cannot input-seek fMP4 Opus in HLS (nothing decodes, from a file
        # too): the VOD playlist is read whole over HTTP and cut after decoding.
        hls = ffmpeg_over_http(srv.url + "/replay/sp/index.m3u8", (), ("-ss", "2"))
        assert abs(len(hls) / SAMPLE_RATE_HZ - (full_s - 2)) < 0.6
        assert amplitude_at(hls, 440) > 0.1
