"""The room over the real control API, with real WebRTC speaker bots.

Hands, invitations, the mic check, moderation and honest counts, each judged by what
people hear: a tone found (or proven absent) by FFT in a mix-minus or in the program.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
import numpy as np
import pytest

from benchmarks.harness.audio import amplitude_at, decode, pcm16_to_float
from benchmarks.harness.metrics import scrape_async
from benchmarks.harness.server import Server, Space
from townhall.media.mixer import FRAME_SAMPLES, Pcm, silence
from townhall.peers.links import StageLink
from townhall.peers.listen import listen_ogg
from townhall.peers.sources import ToneSource
from townhall.peers.speak import Speaker
from townhall.stage.audio import PcmSource

pytestmark = pytest.mark.e2e

PRESENT = 0.05  # full-scale amplitude that counts as "the tone is there"
ABSENT = 0.01


class SwitchableTone(PcmSource):
    """A tone that a test can silence, like a microphone that dies mid-sentence."""

    def __init__(self, freq_hz: float) -> None:
        self.tone = ToneSource(freq_hz)
        self.on = True

    def next_frame(self, now: float) -> Pcm:
        return self.tone.next_frame(now) if self.on else silence()


async def sign_in(client: httpx.AsyncClient, space: Space, name: str) -> tuple[str, str]:
    resp = await client.post(space.api("/listeners"), json={"name": name})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    return body["token"], body["session_id"]


async def command(
    client: httpx.AsyncClient, space: Space, token: str, name: str, target: str | None = None
) -> httpx.Response:
    return await client.post(
        space.api("/commands"),
        json={"command": name, "target": target},
        headers={"Authorization": f"Bearer {token}"},
    )


async def room(client: httpx.AsyncClient, space: Space) -> dict[str, object]:
    resp = await client.get(space.api("/room"), headers=space.host_headers())
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


async def wait_until(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition never held")
        await asyncio.sleep(0.1)


def heard_after(speaker: Speaker, since: float) -> np.ndarray:
    return pcm16_to_float(speaker.heard.pcm(since))


async def live_host(space: Space) -> Speaker:
    host = Speaker(StageLink(space.server.control_url, space.id, space.host_token), ToneSource(440))
    await space.start()
    await host.join()
    return host


async def host_and_guest(space: Space) -> tuple[Speaker, Speaker, str]:
    """A live Space with the host (440 Hz) and an invited guest (660 Hz) heard on stage."""
    host = await live_host(space)
    guest = Speaker(await space.invite("Guest"), ToneSource(660))
    await guest.join()
    async with httpx.AsyncClient(timeout=10) as client:

        async def guest_live() -> bool:
            seats = (await room(client, space))["stage"]
            return any(s["role"] == "speaker" and s["live"] for s in seats)  # type: ignore[union-attr,index]

        await wait_until(guest_live)
        seats = (await room(client, space))["stage"]
    await asyncio.sleep(1.0)  # a second of both voices in the mix
    guest_id = next(s["id"] for s in seats if s["role"] == "speaker")  # type: ignore[union-attr,index]
    return host, guest, str(guest_id)


async def test_counts_are_honest_under_duplicates_tabs_and_reconnects(server: Server) -> None:
    space = await server.create_space("counts")
    await space.start()
    async with httpx.AsyncClient(timeout=10) as client:
        tokens = [(await sign_in(client, space, f"L{i}"))[0] for i in range(25)]
        # Every listener heartbeats; some retry, some have a second tab (same session),
        # some reconnect (same session, new requests): 25 real people, whatever they do.
        beats = tokens + tokens[:10] + tokens[5:15] + tokens[20:]
        for token in beats:
            resp = await client.post(
                space.api("/heartbeat"), headers={"Authorization": f"Bearer {token}"}
            )
            assert resp.status_code == 200, resp.text
        snap = await room(client, space)
        metrics = await scrape_async(client, server.control_url, server.admin_key)
    assert snap["listening_now"] == 25
    assert snap["total_tuned_in"] == 25
    assert f'townhall_listening_now{{space="{space.id}"}} 25.0' in metrics
    await space.end()


async def test_listener_cannot_publish_until_brought_up_and_mic_checked(server: Server) -> None:
    space = await server.create_space("bring up")
    host = await live_host(space)
    async with httpx.AsyncClient(timeout=10) as client:
        token, session = await sign_in(client, space, "Caller")
        caller = Speaker(StageLink(server.control_url, space.id, token), ToneSource(660))
        with pytest.raises(RuntimeError, match="403"):
            await caller.join()
        await caller.pc.close()

        assert (await command(client, space, token, "raise_hand")).status_code == 200
        snap = await room(client, space)
        assert [h["id"] for h in snap["hand_queue"]] == [session]  # type: ignore[index,union-attr]
        assert (
            await command(client, space, space.host_token, "invite", session)
        ).status_code == 200
        assert (await command(client, space, token, "accept_invitation")).status_code == 200

        caller = Speaker(StageLink(server.control_url, space.id, token), ToneSource(660))
        await caller.join()

        async def caller_live() -> bool:
            seats = (await room(client, space))["stage"]
            return any(s["id"] == session and s["live"] for s in seats)  # type: ignore[union-attr,index]

        await wait_until(caller_live)
        since = time.monotonic() + 0.5
        await asyncio.sleep(2.0)
    heard = heard_after(host, since)
    assert amplitude_at(heard, 660) > PRESENT, "the caller brought up was never heard"
    assert amplitude_at(heard, 440) < ABSENT, "the host hears their own voice"
    program = decode(bytes((await listen_ogg(space.ogg_url, 2.5)).data))
    assert amplitude_at(program[-48_000:], 660) > PRESENT
    assert amplitude_at(program[-48_000:], 440) > PRESENT
    await caller.leave()
    await host.leave()
    await space.end()


async def test_demoted_speaker_leaves_the_program_within_a_second(server: Server) -> None:
    space = await server.create_space("demote")
    host, guest, guest_id = await host_and_guest(space)
    async with httpx.AsyncClient(timeout=10) as client:
        assert amplitude_at(heard_after(host, time.monotonic() - 0.8), 660) > PRESENT
        demoted_at = time.monotonic()
        resp = await command(client, space, space.host_token, "move_to_audience", guest_id)
        assert resp.status_code == 200, resp.text
        await asyncio.sleep(2.5)
    # WebRTC adds well under 300 ms; everything the host hears a second after the
    # command is program without the guest.
    after = heard_after(host, demoted_at + 1.0)
    assert len(after) > FRAME_SAMPLES * 50
    assert amplitude_at(after, 660) < ABSENT, "a demoted speaker was still in the mix after 1 s"
    await guest.leave()
    await host.leave()
    await space.end()


async def test_mute_is_heard_and_only_the_speaker_unmutes_themselves(server: Server) -> None:
    space = await server.create_space("mute")
    host, guest, guest_id = await host_and_guest(space)
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await command(client, space, space.host_token, "mute", guest_id)).status_code == 200
        muted_at = time.monotonic()
        await asyncio.sleep(2.0)
        assert amplitude_at(heard_after(host, muted_at + 0.5), 660) < ABSENT
        refused = await command(client, space, space.host_token, "unmute", guest_id)
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        unmuted = await client.post(
            space.api("/commands"),
            json={"command": "unmute", "target": guest_id},
            # The guest's own client: its link answers only to the key that claimed it.
            headers={
                "Authorization": f"Bearer {guest.link.token}",
                "X-Townhall-Holder": guest.holder,
            },
        )
        assert unmuted.status_code == 200, unmuted.text
        unmuted_at = time.monotonic()
        await asyncio.sleep(1.5)
    assert amplitude_at(heard_after(host, unmuted_at + 0.5), 660) > PRESENT
    await guest.leave()
    await host.leave()
    await space.end()


async def test_dead_microphone_is_shown_to_the_host(server: Server) -> None:
    space = await server.create_space("dead mic")
    host = await live_host(space)
    source = SwitchableTone(660)
    guest = Speaker(await space.invite("Guest"), source)
    await guest.join()
    async with httpx.AsyncClient(timeout=10) as client:

        async def guest_status() -> dict[str, object] | None:
            # None until the stage's next status report lists the guest who just joined.
            resp = await client.get(space.api("/stage"), headers=space.host_headers())
            members = resp.json()["members"]
            return next((m for m in members if m["name"] == "Guest"), None)

        async def alive() -> bool:
            status = await guest_status()
            return status is not None and status["dead_mic"] is False

        async def dead() -> bool:
            status = await guest_status()
            return status is not None and status["dead_mic"] is True

        await wait_until(alive)
        source.on = False
        died_at = time.monotonic()
        await wait_until(dead, timeout_s=6.0)
        assert time.monotonic() - died_at < 4.5
    await guest.leave()
    await host.leave()
    await space.end()


async def test_removed_listener_is_blocked(server: Server) -> None:
    space = await server.create_space("remove")
    await space.start()
    async with httpx.AsyncClient(timeout=10) as client:
        token, session = await sign_in(client, space, "Troll")
        assert (await command(client, space, token, "raise_hand")).status_code == 200
        assert (
            await command(client, space, space.host_token, "remove", session)
        ).status_code == 200
        again = await command(client, space, token, "raise_hand")
        assert again.status_code == 403 and "removed" in again.json()["detail"]
        react = await client.post(
            space.api("/reactions"),
            json={"emoji": "🔥"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert react.status_code == 403
    await space.end()


async def test_listener_events_are_coalesced(server: Server) -> None:
    space = await server.create_space("events")
    await space.start()
    events_url = f"{server.audience_url}/events/{space.id}"
    received: list[tuple[float, str]] = []

    async def read_events() -> None:
        async with (
            httpx.AsyncClient(timeout=None) as client,
            client.stream("GET", events_url) as resp,
        ):
            assert resp.headers["content-type"] == "text/event-stream"
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    received.append((time.monotonic(), line[6:]))

    reader = asyncio.create_task(read_events())
    async with httpx.AsyncClient(timeout=10) as client:
        tokens = [(await sign_in(client, space, f"Fan{i}"))[0] for i in range(10)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        for _ in range(6):  # 60 reactions in about a second
            for token in tokens:
                await client.post(
                    space.api("/reactions"),
                    json={"emoji": "👏"},
                    headers={"Authorization": f"Bearer {token}"},
                )
        spent = time.monotonic() - started
        await asyncio.sleep(1.0)
    reader.cancel()
    during = [text for at, text in received if at >= started]
    assert '"👏":60' in during[-1], during[-1]
    # Coalesced: at most a few updates per second, not one per reaction.
    assert len(during) <= 5 * (spent + 1.5), (
        f"{len(during)} updates for 60 reactions in {spent:.1f}s"
    )
    await space.end()


async def test_stream_listeners_are_counted_once_per_session(server: Server) -> None:
    """Real Ogg listeners: 3 web players (one with two tabs, one reconnecting) and 2
    anonymous players (VLC-like) are 5 people, and leaving takes them off 'now'."""
    space = await server.create_space("stream counts")
    host = await live_host(space)
    await space.wait_program()

    async def hold(url: str, seconds: float) -> None:
        await listen_ogg(url, seconds)

    async with httpx.AsyncClient(timeout=10) as client:
        # wait_program() polled the playlist: that poll is one HLS session already.
        before = await room(client, space)
        sids = [(await sign_in(client, space, f"P{i}"))[1] for i in range(3)]
        urls = [
            f"{space.ogg_url}?sid={sids[0]}",
            f"{space.ogg_url}?sid={sids[0]}",  # two tabs
            f"{space.ogg_url}?sid={sids[1]}",
            f"{space.ogg_url}?sid={sids[2]}",
            space.ogg_url,
            space.ogg_url,
        ]  # two anonymous players
        reconnect = asyncio.create_task(hold(f"{space.ogg_url}?sid={sids[1]}", 1.0))
        holders = [asyncio.create_task(hold(u, 4.0)) for u in urls]
        await asyncio.sleep(2.5)
        during = await room(client, space)
        await asyncio.gather(*holders, reconnect)
        await asyncio.sleep(0.5)
        after = await room(client, space)
    base_now, base_total = before["listening_now"], before["total_tuned_in"]
    assert during["listening_now"] == base_now + 5, (before, during)
    assert after["total_tuned_in"] == base_total + 5
    # Web-player sessions stay "listening" until their heartbeat lapses; the anonymous
    # stream sessions end with their connection.
    assert after["listening_now"] == base_now + 3
    await host.leave()
    await space.end()


# Who may do what with invitation links, by the token's role ("revoked": a link the
# host revoked). Status codes of a real server; written out by hand from the rules.
LINK_MATRIX = """
                  host  cohost  speaker  listener  revoked
