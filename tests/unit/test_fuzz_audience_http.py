"""The audience port's HTTP handling fed random bytes: property-based (hypothesis).

A real ``AudienceServer`` (one live channel with an Ogg header and a page, no sockets)
makes each connection; a fake transport takes what it writes. For any bytes, sliced
anywhere:

* no exception escapes the protocol (``data_received``, ``connection_lost``);
* every response is HTTP/1.1 with a status below 500 (503 with Retry-After is the
  server's back-off, allowed), and every error carries a JSON body;
* bytes that cannot start a request (no method token) get only 400 or 431, or nothing;
* nothing is written once the server has closed the connection;
* once the client is gone, the connection table, the streams and the channel's
  subscribers are back to where they were: no connection leaks.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from townhall.audience.server import AudienceServer
from townhall.feed import OggHeader, OggPages, RoomUpdate

SPACE = "a"
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_STATUS = re.compile(rb"(?:^|\r\n)HTTP/1\.1 (\d{3}) ")


class FakeTransport(asyncio.Transport):
    """What the protocol writes, and whether it closed; reading pauses as asked."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.after_close = bytearray()
        self.closing = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        (self.after_close if self.closing else self.written).extend(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def audience() -> AudienceServer:
    server = AudienceServer()
    for msg in (
        OggHeader(SPACE, b"OggS-header"),
        OggPages(SPACE, b"OggS-page", 1.0),
        RoomUpdate(SPACE, '{"state": "live"}', 1.0),
    ):
        server.publish(msg)
    return server


# -- what a client might send ---------------------------------------------------------------

TARGETS = [
    f"/live/{SPACE}.ogg",
    f"/live/{SPACE}.ogg?sid=abc",
    f"/live/{SPACE}/index.m3u8",
    f"/live/{SPACE}/init.mp4",
    f"/live/{SPACE}/part0.0.m4s",
    f"/events/{SPACE}",
    f"/replay/{SPACE}.ogg",
    "/live/nope.ogg",
    "/healthz",
    "/",
    "*",
    "http://x/healthz",
    "/%00%ff",
]
token = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
header_name = st.one_of(
    st.sampled_from(
        [
            "Host",
            "Range",
            "User-Agent",
            "Content-Length",
            "Transfer-Encoding",
            "Upgrade",
            "Connection",
            "Expect",
        ]
    ),
    token,
)
header_value = st.one_of(
    st.sampled_from(
        [
            "bytes=0-10",
            "bytes=-5",
            "bytes=9-1",
            "chunked",
            "websocket",
            "upgrade",
            "close",
            "keep-alive",
            "100-continue",
            "-1",
            "99999999999999999999",
        ]
    ),
    st.text(max_size=40).map(lambda s: s.replace("\r", "").replace("\n", "")),
)


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "OPTIONS", "PUT", "CONNECT"]) | token)
    target = draw(st.sampled_from(TARGETS) | st.text(min_size=1, max_size=60))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/9.9", ""]))
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    headers = draw(st.lists(st.tuples(header_name, header_value), max_size=6))
    head = f"{method} {target} {version}{eol}" + "".join(f"{k}: {v}{eol}" for k, v in headers)
    body = draw(st.binary(max_size=64))
    end = draw(st.sampled_from([eol, ""]))  # an unfinished head sometimes
    return head.encode("utf-8", "surrogatepass") + end.encode() + body


payloads = st.one_of(
    st.binary(max_size=4096),
    http_requests(),
    st.lists(http_requests(), min_size=2, max_size=4).map(b"".join),  # pipelined
)


def slices(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def statuses(written: bytes) -> list[int]:
    return [int(m.group(1)) for m in _STATUS.finditer(written)]


def starts_a_request(data: bytes) -> bool:
    """Could these bytes begin an HTTP request line (a method token first)?"""
    return bool(re.match(rb"[A-Za-z]", data[:1]))


# -- the properties -----------------------------------------------------------------------


async def serve(server: AudienceServer, chunks: list[bytes]) -> FakeTransport:
    """One connection: the chunks as the loop would deliver them, then the client leaves."""
    transport = FakeTransport()
    conn = server.protocol()
    conn.connection_made(transport)
    for chunk in chunks:
        if transport.closing or transport.paused:
            break  # a closed or paused transport delivers nothing more
        conn.data_received(chunk)
        await asyncio.sleep(0)
    for _ in range(3):
        await asyncio.sleep(0)  # replies awaiting the loop get their turn
    conn.connection_lost(None)
    for _ in range(3):
        await asyncio.sleep(0)  # cancelled tasks finish
    return transport


@FUZZ
@given(data=payloads, cuts=st.lists(st.integers(min_value=0, max_value=8192), max_size=6))
def test_random_bytes_get_an_http_error_or_a_close_never_an_exception(
    loop: asyncio.AbstractEventLoop, data: bytes, cuts: list[int]
) -> None:
    server = audience()
    channel = server.channels[SPACE]
    transport = loop.run_until_complete(serve(server, slices(data, cuts)))
    written = bytes(transport.written)
    got = statuses(written)
    assert all(s < 500 or s == 503 for s in got), (got, written[:300])
    if written and not got:
        # Only a stream may write something other than a response head.
        assert server.streams or b"OggS" in written or b"data:" in written, written[:300]
    if not starts_a_request(data):
        assert set(got) <= {400, 431}, (got, written[:300])
    for m in _STATUS.finditer(written):
        if int(m.group(1)) >= 400:
            head = written[m.start() : written.find(b"\r\n\r\n", m.start())]
            assert b"Content-Type: application/json" in head, head
    assert not transport.after_close, bytes(transport.after_close[:200])
    assert not server.connections, "a connection outlived its client"
    assert not server.streams, "a stream outlived its client"
    assert not channel.ogg.subscribers and not channel.events.subscribers


@FUZZ
@given(data=st.binary(min_size=1, max_size=512))
def test_a_request_head_over_the_limit_gets_431(
    loop: asyncio.AbstractEventLoop, data: bytes
) -> None:
    server = audience()
    limit = server.config.max_request_head_bytes
    head = b"GET /healthz HTTP/1.1\r\nX-Fill: " + b"a" * limit + data
    transport = loop.run_until_complete(serve(server, slices(head, [4096, 9000])))
    assert statuses(bytes(transport.written)) in ([431], [400]), bytes(transport.written[:200])
    assert transport.closing
    assert not server.connections


def test_the_fake_transport_sees_what_a_real_request_gets(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The properties above can fail: a plain request is answered 200 here, a live Ogg
    request becomes a stream, and both are forgotten when the client leaves."""
    server = audience()
    t = loop.run_until_complete(serve(server, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"]))
    assert statuses(bytes(t.written)) == [200]
    t = loop.run_until_complete(serve(server, [f"GET /live/{SPACE}.ogg HTTP/1.1\r\n\r\n".encode()]))
    assert statuses(bytes(t.written)) == [200] and b"OggS-header" in t.written
    assert not server.connections and not server.streams
