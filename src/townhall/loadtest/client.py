"""A lean HTTP/1.1 client connection: asyncio Protocol + httptools, one request at a time.

Thousands of these share one event loop (the LL-HLS listeners), so there are no
streams and no per-chunk coroutine wake-ups: a response body is collected until the
message completes (playlists and parts). Ogg streams use ``streams.py`` instead.

Errors, drawn at the one boundary where they are translated::

    ClientError                    the listener gives up on this connection
     ├── ServiceUnavailable (503)   carries retry_after_s, the caller backs off and retries
     └── ConnectionDropped         reset, closed early, malformed response or timed out
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httptools

from townhall.loadtest.wire import Target, get_request
from townhall.peers.backoff import parse_retry_after


class ClientError(Exception):
    pass


class ServiceUnavailable(ClientError):
    def __init__(self, retry_after_s: float | None) -> None:
        super().__init__(f"503, retry after {retry_after_s}")
        self.retry_after_s = retry_after_s


class ConnectionDropped(ClientError):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpClientConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._head: asyncio.Future[int] | None = None
        self._done: asyncio.Future[None] | None = None
        self.closed = False

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionDropped(f"malformed response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionDropped(f"connection lost: {exc or 'closed'}"))

    # -- httptools callbacks ----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_result(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # -- requests ---------------------------------------------------------------------
    def _send(self, target: Target, path: str) -> None:
        if self.closed or self.transport is None:
            raise ConnectionDropped("connection already closed")
        loop = asyncio.get_running_loop()
        self._headers, self._chunks = {}, []
        self._head, self._done = loop.create_future(), loop.create_future()
        self.transport.write(get_request(target, path))

    async def get(self, target: Target, path: str) -> Response:
        """A whole response (a playlist or a part); raises ServiceUnavailable on 503."""
        self._send(target, path)
        assert self._head is not None and self._done is not None
        status = await self._head
        await self._done
        body = b"".join(self._chunks)
        raise_for_refusal(status, self._headers)
        return Response(status, self._headers, body)

    def _fail(self, exc: ClientError) -> None:
        for fut in (self._head, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: a dropped idle connection is not a bug

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.abort()


def raise_for_refusal(status: int, headers: dict[str, str]) -> None:
    """A 503 becomes ServiceUnavailable, carrying its Retry-After (headers lower-cased)."""
    if status == 503:
        raise ServiceUnavailable(parse_retry_after(headers.get("retry-after")))


async def connect(
    target: Target, timeout_s: float, source_ip: str | None = None
) -> HttpClientConnection:
    """A connection to ``target``, from ``source_ip`` if given (see loopback_source)."""
    loop = asyncio.get_running_loop()
    local = (source_ip, 0) if source_ip is not None else None
    try:
        async with asyncio.timeout(timeout_s):
            _, conn = await loop.create_connection(
                HttpClientConnection, target.host, target.port, local_addr=local
            )
    except (OSError, TimeoutError) as exc:
        raise ConnectionDropped(f"connect: {exc.__class__.__name__}: {exc}") from exc
    return conn
