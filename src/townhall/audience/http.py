"""A lean HTTP/1.1 server protocol: asyncio + httptools, nothing else on the hot path.

The audience port takes the crowd (and the attacks), so it avoids a framework: a
request is parsed by httptools, routed by the application, and answered with
pre-built bytes wherever possible. Long-lived responses (the Ogg stream, SSE) take the
transport over and are written by the fan-out engine directly.

Files (replays) are answered with a ``FileReply``: the head, then the body straight
from the page cache to the socket with ``sendfile(2)``, never through Python memory.

Bounds: request heads over ``max_head_bytes`` get 431; bodies are not accepted (the
audience port is read-only); one request is handled at a time per connection, and
reading pauses while a blocking request or a file is being answered, so pipelining
cannot queue unbounded work. With a ``ConnectionLedger``, a connection over the
process's or its address's cap gets 503 with Retry-After and is closed before anything
is read; the slot is released when the connection closes, stream or not.

The client is the socket's peer, or for a configured proxy (``TrustedProxies``) the
address its ``X-Forwarded-For`` names; nobody else's header is read.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import BinaryIO
from urllib.parse import parse_qs

import httptools

from townhall.errors import TownhallError, Unavailable
from townhall.fdbudget import ConnectionLedger
from townhall.proxies import TrustedProxies

# Players on the control origin must read Retry-After to back off (Fetch: exposed headers).
CORS = b"Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Retry-After\r\n"
NO_STORE = "no-store"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)
    keep_alive: bool = True
    peer: str = ""


def response_bytes(
    status: int,
    body: bytes,
    content_type: str,
    cache_control: str = NO_STORE,
    extra: tuple[tuple[str, str], ...] = (),
    content_length: int | None = None,
) -> bytes:
    """A complete response, built once so it can be written to many clients; with
    ``content_length``, the head of a body sent separately (a file)."""
    phrase = HTTPStatus(status).phrase
    head = [
        f"HTTP/1.1 {status} {phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body) if content_length is None else content_length}",
        f"Cache-Control: {cache_control}",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return ("\r\n".join(head) + "\r\n").encode() + CORS + b"\r\n" + body


def error_bytes(err: TownhallError) -> bytes:
    extra: tuple[tuple[str, str], ...] = ()
    retry = getattr(err, "retry_after_s", None)
    if retry is not None:
        extra = (("Retry-After", str(max(1, round(retry)))),)
    body = json.dumps(err.to_json()).encode()
    return response_bytes(err.status, body, "application/json", NO_STORE, extra)


def stream_head(
    content_type: str, extra: tuple[tuple[str, str], ...] = (), cache: str = NO_STORE
) -> bytes:
    """Head of an endless response. No length and no chunking: like Icecast, the
    body runs until the connection closes, so every chunk is the same shared bytes."""
    head = [
        "HTTP/1.1 200 OK",
        f"Content-Type: {content_type}",
        f"Cache-Control: {cache}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return ("\r\n".join(head) + "\r\n").encode() + CORS + b"\r\n"


@dataclass
class FileReply:
    """A response whose body is ``count`` bytes of ``file`` from ``offset``. The
    connection closes the file and calls ``done`` once it is sent (or abandoned)."""

    head: bytes
    file: BinaryIO
    offset: int
    count: int
    done: Callable[[], None] = lambda: None
    # A client that takes nothing for this long is cut off: it holds a file and a slot.
    stall_timeout_s: float = 30.0

    def release(self) -> None:
        self.file.close()
        self.done()


# Bytes per sendfile(2) call; the socket's send buffer takes less at a time anyway.
_SENDFILE_CHUNK_BYTES = 1 << 20


async def send_file(transport: asyncio.Transport, reply: FileReply) -> None:
    """Write ``reply``'s head, then its byte range with sendfile(2). Raises ``OSError``
    (the client went away, or the file shrank under us) or ``TimeoutError`` (a stall)."""
    transport.write(reply.head)
    await _drained(transport, reply.stall_timeout_s)
    loop = asyncio.get_running_loop()
    try:
        # asyncio's own loops send files zero-copy from the transport's socket.
        await loop.sendfile(transport, reply.file, reply.offset, reply.count)
        return
    except NotImplementedError:
        pass  # uvloop has no loop.sendfile: drive sendfile(2) on the socket ourselves
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise ConnectionError("the connection has no socket to send a file on")
    # A duplicate descriptor of the same socket: uvloop refuses to watch the descriptor
    # its transport owns, and the transport has nothing buffered to interleave with.
    fd = os.dup(sock.fileno())
    try:
        await _sendfile(loop, fd, reply)
    finally:
        os.close(fd)


async def _sendfile(loop: asyncio.AbstractEventLoop, fd: int, reply: FileReply) -> None:
    offset, left, src = reply.offset, reply.count, reply.file.fileno()
    while left > 0:
        try:
            sent = os.sendfile(fd, src, offset, min(left, _SENDFILE_CHUNK_BYTES))
        except BlockingIOError:
            await _writable(loop, fd, reply.stall_timeout_s)
            continue
        if sent == 0:
            raise ConnectionError("the file ended before its announced length")
        offset, left = offset + sent, left - sent


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, timeout_s: float) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout_s)
    finally:
        loop.remove_writer(fd)


async def _drained(transport: asyncio.Transport, timeout_s: float) -> None:
    """Until the transport has handed everything it holds (a previous response on this
    keep-alive connection, the head) to the kernel: the file's bytes must follow them."""
    deadline = time.monotonic() + timeout_s
    while transport.get_write_buffer_size() > 0:
        if transport.is_closing():
            raise ConnectionError("the client went away")
        if time.monotonic() > deadline:
            raise TimeoutError("the client stopped reading")
        await asyncio.sleep(0.005)


