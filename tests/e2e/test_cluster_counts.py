"""Counts across nodes, against a real three-server NATS cluster, a real origin and real
edges on loopback (bounded in count and time).

Listeners with signed session ids are spread over two edges and the origin, some of them
on two nodes at once (an Ogg stream on one edge and playlist polls on the other, or
streams on the origin and an edge): the room's ``listening_now`` and ``total_tuned_in``
equal the number of people, not the number of places they listen from. An edge with
another session key is not believed; an edge killed with ``kill -9`` stops counting
within the reports' timeout, and what it counted stays in ``total_tuned_in``; made-up
session ids on an edge add at most the anonymous bound of their address.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import string
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from benchmarks.harness.nats import Edge, NatsCluster, edges, nats_cluster
from benchmarks.harness.processes import free_port
from benchmarks.harness.server import Space, on_air
from townhall.cluster.config import ClusterConfig
from townhall.room.counting import CounterConfig
from townhall.sessions import CLUSTER_SESSION_KEY_FILE

pytestmark = pytest.mark.e2e

REPORT_S = ClusterConfig().counts_report_s
TIMEOUT_S = ClusterConfig().counts_timeout_s
# A report's way: the workers' batch (50 ms, deduplicated per second), the edge's period,
# the holding node's merge period; and some slack for a shared machine.
SETTLE_S = 3 * REPORT_S + 2.0
# An edge killed stops counting within its reports' timeout, plus one period each for
# the last report and the merge, plus slack.
GONE_WITHIN_S = TIMEOUT_S + 2 * REPORT_S + 1.5
POLL_EVERY_S = 2.0
ANONYMOUS_BOUND = CounterConfig().max_anonymous_address_sessions
FORGED_IDS = 400
ID_CHARS = string.ascii_letters + string.digits + "-_"


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("Debian ffmpeg is needed as a real peer")
    with nats_cluster(3) as c:
        yield c


@pytest.fixture(scope="module")
def space(cluster: NatsCluster) -> Iterator[Space]:
    with on_air(server_args=["--nats", cluster.urls]) as s:
        yield s


@pytest.fixture(scope="module")
def two_edges(cluster: NatsCluster, space: Space) -> Iterator[list[Edge]]:
    # The origin wrote its key for the edges, as an operator would copy it to them.
    key_file = space.server.data_dir / CLUSTER_SESSION_KEY_FILE
    assert key_file.stat().st_mode & 0o077 == 0, "the key file is for its owner only"
    with edges(cluster.urls, 2, args=("--session-key-file", str(key_file))) as started:
        yield started


class Audience:
    """Listeners held on a background event loop: Ogg streams and playlist pollers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        # Held here: the loop keeps only weak references to its tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        async def start() -> None:
            self._tasks.add(asyncio.create_task(coro))

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)

    def stream(self, url: str, timeout_s: float = 20.0) -> None:
        """An Ogg listener on ``url``; returns once audio flows."""
        flowing = threading.Event()
        self._run(_hold_ogg(url, flowing))
        assert flowing.wait(timeout_s), f"no audio from {url}"

    def poll(self, url: str) -> None:
        """An LL-HLS player polling ``url``'s playlist (first poll answered on return)."""
        answered = threading.Event()
        self._run(_poll(url, answered))
        assert answered.wait(20), f"no playlist from {url}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


async def _cancel_all() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _hold_ogg(url: str, flowing: threading.Event) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    got = 0
    try:
        while chunk := await reader.read(65536):
            got += len(chunk)
            if got > 4_000:
                flowing.set()
    finally:
        writer.close()


async def _poll(url: str, answered: threading.Event) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    answered.set()
            await asyncio.sleep(POLL_EVERY_S)


def sign_in(space: Space, name: str) -> str:
    resp = httpx.post(space.api("/listeners"), json={"name": name}, timeout=10)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["session_id"])


def counts(space: Space) -> tuple[int, int]:
    room = httpx.get(space.api(), timeout=10).json()["room"]
    return int(room["listening_now"]), int(room["total_tuned_in"])


def ogg(base: str, space: Space, sid: str) -> str:
    return f"{base}/live/{space.id}.ogg?sid={sid}"


def hls(base: str, space: Space, sid: str) -> str:
    return f"{base}/live/{space.id}/index.m3u8?sid={sid}"


def wait_counts(space: Space, want: tuple[int, int], within_s: float) -> float:
    """Seconds until the room shows ``want``; fails with the last counts if it never does."""
    t0 = time.monotonic()
    seen = counts(space)
    while seen != want:
        if time.monotonic() - t0 > within_s:
            pytest.fail(f"counts {seen}, the truth {want}, after {within_s:.1f} s")
        time.sleep(0.2)
        seen = counts(space)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def audience() -> Iterator[Audience]:
    a = Audience()
    yield a
    a.close()


# Who listens where (the state the tests below share, in order).
ONLY_A, ONLY_B, BOTH_EDGES, ONLY_ORIGIN, ORIGIN_AND_B = 4, 3, 3, 2, 2
TRUTH = ONLY_A + ONLY_B + BOTH_EDGES + ONLY_ORIGIN + ORIGIN_AND_B
# Tuned in before the listeners came (the harness's check that the program flows).
BASE = [0]
QUIET_WITHIN_S = CounterConfig().session_timeout_s + 10.0


