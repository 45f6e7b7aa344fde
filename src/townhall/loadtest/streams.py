"""Ogg listeners on plain non-blocking sockets, all driven in batches from one epoll set.

Why not one asyncio Protocol or ``loop.sock_*`` coroutine per stream: measured here,
uvloop's per-read path (a wake-up, a fresh ``bytes`` and a few Python callbacks per
chunk) cost about 57 µs of client CPU per chunk, and a connect through ``sock_*``
about 330 µs. One client core then followed only about 15,000 listeners, or 2,400
arrivals a second, and the load generator, not the server, was what got measured.

Here every socket of the process sits in one epoll set that is polled once per
``interval_s``: connect, send the GET, read the head, then one read per batch into one
reused buffer (about 10 µs per chunk). The batch amortises the wake-up and nothing is
allocated per read. The price is up to ``interval_s`` added to every arrival time, the
same for every server measured.

Each stream is a small state machine (``CONNECTING`` -> ``HEAD`` -> ``STREAMING``); the
listener's coroutine only awaits two futures, so timeouts, 503 + Retry-After and
backoff stay ordinary asyncio code.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

import httptools

from townhall.loadtest.client import ClientError, ConnectionDropped, raise_for_refusal
from townhall.loadtest.wire import Target, get_request

MAX_HEAD_BYTES = 64 * 1024
# A byte-level sink: (buffer, how many bytes at its start are new, when they were read).
ChunkSink = Callable[[bytes | bytearray, int, float], None]


class _State(Enum):
    CONNECTING = auto()
    HEAD = auto()
    STREAMING = auto()


@dataclass
class Stream:
    """One listener's connection. ``opened`` resolves once a 200 head is in (or fails
    with ServiceUnavailable / ConnectionDropped); ``ended`` fails with ConnectionDropped
    when the stream ends on its own."""

    sock: socket.socket
    request: bytes
    sink: ChunkSink
    opened: asyncio.Future[None]
    ended: asyncio.Future[None]
    state: _State = _State.CONNECTING
    head: bytes = b""
    _reader: StreamReader | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.forget(self)
        self.sock.close()


class StreamReader:
    """Drives every Ogg stream of this process in batches, on one event loop."""

    def __init__(self, interval_s: float = 0.01, buffer_bytes: int = 256 * 1024) -> None:
        self.interval_s = interval_s
        self._epoll = select.epoll()
        self._streams: dict[int, Stream] = {}
        self._buffer = bytearray(buffer_bytes)

    def open(self, target: Target, sink: ChunkSink, source_ip: str | None = None) -> Stream:
        """Start connecting; bytes of the body go to ``sink`` as batches read them.

        ``source_ip`` spreads loopback clients over 127.x source addresses, because one
        source address has only about 28,000 ephemeral ports towards one server port.
        """
        loop = asyncio.get_running_loop()
        family, address = _resolve(target.host, target.port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        stream = Stream(
            sock, get_request(target, target.path), sink, loop.create_future(), loop.create_future()
        )
        stream.ended.add_done_callback(_retrieved)
        try:
            if source_ip is not None:
                sock.bind((source_ip, 0))
            code = sock.connect_ex(address)
        except OSError as exc:
            code = exc.errno or errno.EIO
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            stream.opened.set_exception(ConnectionDropped(f"connect: {errno.errorcode.get(code)}"))
            return stream
        stream._reader = self
        self._streams[sock.fileno()] = stream
        self._epoll.register(sock.fileno(), select.EPOLLOUT)
        return stream

    def forget(self, stream: Stream) -> None:
        fd = stream.sock.fileno()
        if fd >= 0 and self._streams.get(fd) is stream:
            del self._streams[fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.poll()

    def poll(self) -> int:
        """One batch: advance every socket with an event. Returns the body reads."""
        now, reads = time.monotonic(), 0
        for fd, _ in self._epoll.poll(0, max(1, len(self._streams))):
            stream = self._streams.get(fd)
            if stream is None:
                continue
            try:
                if stream.state is _State.STREAMING:
                    reads += self._read_body(stream, now)
                elif stream.state is _State.HEAD:
                    self._read_head(stream, now)
                else:
                    self._connected(stream)
            except ClientError as exc:
                self._end(stream, exc)
            except OSError as exc:
                self._end(stream, ConnectionDropped(f"connection lost: {exc}"))
        return reads

    def _connected(self, stream: Stream) -> None:
        code = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise ConnectionDropped(f"connect: {errno.errorcode.get(code, code)}")
        if stream.sock.send(stream.request) != len(stream.request):
            raise ConnectionDropped("could not send the request at once")
        stream.state = _State.HEAD
        self._epoll.modify(stream.sock.fileno(), select.EPOLLIN)

    def _read_head(self, stream: Stream, now: float) -> None:
        more = stream.sock.recv(MAX_HEAD_BYTES)  # the head and, usually, all the pre-roll
        if not more:
            raise ConnectionDropped("connection closed before the response head")
        stream.head += more
        end = stream.head.find(b"\r\n\r\n")
        if end < 0:
            if len(stream.head) > MAX_HEAD_BYTES:
                raise ConnectionDropped("response head too long")
            return
        head, rest = stream.head[: end + 4], stream.head[end + 4 :]
        stream.head = b""
        status, headers = parse_head(head)
        raise_for_refusal(status, headers)
        if status != 200:
            raise ConnectionDropped(f"GET: status {status}")
        stream.state = _State.STREAMING
        if not stream.opened.done():  # done: the listener timed out meanwhile
            stream.opened.set_result(None)
        if rest:
            stream.sink(rest, len(rest), now)

    def _read_body(self, stream: Stream, now: float) -> int:
        n = stream.sock.recv_into(self._buffer)
        if n == 0:
            raise ConnectionDropped("stream closed by the server")
        stream.sink(self._buffer, n, now)
        return 1

    def _end(self, stream: Stream, exc: ClientError) -> None:
        stream.close()
        for fut in (stream.opened, stream.ended):
            if not fut.done():
                fut.set_exception(exc)
                break  # a stream that never opened has not "ended"

    def close(self) -> None:
        for stream in list(self._streams.values()):
            stream.close()
        self._epoll.close()


def _retrieved(fut: asyncio.Future[None]) -> None:
    # A stream cancelled by its listener (run over) may end unobserved; that is not a bug.
    if not fut.cancelled():
        fut.exception()


@functools.lru_cache(maxsize=16)
def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    # Once per target and process: the event loop must not wait on DNS per listener.
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return family, (str(address[0]), int(address[1]))


class _HeadParser:
    """httptools callbacks for a response head only (the body is never fed to it)."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of a response head ending in CRLF CRLF."""
    p = _HeadParser()
    try:
        p.parser.feed_data(head)
    except httptools.HttpParserError as exc:
        raise ConnectionDropped(f"malformed response: {exc}") from exc
    return p.parser.get_status_code(), p.headers


def loopback_source(listener: int, target: Target) -> str | None:
    """For a loopback IPv4 target, this listener's own 127.x.y.z source address.

    One address per listener: the server caps connections per client address and keys
    anonymous listeners by address, so two simulated listeners must never look like one
    (127.0.0.0/8 is all loopback on Linux; 127.0.0.1 is left to the server's own)."""
    family, (ip, _) = _resolve(target.host, target.port)
    if family != socket.AF_INET or not ip.startswith("127."):
        return None
    return listener_address(listener)


def listener_address(listener: int) -> str:
    """A distinct address in 127.1.0.1 - 127.254.255.254 for each of ~16.5 M listeners
    (no .0 or .255 host octet, nothing in 127.0.x.x)."""
    host, rest = 1 + listener % 254, listener // 254
    return f"127.{1 + (rest // 256) % 254}.{rest % 256}.{host}"