Reply = bytes | Awaitable[bytes] | FileReply | None
Handler = Callable[["HttpConnection", Request], Reply]


class HttpConnection(asyncio.Protocol):
    """One client connection. ``handler`` returns the response bytes, an awaitable of
    them (a blocking request), a ``FileReply``, or None when it took the transport over
    (a stream)."""

    def __init__(
        self,
        handler: Handler,
        on_lost: Callable[[HttpConnection], None],
        max_head_bytes: int,
        ready: Mapping[bytes, bytes] | None = None,
        counted: Mapping[bytes, tuple[str, bytes]] | None = None,
        on_counted: Callable[[str, HttpConnection], None] | None = None,
        ledger: ConnectionLedger | None = None,
        proxies: TrustedProxies | None = None,
        retry_after_s: Callable[[], float] = lambda: 1.0,
    ) -> None:
        self.handler = handler
        self.max_head_bytes = max_head_bytes
        self.on_lost = on_lost
        # Complete responses for immutable resources, keyed by the exact request target:
        # a hit is answered before any URL parsing or routing (the LL-HLS hot path).
        self.ready: Mapping[bytes, bytes] = ready if ready is not None else {}
        # Like ``ready``, but each hit is reported as ``on_counted(space, connection)``:
        # playlist polls, which is how an HLS player is counted as a listener.
        self.counted: Mapping[bytes, tuple[str, bytes]] = counted if counted is not None else {}
        self.on_counted = on_counted
        # The anonymous session this connection counts as (hashed once), and the last
        # (space, signed session id) that verified on it (checked once, not per poll).
        self.session: str | None = None
        self.verified: tuple[str, str] | None = None
        self.transport: asyncio.Transport | None = None
        self.streaming = False
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self.peer = ""  # the client: the socket's peer, or whom a trusted proxy names
        self.socket_peer = ""
        self.ledger = ledger
        self.proxies = proxies
        self.retry_after_s = retry_after_s
        self.admitted = False
        self.last_active = time.monotonic()
        self.head_started_at: float | None = None  # a request head is arriving since then

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = self.socket_peer = str(peer[0]) if peer else ""
        if self.ledger is None:
            return
        refusal = self.ledger.admit(self.socket_peer)
        if refusal is None:
            self.admitted = True
            return
        self.streaming = True  # nothing it sends is read
        self.send(error_bytes(Unavailable(refusal, self.retry_after_s())), keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.admitted and self.ledger is not None:
            self.admitted = False
            self.ledger.release(self.socket_peer)
        self.on_lost(self)

    @property
    def proxied(self) -> bool:
        """Whether this connection comes from a configured proxy (it carries others)."""
        return self.proxies is not None and self.proxies.trusts(self.socket_peer)

    def data_received(self, data: bytes) -> None:
        if self.streaming:
            return  # a stream listener has nothing more to say; ignore, bounded
        if self._head_bytes == 0:
            self.head_started_at = time.monotonic()
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            return self._fail(431, "request head too large")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrades are not supported on the audience port")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks -------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only what the routes read; anything else is parsed and dropped.
        if len(name) == 10 and name.lower() == b"user-agent":
            self._headers["user-agent"] = value.decode("latin-1")
        elif len(name) == 5 and name.lower() == b"range":
            self._headers["range"] = value.decode("latin-1")
        elif len(name) == 15 and name.lower() == b"x-forwarded-for" and self.proxied:
            prior = self._headers.get("x-forwarded-for")
            text = value.decode("latin-1")
            self._headers["x-forwarded-for"] = f"{prior}, {text}" if prior else text

    def on_body(self, body: bytes) -> None:
        pass  # the audience port takes no bodies; the head limit bounds what we read

    def on_message_complete(self) -> None:
        self._head_bytes = 0
        self.head_started_at = None
        if self._done_reading():
            return  # pipelined in the same packet behind a stream or a close: unanswered
        if self.proxied:
            self._name_client()
        hit = self.ready.get(self._url)
        if hit is None and (counted := self.counted.get(self._url)) is not None:
            space_id, hit = counted
            if self.on_counted is not None:
                self.on_counted(space_id, self)
        if hit is not None and self._parser.get_method() == b"GET":
            return self.send(hit, self._parser.should_keep_alive())
        try:
            parsed = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            return self._fail(400, "malformed request URL")
        query = {k: v[-1] for k, v in parse_qs((parsed.query or b"").decode()).items()}
        request = Request(
            method=self._parser.get_method().decode(),
            path=parsed.path.decode("utf-8", "replace"),
            query=query,
            headers=self._headers,
            keep_alive=self._parser.should_keep_alive(),
            peer=self.peer,
        )
        self._dispatch(request)

    def _name_client(self) -> None:
        """A proxy's requests come from many clients: this one's is the address its
        X-Forwarded-For names; its session key is made again for it."""
        assert self.proxies is not None
        forwarded = self._headers.get("x-forwarded-for", "")
        client = self.proxies.client(self.socket_peer, forwarded)
        if client != self.peer:
            self.peer, self.session = client, None

    @property
    def user_agent(self) -> str:
        return self._headers.get("user-agent", "")

    # -- replies -------------------------------------------------------------------
    def _dispatch(self, request: Request) -> None:
        try:
            reply = self.handler(self, request)
        except TownhallError as err:
            reply = error_bytes(err)
        if reply is None:
            return
        head_only = request.method == "HEAD"
        if isinstance(reply, bytes):
            return self.send(reply, request.keep_alive, head_only)
        assert self.transport is not None
        if isinstance(reply, FileReply):
            if head_only:
                reply.release()
                return self.send(reply.head, request.keep_alive, head_only)
            self.transport.pause_reading()
            self._task = asyncio.ensure_future(self._send_file(reply, request.keep_alive))
            return None
        self.transport.pause_reading()
        self._task = asyncio.ensure_future(self._await(reply, request.keep_alive, head_only))

    async def _send_file(self, reply: FileReply, keep_alive: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            await send_file(transport, reply)
        except (OSError, TimeoutError):
            # Part of a body may be out: the response cannot be finished, only cut.
            transport.abort()
            return
        finally:
            self._task = None
            reply.release()
        self.last_active = time.monotonic()
        if not keep_alive:
            transport.close()
        elif not transport.is_closing():
            transport.resume_reading()

    async def _await(self, reply: Awaitable[bytes], keep_alive: bool, head_only: bool) -> None:
        try:
            data = await reply
        except TownhallError as err:
            data = error_bytes(err)
        self._task = None
        self.send(data, keep_alive, head_only)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def send(self, data: bytes, keep_alive: bool = True, head_only: bool = False) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return  # the client left while its blocking request waited
        if head_only:
            # RFC 9110 9.3.2: the same head as GET, no body (the length still says it).
            data = data[: data.find(b"\r\n\r\n") + 4]
        self.transport.write(data)
        self.last_active = time.monotonic()
        if not keep_alive:
            self.transport.close()

    def overstayed(self, now: float, head_timeout_s: float, idle_timeout_s: float) -> bool:
        """A slow request head (slowloris) or an idle keep-alive holds a socket for
        nothing; streams and requests waiting on a part are bounded elsewhere."""
        if self.streaming or self._task is not None:
            return False
        if self.head_started_at is not None:
            return now - self.head_started_at > head_timeout_s
        return now - self.last_active > idle_timeout_s

    def take_over(self, head: bytes) -> asyncio.Transport:
        """Turn this connection into a stream; the fan-out engine writes from now on."""
        assert self.transport is not None
        self.streaming = True
        self.transport.write(head)
        return self.transport

    def _fail(self, status: int, detail: str) -> None:
        if self._done_reading():
            return  # nothing may follow a stream's head or a response that closed
        err = TownhallError(detail)
        err.status, err.code = status, HTTPStatus(status).name.lower()
        if self.transport is not None:
            self.transport.write(error_bytes(err))
            self.transport.close()

    def _done_reading(self) -> bool:
        """The connection is a stream, or closing: the rest of a packet the parser is
        still going through must neither be answered nor subscribe again."""
        return self.streaming or (self.transport is not None and self.transport.is_closing())