def wait_quiet(space: Space) -> int:
    """Until nobody listens; the tuned-in count then."""
    deadline = time.monotonic() + QUIET_WITHIN_S
    while (seen := counts(space))[0] != 0:
        assert time.monotonic() < deadline, f"still {seen[0]} listening"
        time.sleep(0.5)
    return seen[1]


def test_listeners_spread_over_two_edges_and_the_origin_count_once_each(
    space: Space, two_edges: list[Edge], audience: Audience
) -> None:
    a, b = two_edges
    origin = space.server.audience_url
    # The harness's own check that the program flows is an anonymous listener for a
    # while: the counts start once it has gone.
    base = BASE[0] = wait_quiet(space)
    for i in range(ONLY_A):
        audience.stream(ogg(a.url, space, sign_in(space, f"a{i}")))
    for i in range(ONLY_B):
        audience.poll(hls(b.url, space, sign_in(space, f"b{i}")))
    for i in range(BOTH_EDGES):  # a stream on one edge, a player polling the other
        sid = sign_in(space, f"ab{i}")
        audience.stream(ogg(a.url, space, sid))
        audience.poll(hls(b.url, space, sid))
    for i in range(ONLY_ORIGIN):
        audience.stream(ogg(origin, space, sign_in(space, f"o{i}")))
    for i in range(ORIGIN_AND_B):
        sid = sign_in(space, f"ob{i}")
        audience.stream(ogg(origin, space, sid))
        audience.stream(ogg(b.url, space, sid))
    took = wait_counts(space, (TRUTH, base + TRUTH), SETTLE_S)
    # A sum of the nodes' counts would say 19: it stays at the truth, report after report.
    for _ in range(4):
        time.sleep(REPORT_S / 2)
        assert counts(space) == (TRUTH, base + TRUTH)
    print(f"{TRUTH} listeners on 3 nodes (19 places) shown as {TRUTH} after {took:.1f} s")


def test_an_edge_with_another_key_is_not_believed(
    cluster: NatsCluster, space: Space, two_edges: list[Edge], audience: Audience,
    tmp_path: Path,
) -> None:  # fmt: skip
    key_file = tmp_path / "other.key"
    key_file.write_text(secrets.token_hex(32))
    rogue = Edge(cluster.urls, free_port(), args=("--session-key-file", str(key_file)))
    try:
        rogue.start()
        for i in range(3):
            audience.stream(ogg(rogue.url, space, sign_in(space, f"r{i}")))
        time.sleep(SETTLE_S)
        # Its listeners are served; its reports arrive and are not believed, so they
        # count nowhere.
        assert counts(space) == (TRUTH, BASE[0] + TRUTH)
        metrics = scrape_values(space)
        assert metrics["townhall_count_reports_rejected_total"] >= 2, metrics
        assert metrics[f'townhall_counting_nodes{{space="{space.id}"}}'] == 2, metrics
    finally:
        rogue.stop()


def test_an_edge_killed_stops_counting_within_the_timeout(
    space: Space, two_edges: list[Edge]
) -> None:
    a, _ = two_edges
    a.kill9()
    t0 = time.monotonic()
    # Those on a only are gone; those also polling b still listen; nobody is un-tuned-in.
    took = wait_counts(space, (TRUTH - ONLY_A, BASE[0] + TRUTH), GONE_WITHIN_S)
    print(f"edge killed: its {ONLY_A} listeners stopped counting in {time.monotonic() - t0:.1f} s")
    assert took <= GONE_WITHIN_S
    time.sleep(REPORT_S)
    assert counts(space) == (TRUTH - ONLY_A, BASE[0] + TRUTH)


def test_made_up_session_ids_on_an_edge_add_at_most_the_anonymous_bound(
    space: Space, two_edges: list[Edge]
) -> None:
    _, b = two_edges
    before = counts(space)
    asyncio.run(flood_playlist(f"{b.url}/live/{space.id}/index.m3u8", FORGED_IDS))
    time.sleep(SETTLE_S)
    now, total = counts(space)
    print(f"{FORGED_IDS} made-up ids on an edge: {before} -> {(now, total)}")
    assert before[0] < now <= before[0] + ANONYMOUS_BOUND  # counted, but as one address
    assert before[1] < total <= before[1] + ANONYMOUS_BOUND


async def flood_playlist(url: str, count: int, connections: int = 8) -> None:
    """``count`` polls, each with a made-up sid and user agent, on a few connections."""
    target = urlsplit(url)

    async def one(share: int) -> None:
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        try:
            for _ in range(share):
                writer.write(
                    f"GET {target.path}?sid={forged(29)} HTTP/1.1\r\nHost: t\r\n"
                    f"User-Agent: Forger/{forged(8)}\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
        finally:
            writer.close()

    async with asyncio.timeout(60):
        await asyncio.gather(*(one(count // connections) for _ in range(connections)))


def scrape_values(space: Space) -> dict[str, float]:
    """The counts' metrics of the origin, by name with labels."""
    values = {}
    for line in space.server.metrics().splitlines():
        if line.startswith(("townhall_count_reports", "townhall_counting_nodes")):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def forged(n: int) -> str:
    return "".join(secrets.choice(ID_CHARS) for _ in range(n))
