"""Counts that cannot be forged, and privacy by default, against a real ``townhall serve``
with two audience workers (loopback only, bounded in count and time).

- 5,000 made-up session ids (and as many made-up user agents) on the public playlist
  add at most the anonymous bound of one address to the count, and the control process
  keeps its memory;
- the session id the sign-in issued counts once across both workers and both formats;
- /metrics takes the admin key, or is served on its own address and not on the control
  port; a listener token reads the public room and its own state only, and is refused
  on the stage WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import string
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import websockets

from benchmarks.harness.metrics import scrape
from benchmarks.harness.processes import free_port
from benchmarks.harness.server import Space, on_air, running_server
from townhall.room.counting import CounterConfig

FORGED_IDS = 5_000
# More connections than the anonymous bound: a connection keeps the anonymous key of its
# first request, so only the per-address bound holds the count down.
FLOOD_CONNECTIONS = 32
PIPELINE_BATCH = 25
FLOOD_TIMEOUT_S = 60.0
# Presence reports reach the control process in batches (50 ms) deduplicated per second.
REPORT_DELAY_S = 1.5
ANONYMOUS_BOUND = CounterConfig().max_anonymous_address_sessions
# What 5,000 forged ids may add to the control process (allocator noise, a few buffers);
# before the signed ids, each one was a session kept for good.
MEMORY_GROWTH_BOUND_BYTES = 8 * 1024 * 1024
ID_CHARS = string.ascii_letters + string.digits + "-_"


@pytest.fixture(scope="module")
def space() -> Iterator[Space]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("Debian ffmpeg is needed as a real peer")
    with on_air(server_args=("--audience-workers", "2")) as s:
        yield s


def counts(space: Space) -> tuple[int, int]:
    room = httpx.get(space.api(), timeout=10).json()["room"]
    return int(room["listening_now"]), int(room["total_tuned_in"])


def sign_in(space: Space, name: str) -> tuple[str, str]:
    resp = httpx.post(space.api("/listeners"), json={"name": name}, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()["token"], resp.json()["session_id"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def control_pid(space: Space) -> int:
    health = httpx.get(f"{space.server.control_url}/healthz", timeout=10).json()
    [pid] = [p["pid"] for p in health["processes"] if p["role"] == "control"]
    return int(pid)


def forged_id(n: int = 29) -> str:
    return "".join(secrets.choice(ID_CHARS) for _ in range(n))


async def flood_playlist(space: Space, count: int) -> int:
    """``count`` playlist polls, each with a made-up sid and user agent, pipelined a
    batch at a time on a few keep-alive connections (a lean client: the attack is cheap
    for the attacker); returns how many were answered 200."""
    target = urlsplit(space.hls_url)
    answered = 0

    async def one_connection(share: int) -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        try:
            while share > 0:
                batch = min(share, PIPELINE_BATCH)
                share -= batch
                writer.write(b"".join(forged_poll(target.path) for _ in range(batch)))
                for _ in range(batch):
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    answered += head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    shares = [len(range(i, count, FLOOD_CONNECTIONS)) for i in range(FLOOD_CONNECTIONS)]
    async with asyncio.timeout(FLOOD_TIMEOUT_S):
        await asyncio.gather(*(one_connection(share) for share in shares))
    return answered


def forged_poll(path: str) -> bytes:
    return (
        f"GET {path}?sid={forged_id()} HTTP/1.1\r\nHost: t\r\n"
        f"User-Agent: Forger/{forged_id(8)}\r\n\r\n"
    ).encode()


def test_forged_session_ids_add_at_most_the_anonymous_bound(space: Space) -> None:
    now_before, total_before = counts(space)
    control = psutil.Process(control_pid(space))
    rss_before = control.memory_info().rss
    t0 = time.monotonic()
    sent = asyncio.run(flood_playlist(space, FORGED_IDS))
    spent = time.monotonic() - t0
    assert sent == FORGED_IDS
    time.sleep(REPORT_DELAY_S)
    now_after, total_after = counts(space)
    grown = control.memory_info().rss - rss_before
    print(
        f"{sent} forged ids in {spent:.1f}s: listening_now {now_before} -> {now_after}, "
        f"total_tuned_in {total_before} -> {total_after}, control RSS {grown / 1e6:+.1f} MB"
    )
    # One address (with as many agents as ids) is at most ANONYMOUS_BOUND listeners.
    assert now_after <= now_before + ANONYMOUS_BOUND, (now_before, now_after)
    assert total_after <= total_before + ANONYMOUS_BOUND, (total_before, total_after)
    assert grown < MEMORY_GROWTH_BOUND_BYTES, f"control RSS grew {grown} bytes"


async def hold_ogg(url: str, ready: asyncio.Event, stop: asyncio.Event) -> int:
    """An Ogg listener that reads until ``stop``; the bytes it got."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    got = 0
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > 4_000:
                        ready.set()
    finally:
        writer.close()
    return got


async def poll_on_both_workers(space: Space, sid: str) -> set[int]:
    """Playlist polls with ``sid`` on new connections until both workers served some."""
    pids: set[int] = set()
    async with asyncio.timeout(20):
        while len(pids) < 2:
            async with httpx.AsyncClient(timeout=10) as client:  # one connection
                health = await client.get(f"{space.server.audience_url}/healthz")
                resp = await client.get(f"{space.hls_url}?sid={sid}")
                assert resp.status_code == 200, resp.text
                pids.add(int(health.json()["pid"]))
    return pids


