"""The waiting room: scheduled Spaces on the audience port before the start.

The control plane publishes a scheduled Space's snapshot (with the host's message and
the waiting count) on the feed and closes the channel of a cancelled one; the audience
port holds Ogg listeners (their head, no audio byte) until the stream's header and
playlist requests until a segment exists, refusing past its bound with a Retry-After
that follows the schedule.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.unit.test_control_app import Town, bearer, host, open_town, town_config
from townhall.audience.channel import Channel, ChannelConfig
from townhall.audience.plane import AudienceStats, ChannelStats
from townhall.audience.server import AudienceConfig, AudienceServer
from townhall.control.config import ControlConfig
from townhall.control.waiting import start_spread_s, waiting_counts
from townhall.feed import ChannelEnded, HlsInit, HlsPart, OggHeader, OggPages, RoomUpdate
from townhall.loadtest.wire import events_url
from townhall.loadtest.worker import Mix, Swarm, WorkerPlan
from townhall.sessions import SessionSigner

HEADER = b"OggS\x00\x02" + b"\x00" * 20 + b"OpusHead"
SIGNER = SessionSigner(bytes(range(32)))


@pytest.fixture
async def town(tmp_path: Path) -> AsyncIterator[Town]:
    async for t in open_town(town_config(tmp_path)):
        yield t


async def scheduled(town: Town, in_s: float) -> dict[str, object]:
    resp = await town.client.post(
        "/api/spaces",
        json={"title": "Later", "scheduled_at": time.time() + in_s},
        headers=bearer(town.th.admin_key),
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, object] = resp.json()
    return body


def rooms(town: Town, space_id: object) -> list[dict[str, object]]:
    return [
        json.loads(m.json)
        for m in town.published
        if isinstance(m, RoomUpdate) and m.space_id == space_id
    ]


# -- the control plane ------------------------------------------------------------------


async def test_a_scheduled_space_is_published_with_its_message_and_waiting_count(
    town: Town,
) -> None:
    space = await scheduled(town, 600.0)
    waiting = town.th.waiting
    waiting.tick(time.monotonic())
    [first] = rooms(town, space["id"])
    assert first["state"] == "scheduled" and first["waiting_now"] == 0
    assert first["late_message"] == "" and isinstance(first["scheduled_at"], float)

    waiting.tick(time.monotonic())
    assert len(rooms(town, space["id"])) == 1  # nothing changed, nothing published

    # The audience port reports 3 SSE streams and 2 held Ogg streams for the Space.
    town.th.audience_plane = None
    waiting.audience = lambda: AudienceStats((ChannelStats(str(space["id"]), 0, 3, 0.2, 0.0, 2),))
    waiting.tick(time.monotonic())
    assert rooms(town, space["id"])[-1]["waiting_now"] == 5

    resp = await town.post(space, "/late_message", host(space), json={"message": "10 min late"})
    assert resp.status_code == 200 and resp.json() == {"late_message": "10 min late"}
    # Published with the post itself, not a tick later.
    assert rooms(town, space["id"])[-1]["late_message"] == "10 min late"
    described = await town.client.get(f"/api/spaces/{space['id']}")
    assert described.headers["cache-control"] == "public, max-age=5"
    assert described.json()["room"]["late_message"] == "10 min late"


async def test_only_the_host_or_a_cohost_posts_to_those_waiting_and_only_before(
    town: Town,
) -> None:
    space = await scheduled(town, 60.0)
    listener, _ = await town.sign_in(space, "Lee")
    resp = await town.post(space, "/late_message", listener, json={"message": "hi"})
    assert resp.status_code == 403, resp.text
    resp = await town.post(space, "/late_message", host(space), json={"message": "x" * 281})
    assert resp.status_code == 400, resp.text
    await town.go_live(space)
    resp = await town.post(space, "/late_message", host(space), json={"message": "late"})
    assert resp.status_code == 409, resp.text


async def test_a_cancelled_space_closes_its_waiting_room(town: Town) -> None:
    space = await scheduled(town, 60.0)
    town.th.waiting.tick(time.monotonic())
    resp = await town.post(space, "/end", host(space))
    assert resp.status_code == 200, resp.text
    town.th.waiting.tick(time.monotonic())
    ended = [m for m in town.published if isinstance(m, ChannelEnded)]
    assert [m.space_id for m in ended] == [space["id"]]


async def test_a_space_that_went_live_leaves_the_waiting_rooms_without_an_end(
    town: Town,
) -> None:
    space = await scheduled(town, 60.0)
    town.th.waiting.tick(time.monotonic())
    await town.go_live(space)
    town.th.waiting.tick(time.monotonic())
    assert not [m for m in town.published if isinstance(m, ChannelEnded)]
    assert rooms(town, space["id"])[-1]["state"] == "live"


# -- the audience port ------------------------------------------------------------------


async def serve(server: AudienceServer) -> tuple[asyncio.Server, int]:
    listener = await server.open("127.0.0.1", 0)
    return listener, listener.sockets[0].getsockname()[1]


async def read_some(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(65536), timeout_s)
    except TimeoutError:
        return b""


async def test_an_ogg_listener_before_the_start_is_held_without_audio_then_streams() -> None:
    server = AudienceServer()
    server.publish(RoomUpdate("s", '{"state":"scheduled","scheduled_at":null}', 0.0))
    listener, port = await serve(server)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /live/s.ogg HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await read_some(reader, 2.0)
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
        assert await read_some(reader, 0.3) == b""  # held: not one audio byte
        assert server.channel_stats()[0].held_listeners == 1

        server.publish(OggHeader("s", HEADER))
        server.publish(OggPages("s", b"OggS-page-1", time.monotonic()))
        body = b""
        deadline = time.monotonic() + 3.0
        while b"OggS-page-1" not in body and time.monotonic() < deadline:
            body += await read_some(reader, 0.5)
        assert body.startswith(HEADER) and b"OggS-page-1" in body
        stats = server.channel_stats()[0]
        assert (stats.held_listeners, stats.ogg_listeners) == (0, 1)
        writer.close()
    finally:
        await server.close()
        listener.close()


async def test_a_playlist_request_before_the_start_waits_for_the_first_segment() -> None:
    server = AudienceServer()
    server.publish(RoomUpdate("s", '{"state":"scheduled"}', 0.0))
    listener, port = await serve(server)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            asked = asyncio.ensure_future(client.get("/live/s/index.m3u8", timeout=10))
            await asyncio.sleep(0.3)
            assert not asked.done() and server.held_playlists == 1
            server.publish(HlsInit("s", b"init"))
            for seq in range(4):  # one segment of four parts
                server.publish(HlsPart("s", b"part", 0.5, time.time(), seq))
            resp = await asyncio.wait_for(asked, 5)
            assert resp.status_code == 200 and "#EXTINF" in resp.text
            assert server.held_playlists == 0
    finally:
        await server.close()
        listener.close()


async def test_past_the_hold_a_playlist_gets_503_with_a_retry_after_from_the_schedule() -> None:
    config = AudienceConfig(max_playlist_hold_s=0.2)
    server = AudienceServer(config, rng=random.Random(1))
    at = time.time() + 120.0
    server.publish(RoomUpdate("s", json.dumps({"state": "scheduled", "scheduled_at": at}), 0.0))
    listener, port = await serve(server)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            resp = await client.get("/live/s/index.m3u8", timeout=5)
        assert resp.status_code == 503, resp.text
        retry = int(resp.headers["retry-after"])
        assert 115 <= retry <= 126, retry  # the time left, plus up to 5 s of jitter
        assert resp.json()["error"] == "unavailable"
    finally:
        await server.close()
        listener.close()


async def test_held_listeners_are_bounded_per_process() -> None:
    server = AudienceServer(AudienceConfig(max_held_listeners=1))
    server.publish(RoomUpdate("s", '{"state":"scheduled"}', 0.0))
    listener, port = await serve(server)
    try:
        _r, first = await asyncio.open_connection("127.0.0.1", port)
        first.write(b"GET /live/s.ogg HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            resp = await client.get("/live/s/index.m3u8", timeout=5)
        assert resp.status_code == 503 and "retry-after" in resp.headers
        first.close()
    finally:
        await server.close()
        listener.close()


def test_the_retry_after_follows_the_schedule_and_is_bounded() -> None:
    channel = Channel("s", ChannelConfig(waiting_retry_after_s=5.0, max_waiting_retry_after_s=300))
    rng = random.Random(0)
    channel.scheduled_at = 1_000.0
    assert 60.0 <= channel.retry_after_s(940.0, rng) <= 65.0
    assert 5.0 <= channel.retry_after_s(2_000.0, rng) <= 10.0  # late: soon, jittered
    assert channel.retry_after_s(0.0, rng) == 300.0  # far off: capped
    channel.scheduled_at = None
    assert 5.0 <= channel.retry_after_s(0.0, rng) <= 10.0  # "starting soon"


async def test_the_room_events_are_cacheable_by_a_streaming_cdn() -> None:
    server = AudienceServer()
    server.publish(RoomUpdate("s", '{"state":"scheduled"}', 0.0))
    listener, port = await serve(server)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events/s HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await read_some(reader, 2.0)
        assert b"Cache-Control: public, max-age=0, s-maxage=1, no-transform" in head
        assert b"X-Accel-Buffering: no" in head
        writer.close()
    finally:
        await server.close()
        listener.close()


# -- the load generator -----------------------------------------------------------------


def test_the_web_share_of_a_waiting_crowd_is_spread_through_it() -> None:
    plan = WorkerPlan(0, "http://127.0.0.1:1/live/s.ogg", [], Mix.OGG, 0.0, 1.0, 0, web_share=0.25)
    swarm = Swarm(plan, outbox=[])  # type: ignore[arg-type]
    kinds = [swarm._kind_of(i) for i in range(1000)]
    assert 240 <= kinds.count("web") <= 260 and 1 <= kinds[:8].count("web") <= 3
    # Dealt round robin to two workers, each gets its share.
    assert 115 <= kinds[0::2].count("web") <= 135
    assert events_url("http://h:9/live/abc.ogg") == "http://h:9/events/abc"


def test_a_bigger_crowd_starts_over_a_wider_window() -> None:
    config = ControlConfig(start_joins_per_s=2_000.0)  # 1.5 s at least, 15 s at most
    assert start_spread_s(10, config) == 1.5
    assert start_spread_s(10_000, config) == 5.0
    assert start_spread_s(1_000_000, config) == 15.0


async def test_the_start_window_is_in_the_waiting_rooms_snapshot(town: Town) -> None:
    space = await scheduled(town, 600.0)
    town.th.waiting.audience = lambda: AudienceStats(
        (ChannelStats(str(space["id"]), 0, 8_000, 0.2, 0.0, 100),)
    )
    town.th.waiting.tick(time.monotonic())
    snapshot = rooms(town, space["id"])[-1]
    assert snapshot["waiting_now"] == 8_100 and snapshot["start_spread_s"] == 8.0


# -- who counts among the waiting -------------------------------------------------------


async def test_streams_opened_with_count_0_are_left_out_of_the_waiting_count() -> None:
    # A waiting page: its SSE stream and its held Ogg stream (count=0); a moderator's
    # SSE stream (count=0); a player's held Ogg stream. Two people wait.
    server = AudienceServer(sessions=SIGNER)
    server.publish(RoomUpdate("s", '{"state":"scheduled"}', 0.0))
    listener, port = await serve(server)
    writers = []
    page_sid = SIGNER.issue("s").encode()
    try:
        for target in (
            b"/events/s",
            b"/live/s.ogg?sid=" + page_sid + b"&count=0",
            b"/events/s?count=0",
            b"/live/s.ogg",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_some(reader, 2.0)).startswith(b"HTTP/1.1 200 OK")
            writers.append(writer)
        stats = server.channel_stats()[0]
        assert (stats.event_listeners, stats.held_listeners) == (2, 2)
        assert (stats.uncounted_event_listeners, stats.uncounted_ogg_listeners) == (1, 1)
        # The page holds its stream already: no page opens one at Go live.
        assert waiting_counts(AudienceStats((stats,))) == {"s": (2, 0)}
        writers[1].close()  # the page's held stream goes: the page must start at Go live
        deadline = time.monotonic() + 2.0
        while server.channel_stats()[0].uncounted_ogg_listeners and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert waiting_counts(AudienceStats(tuple(server.channel_stats()))) == {"s": (2, 1)}
    finally:
        for writer in writers:
            writer.close()
        await server.close()
        listener.close()


async def test_made_up_count_0_ogg_streams_do_not_shrink_the_start_spread() -> None:
    """Ogg streams marked count=0 without a signed session, with a made-up one, or many
    with one session take no more than that one session's page off those starting at Go
    live: a crowd of waiting pages keeps its spread."""
    server = AudienceServer(sessions=SIGNER)
    server.publish(RoomUpdate("s", '{"state":"scheduled"}', 0.0))
    listener, port = await serve(server)
    writers = []
    sid = SIGNER.issue("s")
    other_space = SIGNER.issue("t")
    targets = [b"/events/s"] * 5 + [
        b"/live/s.ogg?count=0",
        b"/live/s.ogg?count=0",
        b"/live/s.ogg?sid=made.up&count=0",
        f"/live/s.ogg?sid={other_space}&count=0".encode(),
        f"/live/s.ogg?sid={sid}&count=0".encode(),
        f"/live/s.ogg?sid={sid}&count=0".encode(),
    ]
    try:
        for target in targets:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_some(reader, 2.0)).startswith(b"HTTP/1.1 200 OK")
            writers.append(writer)
        stats = server.channel_stats()[0]
        assert stats.uncounted_ogg_listeners == 1
        # Five pages; one session holds a stream: four start at Go live.
        assert waiting_counts(AudienceStats((stats,)))["s"][1] == 4
    finally:
        for writer in writers:
            writer.close()
        await server.close()
        listener.close()


def test_uncounted_streams_add_up_across_workers() -> None:
    a = ChannelStats("s", 0, 3, 0.2, 0.0, 3, 2, 1)
    b = ChannelStats("s", 0, 1, 0.2, 0.0, 1, 1, 0)
    merged = a.merged(b)
    assert (merged.uncounted_ogg_listeners, merged.uncounted_event_listeners) == (3, 1)
    assert waiting_counts(AudienceStats((merged,))) == {"s": (4, 0)}
