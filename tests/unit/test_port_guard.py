"""The control port's guard on a real uvicorn in this process (loopback, short limits):
head size, head time, idle connections, caps per address with WebSocket upgrades, and
X-Forwarded-For only from configured proxies. The audience port's connection keeps the
same ledger, streams included."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from townhall.audience.http import HttpConnection
from townhall.control.config import ControlConfig
from townhall.control.process import uvicorn_config
from townhall.fdbudget import ConnectionCaps, ConnectionLedger
from townhall.proxies import TrustedProxies

FAST = ControlConfig(
    head_timeout_s=0.5, idle_timeout_s=0.4, max_head_bytes=4096, max_address_connections=2
)


async def who(request: Request) -> JSONResponse:
    return JSONResponse({"client": request.client.host if request.client else None})


async def echo(ws: WebSocket) -> None:
    await ws.accept()
    with contextlib.suppress(Exception):
        while True:
            await ws.send_text(await ws.receive_text())


APP = Starlette(routes=[Route("/who", who), WebSocketRoute("/ws", echo)])


@contextlib.asynccontextmanager
async def serving(config: ControlConfig = FAST) -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn_config(APP, config, limit=1_000))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(3):
                await task
        sock.close()


async def connect(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def get(port: int, path: str = "/who", source: str = "127.0.0.1", head: str = "") -> bytes:
    reader, writer = await connect(port, source)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{head}Connection: close\r\n\r\n".encode())
    try:
        return await asyncio.wait_for(reader.read(), 3)
    finally:
        writer.close()


async def closed_after(reader: asyncio.StreamReader, within_s: float) -> float:
    """Seconds until the server closes the connection (the test fails past ``within_s``)."""
    start = time.monotonic()
    async with asyncio.timeout(within_s):
        while await reader.read(4096):
            pass
    return time.monotonic() - start


def json_body(response: bytes) -> dict[str, object]:
    body: dict[str, object] = json.loads(response.split(b"\r\n\r\n", 1)[1])
    return body


async def test_a_request_head_over_the_bound_gets_431_json_and_a_close() -> None:
    async with serving() as port:
        reader, writer = await connect(port)
        writer.write(b"GET /who HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)
        response = await asyncio.wait_for(reader.read(), 3)
        writer.close()
    assert response.startswith(b"HTTP/1.1 431 ")
    assert json_body(response)["error"] == "request_header_fields_too_large"


async def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() -> None:
    async with serving() as port:
        reader, writer = await connect(port)
        waited = await closed_after(reader, 3)
        writer.close()
    assert FAST.idle_timeout_s - 0.05 <= waited < FAST.idle_timeout_s + 1


async def test_a_head_sent_a_line_at_a_time_is_cut_at_the_head_timeout() -> None:
    async with serving() as port:
        reader, writer = await connect(port)
        writer.write(b"GET /who HTTP/1.1\r\n")
        start = time.monotonic()
        with contextlib.suppress(ConnectionError):
            while not reader.at_eof() and time.monotonic() - start < 3:
                writer.write(b"X-Slow: yes\r\n")  # one line every 0.1 s, never the end
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(100), 0.1)
        waited = time.monotonic() - start
        writer.close()
    assert waited < FAST.head_timeout_s + 1


async def test_bytes_that_are_no_request_do_not_keep_a_keep_alive_open() -> None:
    async with serving() as port:
        reader, writer = await connect(port)
        writer.write(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"}")
        start = time.monotonic()
        with contextlib.suppress(ConnectionError):
            while not reader.at_eof() and time.monotonic() - start < 3:
                writer.write(b"\r\n")  # restarts uvicorn's own keep-alive timer
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(100), 0.1)
        writer.close()
    assert time.monotonic() - start < FAST.idle_timeout_s + 1


async def test_past_the_address_cap_a_newcomer_gets_503_json_with_retry_after() -> None:
    async with serving() as port:
        held = [await connect(port), await connect(port)]
        refused = await get(port)
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nRetry-After: " in refused
        assert json_body(refused)["error"] == "unavailable"
        assert b"200 OK" in await get(port, source="127.0.0.2")  # another address
        held[0][1].close()
        await asyncio.sleep(0.1)
        assert b"200 OK" in await get(port)  # the closed one's slot is free again
        held[1][1].close()


async def websocket(port: int, source: str = "127.0.0.1") -> asyncio.StreamWriter:
    reader, writer = await connect(port, source)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return writer


async def test_a_websocket_holds_its_slot_until_it_closes() -> None:
    async with serving() as port:
        for _ in range(5):  # more than the cap: each closed WebSocket gave its slot back
            (await websocket(port)).close()
            await asyncio.sleep(0.05)
        open_ones = [await websocket(port), await websocket(port)]
        # The idle timer does not apply to an upgraded connection.
        await asyncio.sleep(FAST.idle_timeout_s + 0.3)
        assert (await get(port)).startswith(b"HTTP/1.1 503 ")
        for w in open_ones:
            w.close()
        await asyncio.sleep(0.1)
        assert b"200 OK" in await get(port)


async def test_forwarded_for_names_the_client_only_from_a_configured_proxy() -> None:
    forwarded = "X-Forwarded-For: 203.0.113.7\r\n"
    async with serving(replace(FAST, trusted_proxies=("127.0.0.4",))) as port:
        via_proxy = await get(port, source="127.0.0.4", head=forwarded)
        direct = await get(port, source="127.0.0.5", head=forwarded)
    assert json_body(via_proxy)["client"] == "203.0.113.7"
    assert json_body(direct)["client"] == "127.0.0.5"


async def test_forwarded_for_is_ignored_when_no_proxy_is_configured() -> None:
    async with serving() as port:
        spoofed = await get(port, head="X-Forwarded-For: 203.0.113.7\r\n")
    assert json_body(spoofed)["client"] == "127.0.0.1"


# -- the audience port's connection ---------------------------------------------------


@dataclass
class FakeTransport:
    peer: str
    written: bytearray = field(default_factory=bytearray)
    closed: bool = False

    def get_extra_info(self, name: str) -> object:
        return (self.peer, 5555) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def audience_connection(
    ledger: ConnectionLedger, peer: str, proxies: TrustedProxies | None = None
) -> tuple[HttpConnection, FakeTransport, list[str]]:
    seen: list[str] = []
    conn = HttpConnection(
        lambda c, req: seen.append(req.peer) or b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        lambda c: None,
        16 * 1024,
        ledger=ledger,
        proxies=proxies,
    )
    transport = FakeTransport(peer)
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, seen


def test_an_audience_stream_counts_against_the_caps_until_it_closes() -> None:
    ledger = ConnectionLedger(ConnectionCaps(10, 2))
    first, _, _ = audience_connection(ledger, "10.0.0.1")
    first.take_over(b"HTTP/1.1 200 OK\r\n\r\n")  # a stream now
    audience_connection(ledger, "10.0.0.1")
    refused, transport, _ = audience_connection(ledger, "10.0.0.1")
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: " in transport.written
    refused.connection_lost(None)  # a refused connection held no slot
    assert ledger.by_address == {"10.0.0.1": 2}
    first.connection_lost(None)
    assert ledger.by_address == {"10.0.0.1": 1}


@pytest.mark.parametrize(
    ("peer", "expected"), [("127.0.0.4", "203.0.113.7"), ("127.0.0.5", "127.0.0.5")]
)
def test_the_audience_reads_forwarded_for_only_from_a_configured_proxy(
    peer: str, expected: str
) -> None:
    ledger = ConnectionLedger(ConnectionCaps(10, 1), TrustedProxies(["127.0.0.4"]).trusts)
    conn, _, seen = audience_connection(ledger, peer, TrustedProxies(["127.0.0.4"]))
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n")
    assert seen == [expected]