list_links        200   200     403      403       401
invite_speaker    201   201     403      403       401
invite_cohost     201   403     403      403       401
reissue           200   403     403      403       401
revoke            200   403     403      403       401
"""


async def test_the_link_rules_by_role(server: Server) -> None:
    space = await server.create_space("link matrix")
    await space.start()
    header, *rows = [line.split() for line in LINK_MATRIX.strip().splitlines()]
    async with httpx.AsyncClient(timeout=10) as client:

        async def link_for(role: str) -> tuple[str, str]:
            resp = await client.post(
                space.api("/invite"), json={"role": role, "name": role},
                headers=space.host_headers(),
            )  # fmt: skip
            assert resp.status_code == 201, resp.text
            token = resp.json()["token"]
            return token, str(jwt.decode(token, options={"verify_signature": False})["sub"])

        tokens = {"host": space.host_token}
        tokens["cohost"], _ = await link_for("cohost")
        tokens["speaker"], _ = await link_for("speaker")
        tokens["listener"], _ = await sign_in(client, space, "Lee")
        tokens["revoked"], revoked_id = await link_for("speaker")
        target_token, target = await link_for("speaker")
        assert revoked_id and target and target_token
        resp = await client.post(
            space.api(f"/links/{revoked_id}/revoke"), headers=space.host_headers()
        )
        assert resp.status_code == 200, resp.text

        for action, *cells in rows:
            for column, cell in zip(header, cells, strict=True):
                auth = {"Authorization": f"Bearer {tokens[column]}"}
                if action == "list_links":
                    resp = await client.get(space.api("/links"), headers=auth)
                elif action.startswith("invite_"):
                    body = {"role": action.removeprefix("invite_"), "name": "N"}
                    resp = await client.post(space.api("/invite"), json=body, headers=auth)
                else:
                    # Reissue before revoke: the host's reissue leaves the target's link working.
                    resp = await client.post(space.api(f"/links/{target}/{action}"), headers=auth)
                assert resp.status_code == int(cell), (action, column, resp.text)
                assert set(resp.json()) >= ({"error", "detail"} if int(cell) >= 400 else set())
    await space.end()
