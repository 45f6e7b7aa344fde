"""Edges fed through a real three-server NATS JetStream cluster.

One ``townhall serve --nats`` (the origin: control, stage, publisher), two
``townhall edge --nats`` processes, three ``nats-server`` processes, and the shipped
Varnish and nginx configurations in front of the edges, all on loopback.
A tone bot speaks on the origin's stage; listeners are on the edges only, and what
they hear is checked by FFT.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from benchmarks.harness.audio import decode, has_tone
from benchmarks.harness.caches import Cache, nginx_cache, varnish
from benchmarks.harness.nats import Edge, NatsCluster, edges, nats_cluster
from benchmarks.harness.probe import OggProbe
from benchmarks.harness.processes import free_port, kill9, process_table
from benchmarks.harness.server import Space, on_air

pytestmark = pytest.mark.e2e

TONE_HZ = 440.0
HEARD_WITHIN_S = 15.0
# The longest a listener may wait for the program while the cluster replaces a lost
# server (measured: about 4 s when the lost one led the stream).
ELECTION_STALL_S = 7.0
# Players asking a cache for the same blocking playlist at once.
PLAYERS = 100
_PART = re.compile(r'#EXT-X-PART:DURATION=[0-9.]+,URI="(p(\d+)\.(\d+)\.m4s)"')


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with nats_cluster(3) as c:
        yield c


@pytest.fixture(scope="module")
def space(cluster: NatsCluster) -> Iterator[Space]:
    with on_air(tone_hz=TONE_HZ, server_args=["--nats", cluster.urls]) as s:
        yield s


@pytest.fixture(scope="module")
def two_edges(cluster: NatsCluster, space: Space) -> Iterator[list[Edge]]:
    with edges(cluster.urls, 2) as started:
        yield started


def ogg_url(edge: Edge, space: Space) -> str:
    return f"{edge.url}/live/{space.id}.ogg"


def playlist(edge: Edge, space: Space, msn: int | None = None, part: int | None = None) -> str:
    params = {} if msn is None else {"_HLS_msn": msn, "_HLS_part": part or 0}
    resp = httpx.get(f"{edge.url}/live/{space.id}/index.m3u8", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.text


def last_part(text: str) -> tuple[int, int]:
    found = _PART.findall(text)
    assert found, text
    _, msn, index = found[-1]
    return int(msn), int(index)


def wait_heard(probe: OggProbe, after_s: float) -> float:
    deadline = time.monotonic() + HEARD_WITHIN_S
    while time.monotonic() < deadline:
        with probe.lock:
            at = probe.log.first_with([TONE_HZ], after_s, sustain=10)
        if at is not None:
            return at
        time.sleep(0.2)
    pytest.fail(f"{probe.name} heard no {TONE_HZ} Hz within {HEARD_WITHIN_S} s")


def test_the_tone_is_heard_through_each_edge(space: Space, two_edges: list[Edge]) -> None:
    for i, edge in enumerate(two_edges):
        with OggProbe(ogg_url(edge, space), [TONE_HZ], name=f"edge{i}", seed=i) as probe:
            wait_heard(probe, time.monotonic())
        # And in LL-HLS: the newest part, with its init segment, decodes to the tone.
        msn, index = last_part(playlist(edge, space))
        base = f"{edge.url}/live/{space.id}"
        init = httpx.get(f"{base}/init.mp4", timeout=10).content
        part = httpx.get(f"{base}/p{msn}.{index}.m4s", timeout=10).content
        assert has_tone(decode(init + part, "mp4"), TONE_HZ)


def test_edges_number_and_fill_parts_alike(space: Space, two_edges: list[Edge]) -> None:
    a, b = two_edges
    msn, _ = last_part(playlist(a, space))
    # A blocking request on each edge for the same coming part: the same bytes.
    want = (msn + 1, 0)
    bodies = []
    for edge in (a, b):
        text = playlist(edge, space, *want)
        assert f'URI="p{want[0]}.{want[1]}.m4s"' in text
        url = f"{edge.url}/live/{space.id}/p{want[0]}.{want[1]}.m4s"
        bodies.append(httpx.get(url, timeout=10).content)
    assert bodies[0] == bodies[1] and len(bodies[0]) > 0


def test_a_restarted_edge_serves_the_same_numbering(
    cluster: NatsCluster, space: Space, two_edges: list[Edge]
) -> None:
    a, _ = two_edges
    fresh = Edge(cluster.urls, free_port())
    try:
        fresh.start()
        # The playlist it answers first already holds the window, numbered as a's.
        first = playlist(fresh, space)
        msn, index = last_part(first)
        assert f"p{msn}.{index}.m4s" in playlist(a, space, msn, index)
        ours = httpx.get(f"{fresh.url}/live/{space.id}/p{msn}.{index}.m4s", timeout=10)
        theirs = httpx.get(f"{a.url}/live/{space.id}/p{msn}.{index}.m4s", timeout=10)
        assert ours.status_code == theirs.status_code == 200
        assert ours.content == theirs.content
        # The window (media sequence) matches too, not only the newest part.
        seq = re.compile(r"#EXT-X-MEDIA-SEQUENCE:(\d+)")
        m_fresh, m_a = seq.search(first), seq.search(playlist(a, space))
        assert m_fresh is not None and m_a is not None
        assert abs(int(m_fresh.group(1)) - int(m_a.group(1))) <= 1
    finally:
        fresh.stop()


def test_losing_a_nats_server_loses_no_part_and_no_listener(
    cluster: NatsCluster, space: Space, two_edges: list[Edge]
) -> None:
    probes = [
        OggProbe(ogg_url(edge, space), [TONE_HZ], name=f"edge{i}", seed=i).start()
        for i, edge in enumerate(two_edges)
    ]
    # The origin's own listener: what the stage made, to tell the stage's hiccups (a
    # busy machine) from the cluster's.
    origin = OggProbe(space.ogg_url, [TONE_HZ], name="origin", seed=9).start()
    victim = cluster.nodes[0]
    try:
        for probe in probes:
            wait_heard(probe, time.monotonic())
        msn_before, _ = last_part(playlist(two_edges[0], space))
        t0 = time.monotonic()
        cluster.kill9(victim)
        time.sleep(10.0)
        t1 = time.monotonic()
        for probe in probes:
            with probe.lock:
                frames = [f for f in probe.log.frames if t0 <= f.arrival_s <= t1]
                drops = probe.log.disconnects_between(t0, t1)
                gap = probe.log.longest_gap(t0, t1)
            assert drops == 0, f"{probe.name} was dropped: {probe.log.disconnects}"
            # Continuous media time: every 20 ms of the program arrived, with the tone.
            skipped = [
                (a.media_s, b.media_s)
                for a, b in itertools.pairwise(frames)
                if a.serial == b.serial and b.media_s - a.media_s > 0.03
            ]
            assert not skipped, f"{probe.name} skipped media: {skipped[:5]}"
            with origin.lock:
                made_toneless = {round(f.media_s, 2) for f in origin.log.frames if not f.tones[0]}
            toneless = {round(f.media_s, 2) for f in frames if not f.tones[0]}
            assert frames and not toneless - made_toneless, (
                f"{probe.name}: frames without the tone that the origin had: "
                f"{sorted(toneless - made_toneless)[:10]}"
            )
            # A stream whose leader died elects another (a few seconds): the parts wait
            # at the origin and then arrive in a burst, none lost, nobody cut off.
            assert gap < ELECTION_STALL_S, f"{probe.name} heard nothing for {gap:.2f} s"
        # Every part published meanwhile reached both edges: the playlists list the
        # same consecutive parts.
        texts = [playlist(edge, space) for edge in two_edges]
        uris = [[(int(m), int(p)) for _, m, p in _PART.findall(t)] for t in texts]
        common = sorted(set(uris[0]) & set(uris[1]))
        assert common and common[-1][0] > msn_before
        for edge_uris in uris:
            assert edge_uris == sorted(edge_uris)
            assert all(
                (b[0] == a[0] and b[1] == a[1] + 1) or (b[0] == a[0] + 1 and b[1] == 0)
                for a, b in itertools.pairwise(edge_uris)
            ), edge_uris
    finally:
        for probe in [*probes, origin]:
            probe.stop()
        cluster.start(victim)
        cluster.wait_ready()


def test_listeners_of_a_killed_edge_resume_on_its_sibling(
    cluster: NatsCluster, space: Space
) -> None:
    with edges(cluster.urls, 2) as (doomed, sibling):
        probe = OggProbe(
            ogg_url(doomed, space),
            [TONE_HZ],
            name="failover",
            seed=3,
            fallback_urls=[ogg_url(sibling, space)],
        ).start()
        try:
            wait_heard(probe, time.monotonic())
            killed_at = time.monotonic()
            doomed.kill9()
            resumed = wait_heard(probe, killed_at)
            assert resumed - killed_at < 5.0, f"resumed after {resumed - killed_at:.1f} s"
        finally:
            probe.stop()


def test_a_stage_taken_over_by_the_standby_keeps_the_edges_numbering(
    space: Space, two_edges: list[Edge]
) -> None:
    """The stage process killed: the standby takes the Space, the speaker reconnects, and
    the edges number on from where they were (a discontinuity, no number reused)."""
    edge = two_edges[0]
    with OggProbe(ogg_url(edge, space), [TONE_HZ], name="takeover", seed=5) as probe:
        wait_heard(probe, time.monotonic())
        before = [(int(m), int(p)) for _, m, p in _PART.findall(playlist(edge, space))]
        table = process_table(space.server.control_url) or []
        stage = next(p for p in table if p.name == f"stage:{space.id}")
        killed_at = time.monotonic()
        kill9(stage.pid)
        deadline = time.monotonic() + HEARD_WITHIN_S
        while True:
            with probe.lock:
                back = probe.log.first_with([TONE_HZ], killed_at, sustain=10, new_stream=True)
            if back is not None:
                break
            assert time.monotonic() < deadline, "the edge's listener never heard the new stage"
            time.sleep(0.2)
        assert back - killed_at < 10.0
        with probe.lock:
            assert probe.log.disconnects_between(killed_at, time.monotonic()) == 0
    text = playlist(edge, space)
    after = [(int(m), int(p)) for _, m, p in _PART.findall(text)]
    assert after[-1] > before[-1]
    assert after == sorted(set(after)), after  # never a number twice, never backwards
    assert "#EXT-X-DISCONTINUITY" in text
    # Both edges say the same about the new stage's parts.
    msn, index = after[-1]
    part = f"/live/{space.id}/p{msn}.{index}.m4s"
    bodies = {httpx.get(e.url + part, timeout=10).content for e in two_edges}
    assert len(bodies) == 1


# -- caches in front of the edges -----------------------------------------------------


@pytest.fixture(scope="module", params=["varnish", "nginx"])
def cache(request: pytest.FixtureRequest, two_edges: list[Edge]) -> Iterator[Cache]:
    make, edge = (
        (varnish, two_edges[0]) if request.param == "varnish" else (nginx_cache, two_edges[1])
    )
    with make(edge.port) as started:
        yield started


def test_the_tone_is_heard_through_the_cache(space: Space, cache: Cache) -> None:
    base = f"{cache.url}/live/{space.id}"
    deadline = time.monotonic() + HEARD_WITHIN_S
    while True:
        resp = httpx.get(f"{base}/index.m3u8", params={"sid": "someone"}, timeout=10)
        assert resp.status_code == 200, resp.text
        msn, index = last_part(resp.text)
        init = httpx.get(f"{base}/init.mp4", timeout=10)
        part = httpx.get(f"{base}/p{msn}.{index}.m4s", timeout=10)
        assert init.status_code == part.status_code == 200
        if has_tone(decode(init.content + part.content, "mp4"), TONE_HZ):
            return
        assert time.monotonic() < deadline, f"no {TONE_HZ} Hz through {cache.name}"
        time.sleep(0.5)


def test_the_cache_sends_the_edge_one_request_per_part(space: Space, cache: Cache) -> None:
    base = f"{cache.url}/live/{space.id}"
    msn, _ = last_part(httpx.get(f"{base}/index.m3u8", timeout=10).text)
    want = {"_HLS_msn": msn + 2, "_HLS_part": 0}
    before = cache.origin_requests()

    async def players(count: int) -> list[httpx.Response]:
        # Each player names its own session: the cache key must not.
        async with httpx.AsyncClient(timeout=15) as client:
            return await asyncio.gather(
                *(
                    client.get(f"{base}/index.m3u8", params={**want, "sid": f"listener{i}"})
                    for i in range(count)
                )
            )

    replies = asyncio.run(players(PLAYERS))
    assert [r.status_code for r in replies] == [200] * PLAYERS
    assert len({r.content for r in replies}) == 1
    # The blocking playlist once, for everyone, however many asked.
    assert cache.origin_requests() - before == 1
