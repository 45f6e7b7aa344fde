"""Every port is bounded: attacks on the connections of a real ``townhall serve``.

The server runs with a small descriptor limit (``prlimit``), so an idle flood reaches
it in a few hundred connections, and a Space is on air with a 440 Hz speaker. The
attacker is 127.0.0.1; legitimate clients come from other loopback addresses. Each
attack is bounded in connections and time, and everything opened is closed.

A second server, with a configured trusted proxy and small per-address caps, checks
that X-Forwarded-For names the client only when a configured proxy sends it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import benchmarks.harness.server as harness
from benchmarks.harness.audio import decode, has_tone
from benchmarks.harness.processes import stop
from benchmarks.harness.server import Server, Space, start_server, townhall_command

pytestmark = pytest.mark.e2e

# Low enough that the flood below passes it, high enough for the server's own needs.
NOFILE = 700
FLOOD_CONNECTIONS = 800
ATTACKER = "127.0.0.1"
# The server's defaults (head and idle timeouts of the control port), and the slack a
# loaded machine needs to notice a close.
HEAD_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 10.0
SLACK_S = 4.0
# Ten unfinished 20 MB heads must not grow the control process by more than this.
MAX_RSS_GROWTH_KIB = 32 * 1024


@contextlib.contextmanager
def limited_descriptors(nofile: int) -> Iterator[None]:
    """Servers started inside get ``nofile`` as both their soft and hard limit."""
    plain = harness.townhall_command

    def command(*args: str, cpu: int | None = None) -> list[str]:
        return ["prlimit", f"--nofile={nofile}:{nofile}", "--", *plain(*args, cpu=cpu)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "townhall_command", command)
        yield


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with limited_descriptors(NOFILE):
        server = start_server(tmp_path_factory.mktemp("siege-ports"))
    yield server
    server.stop()
    assert "Too many open files" not in server.output(last=5_000)
    assert not server.tracebacks(), "the server logged tracebacks:\n" + server.output()


@pytest.fixture(scope="module")
def on_air(limited: Server) -> Iterator[Space]:
    space = limited.create_space_sync("besieged")
    space.start_sync()
    speaker = harness.subprocess.Popen(
        townhall_command("speak", space.host_link, "--tone", "440"),
        stdout=harness.subprocess.DEVNULL,
        stderr=harness.subprocess.DEVNULL,
    )
    try:
        space.wait_program_sync()
        # On air means the speaker passed the mic check, not only that parts flow.
        deadline = time.monotonic() + 30
        while not speaker_is_live(space):
            assert time.monotonic() < deadline, "the speaker never went live"
            time.sleep(0.1)
        yield space
    finally:
        stop(speaker)


def speaker_is_live(space: Space) -> bool:
    resp = httpx.get(space.api("/room"), headers=space.host_headers(), timeout=5)
    return resp.status_code == 200 and any(seat["live"] for seat in resp.json()["stage"])


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def control_pid(server: Server) -> int:
    table = httpx.get(f"{server.control_url}/healthz", timeout=10).json()
    pids = [p["pid"] for p in table["processes"] if p["role"] == "control"]
    assert len(pids) == 1, table
    return int(pids[0])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_idle(port: int, count: int, source: str = ATTACKER) -> list[socket.socket]:
    """``count`` connections that never send anything (those the kernel completes)."""
    socks: list[socket.socket] = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.bind((source, 0))
        if s.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
            s.close()
            continue
        socks.append(s)
    # Wait (bounded) until the kernel completed them: epoll, as the numbers pass 1024.
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_WRITE)
        left, deadline = len(socks), time.monotonic() + 5
        while left and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                sel.unregister(key.fileobj)
                left -= 1
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def client_from(source: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=5)


def ogg_from(source: str, url: str, seconds: float) -> bytes:
    """The Ogg stream's body as heard from ``source`` for ``seconds``."""
    path = "/" + url.split("/", 3)[3]
    data = bytearray()
    with socket.create_connection(
        ("127.0.0.1", port_of(url)), timeout=5, source_address=(source, 0)
    ) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return body


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closes ``sock``, sending ``trickle`` every 2 s; None if
    it is still open after ``seconds``."""
    start = time.monotonic()
    sock.settimeout(2.0)
    while time.monotonic() - start < seconds:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    return None


# -- the idle flood --------------------------------------------------------------------


def test_an_idle_flood_past_the_file_limit_leaves_the_others_served(
    limited: Server, on_air: Space
) -> None:
    control = port_of(limited.control_url)
    audience = port_of(limited.audience_url)
    flood = open_idle(control, FLOOD_CONNECTIONS) + open_idle(audience, FLOOD_CONNECTIONS)
    try:
        time.sleep(1.0)
        with client_from("127.0.0.2") as client:
            resp = client.get(on_air.api())
        assert resp.status_code == 200, resp.text
        body = ogg_from("127.0.0.3", on_air.ogg_url, 4.0)
        assert has_tone(decode(body, "ogg"), 440.0)
    finally:
        close_all(flood)


# -- slow and silent connections, big heads ------------------------------------------


def test_a_slowloris_on_the_control_port_is_closed(limited: Server) -> None:
    with socket.create_connection(("127.0.0.1", port_of(limited.control_url))) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        waited = closed_within(s, HEAD_TIMEOUT_S + SLACK_S, trickle=b"X-Slow: yes\r\n")
    assert waited is not None, "a head sent a line every 2 s kept its connection"


def test_a_connection_that_sends_nothing_is_closed(limited: Server) -> None:
    with socket.create_connection(("127.0.0.1", port_of(limited.control_url))) as s:
        waited = closed_within(s, IDLE_TIMEOUT_S + SLACK_S)
    assert waited is not None, "a silent connection stayed open"


def test_a_1mb_header_gets_431_json(limited: Server) -> None:
    with socket.create_connection(("127.0.0.1", port_of(limited.control_url)), timeout=10) as s:
        with contextlib.suppress(OSError):  # the server may close before we finish
            s.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
            )
        response = s.recv(65536)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), head
    assert json.loads(body)["error"] == "request_header_fields_too_large"


def test_unfinished_20mb_heads_do_not_grow_the_control_process(limited: Server) -> None:
    pid = control_pid(limited)
    before = rss_kib(pid)
    socks = [
        socket.create_connection(("127.0.0.1", port_of(limited.control_url)), timeout=10)
        for _ in range(10)
    ]
    try:
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * (1 << 20)
        for _ in range(20):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendall(chunk)
        growth = rss_kib(pid) - before
    finally:
        close_all(socks)
    assert growth < MAX_RSS_GROWTH_KIB, f"the control process grew by {growth} KiB"


# -- X-Forwarded-For ---------------------------------------------------------------------


def sign_ins(client: httpx.Client, space: Space, forwarded_for: list[str]) -> list[int]:
    return [
        client.post(
            space.api("/listeners"), json={"name": "x"}, headers={"X-Forwarded-For": ip}
        ).status_code
        for ip in forwarded_for
    ]


def many_addresses(n: int, block: int) -> list[str]:
    return [f"198.51.{block}.{i}" for i in range(1, n + 1)]


def test_forwarded_for_from_an_unconfigured_peer_does_not_dodge_the_signin_limit(
    limited: Server,
) -> None:
    space = limited.create_space_sync("spoofed sign-ins")
    with client_from(ATTACKER) as client:
        statuses = sign_ins(client, space, many_addresses(80, 1))
    assert 429 in statuses, "every spoofed address got its own sign-in bucket"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("siege-proxied"),
        [
            "--trusted-proxies",
            "127.0.0.4",
            "--set",
            "control.max_address_connections=4",
            "--set",
            "audience.max_address_connections=4",
        ],
    )
    yield server
    server.stop()
    assert not server.tracebacks(), "the server logged tracebacks:\n" + server.output()


def test_a_configured_proxy_names_the_client_it_forwards(proxied: Server) -> None:
    space = proxied.create_space_sync("behind a proxy")
    with client_from("127.0.0.4") as proxy:
        assert set(sign_ins(proxy, space, many_addresses(80, 2))) == {201}
        # One client behind the proxy is still one client: limited as such.
        assert 429 in sign_ins(proxy, space, ["203.0.113.9"] * 80)
    with client_from("127.0.0.5") as not_a_proxy:
        assert 429 in sign_ins(not_a_proxy, space, many_addresses(80, 3))


@pytest.mark.parametrize("which", ["control", "audience"])
def test_per_address_cap_refuses_fast_and_frees_on_close(proxied: Server, which: str) -> None:
    url = proxied.control_url if which == "control" else proxied.audience_url
    held = open_idle(port_of(url), 4, source="127.0.0.7")
    try:
        time.sleep(0.3)
        with client_from("127.0.0.7") as client:
            started = time.monotonic()
            refused = client.get(f"{url}/healthz")
        assert time.monotonic() - started < 2.0  # refused at once, not after a timeout
        assert refused.status_code == 503
        assert refused.json()["error"] == "unavailable" and "retry-after" in refused.headers
        with client_from("127.0.0.8") as other:
            assert other.get(f"{url}/healthz").status_code == 200
    finally:
        close_all(held)
    time.sleep(0.3)
    with client_from("127.0.0.7") as client:
        assert client.get(f"{url}/healthz").status_code == 200


def test_closed_websockets_give_their_slots_back(proxied: Server) -> None:
    space = proxied.create_space_sync("sockets")
    port = port_of(proxied.control_url)
    for _ in range(10):  # over the cap of 4: each closed WebSocket freed its slot
        with socket.create_connection(
            ("127.0.0.1", port), timeout=5, source_address=("127.0.0.9", 0)
        ) as s:
            s.sendall(
                f"GET /api/spaces/{space.id}/ws?token={space.host_token} HTTP/1.1\r\n"
                "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            assert s.recv(4096).startswith(b"HTTP/1.1 101 ")
        time.sleep(0.05)
    time.sleep(0.3)
    with client_from("127.0.0.9") as client:
        assert client.get(f"{proxied.control_url}/healthz").status_code == 200