def test_a_signed_session_counts_once_across_workers_and_formats(space: Space) -> None:
    _, sid = sign_in(space, "Listener")
    now_before, total_before = counts(space)

    async def scenario() -> tuple[set[int], list[int]]:
        stop, ready = asyncio.Event(), [asyncio.Event() for _ in range(4)]
        url = f"{space.ogg_url}?sid={sid}"
        streams = [asyncio.create_task(hold_ogg(url, r, stop)) for r in ready]
        async with asyncio.timeout(20):
            await asyncio.gather(*(r.wait() for r in ready))
        pids = await poll_on_both_workers(space, sid)
        await asyncio.sleep(REPORT_DELAY_S)
        during.append(counts(space))
        stop.set()
        return pids, await asyncio.gather(*streams)

    during: list[tuple[int, int]] = []
    pids, got = asyncio.run(scenario())
    assert len(pids) == 2 and all(g > 4_000 for g in got)
    # Four Ogg streams and the HLS polls on both workers: one listener.
    assert during[0] == (now_before + 1, total_before + 1), (now_before, total_before, during)

    # The same id with another MAC is not the server's: it counts as anonymous, however
    # many are made up (all from one address and agent here: one session at most).
    forged = [f"{sid[:13]}{forged_id(16)}" for _ in range(50)]

    async def forge() -> None:
        async with httpx.AsyncClient(timeout=10, headers={"User-Agent": "forger"}) as client:
            for f in forged:
                assert (await client.get(f"{space.hls_url}?sid={f}")).status_code == 200

    asyncio.run(forge())
    time.sleep(REPORT_DELAY_S)
    now_forged, total_forged = counts(space)
    assert now_forged <= during[0][0] + 1, (during, now_forged)
    assert total_forged <= during[0][1] + 1, (during, total_forged)


def test_metrics_need_the_admin_key(space: Space) -> None:
    url = f"{space.server.control_url}/metrics"
    bare = httpx.get(url, timeout=10)
    assert bare.status_code == 401
    assert bare.json()["error"] == "unauthorized"
    assert space.id not in bare.text
    wrong = httpx.get(url, headers=bearer("not-the-key"), timeout=10)
    assert wrong.status_code == 401 and space.id not in wrong.text
    host = httpx.get(url, headers=bearer(space.host_token), timeout=10)
    assert host.status_code == 401  # a host runs a room, not the server
    text = scrape(space.server.control_url, space.server.admin_key)
    assert f'townhall_listening_now{{space="{space.id}"}}' in text


def test_a_listener_reads_the_public_room_and_only_their_own_state(space: Space) -> None:
    alice_token, alice = sign_in(space, "Alice Hidden")
    bob_token, bob = sign_in(space, "Bob Hidden")
    for token in (alice_token, bob_token):
        resp = httpx.post(
            space.api("/commands"), json={"command": "raise_hand"}, headers=bearer(token)
        )
        assert resp.status_code == 200, resp.text
        # A command's answer is the room as its caller may see it, too.
        assert "hand_queue" not in resp.json()["room"], resp.text
        assert "Alice Hidden" not in resp.text or token == alice_token
    invited = httpx.post(
        space.api("/commands"),
        json={"command": "invite", "target": alice},
        headers=space.host_headers(),
    )
    assert invited.status_code == 200, invited.text

    as_bob = httpx.get(space.api("/room"), headers=bearer(bob_token), timeout=10)
    assert as_bob.status_code == 200, as_bob.text
    room = as_bob.json()
    assert "hand_queue" not in room and "pending_invitations" not in room
    assert "Alice Hidden" not in as_bob.text and alice not in as_bob.text
    assert room["you"] == {
        "participant_id": bob,
        "role": "listener",
        "name": "Bob Hidden",
        "hand_raised": True,
        "invited": False,
    }
    assert {"state", "stage", "listening_now", "total_tuned_in"} <= set(room)
    as_alice = httpx.get(space.api("/room"), headers=bearer(alice_token), timeout=10).json()
    assert as_alice["you"]["invited"] is True and as_alice["you"]["hand_raised"] is True

    as_host = httpx.get(space.api("/room"), headers=space.host_headers(), timeout=10).json()
    assert {h["id"] for h in as_host["hand_queue"]} >= {alice, bob}
    assert alice in as_host["pending_invitations"]
    assert as_host["you"]["role"] == "host"


def test_a_listener_token_is_refused_on_the_stage_socket(space: Space) -> None:
    token, _ = sign_in(space, "Socket Listener")
    base = space.server.control_url.replace("http://", "ws://")
    url = f"{base}/api/spaces/{space.id}/ws"

    async def first_message(token: str) -> tuple[int | None, dict[str, object] | None]:
        async with asyncio.timeout(10), websockets.connect(f"{url}?token={token}") as ws:
            try:
                return None, json.loads(await ws.recv())
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None, None

    code, message = asyncio.run(first_message(token))
    assert (code, message) == (4403, None)
    code, hello = asyncio.run(first_message(space.host_token))
    assert code is None and hello is not None and hello["type"] == "hello"


def test_metrics_on_their_own_address_leave_the_control_port() -> None:
    port = free_port()
    address = ("--set", f"control.metrics_address=127.0.0.1:{port}")
    with running_server(server_args=address) as server:
        deadline = time.monotonic() + 30
        while True:  # the control process binds it once it runs
            try:
                private = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nothing serves the metrics address"
                time.sleep(0.5)
        assert private.status_code == 200 and "townhall_audience_workers" in private.text
        keyed = httpx.get(
            f"{server.control_url}/metrics", headers=bearer(server.admin_key), timeout=30
        )
        assert keyed.status_code == 404
