"""Identity that sticks, against a real ``townhall serve`` with real WebRTC speaker bots.

Each test is an attack that worked on the server before links were single-holder and
revocable and moderation bound the person: a demoted speaker re-promoting themselves by
leaving and rejoining, a second opener of a link silently replacing the first, a co-host
making co-hosts, a revoked link still working, a week-ahead Space's links dying after a
day, a removed co-host's socket still getting the room. What people hear is judged by
FFT (the host's mix-minus); sockets by their close code and time.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import jwt
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from benchmarks.harness.audio import amplitude_at, pcm16_to_float
from benchmarks.harness.server import Server, Space
from townhall.peers.links import StageLink, parse_stage_link
from townhall.peers.sources import ToneSource
from townhall.peers.speak import Speaker, StageRefused

pytestmark = pytest.mark.e2e

PRESENT = 0.05  # full-scale amplitude that counts as "the tone is there"
ABSENT = 0.01
HOST_HZ, GUEST_HZ = 440, 660
TIMEOUT_S = 10.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def heard_after(speaker: Speaker, since: float) -> np.ndarray:
    return pcm16_to_float(speaker.heard.pcm(since))


async def stage_seats(client: httpx.AsyncClient, space: Space) -> list[dict[str, object]]:
    resp = await client.get(space.api("/room"), headers=space.host_headers())
    assert resp.status_code == 200, resp.text
    seats: list[dict[str, object]] = resp.json()["stage"]
    return seats


async def wait_live(client: httpx.AsyncClient, space: Space, pid: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not any(s["id"] == pid and s["live"] for s in await stage_seats(client, space)):
        assert time.monotonic() < deadline, f"{pid} never passed the mic check"
        await asyncio.sleep(0.1)


def pid_of(link: StageLink) -> str:
    return str(jwt.decode(link.token, options={"verify_signature": False})["sub"])


async def on_air_with_guest(space: Space) -> tuple[Speaker, Speaker, StageLink]:
    """The host (440 Hz) and an invited guest (660 Hz), both heard."""
    host = Speaker(
        StageLink(space.server.control_url, space.id, space.host_token), ToneSource(HOST_HZ)
    )
    await space.start()
    await host.join()
    link = await space.invite("Guest")
    guest = Speaker(link, ToneSource(GUEST_HZ))
    await guest.join()
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        await wait_live(client, space, pid_of(link))
    await asyncio.sleep(1.0)
    return host, guest, link


async def post(
    client: httpx.AsyncClient,
    space: Space,
    path: str,
    token: str,
    body: object = None,
    holder: str = "",
) -> httpx.Response:
    headers = {**bearer(token), **({"X-Townhall-Holder": holder} if holder else {})}
    return await client.post(space.api(path), json=body, headers=headers)


async def test_a_demoted_speaker_who_leaves_and_rejoins_stays_out_of_the_program(
    server: Server,
) -> None:
    space = await server.create_space("demote, leave, rejoin")
    host, guest, link = await on_air_with_guest(space)
    pid = pid_of(link)
    assert amplitude_at(heard_after(host, time.monotonic() - 0.8), GUEST_HZ) > PRESENT
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        demoted = await post(
            client,
            space,
            "/commands",
            space.host_token,
            {"command": "move_to_audience", "target": pid},
        )
        assert demoted.status_code == 200, demoted.text
        await guest.leave()
        left = await post(
            client, space, "/commands", link.token, {"command": "leave"}, guest.holder
        )
        assert left.status_code == 200, left.text
        # The same client (same holder key) runs the speaker again with the same link.
        again = Speaker(link, ToneSource(GUEST_HZ))
        again.holder = guest.holder
        with pytest.raises(StageRefused) as refused:
            await again.join()
        await again.leave()
        assert refused.value.status == 403, refused.value
        rejoined_at = time.monotonic()
        await asyncio.sleep(2.0)
        seats = await stage_seats(client, space)
        members = (await client.get(space.api("/stage"), headers=space.host_headers())).json()
    assert all(s["id"] != pid for s in seats), seats
    assert all(m["id"] != pid for m in members["members"]), members
    after = heard_after(host, rejoined_at)
    assert amplitude_at(after, GUEST_HZ) < ABSENT, "the demoted speaker is back in the mix"
    await host.leave()
    await space.end()


async def test_a_second_opener_of_a_link_is_refused_not_swapped_in(server: Server) -> None:
    space = await server.create_space("second opener")
    host, guest, link = await on_air_with_guest(space)
    intruder = Speaker(link, ToneSource(880))
    tried_at = time.monotonic()
    with pytest.raises(StageRefused) as refused:
        await intruder.join()
    await intruder.leave()
    assert refused.value.status == 409 and refused.value.code == "link_in_use"
    assert "this link is already in use; ask the host for a new one" in str(refused.value)
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        for key in ("", "intruder"):  # nor can the intruder act as the person
            left = await post(client, space, "/commands", link.token, {"command": "leave"}, key)
            assert left.status_code == 409 and left.json()["error"] == "link_in_use", left.text
    await asyncio.sleep(1.5)
    heard = heard_after(host, tried_at + 0.3)
    assert amplitude_at(heard, GUEST_HZ) > PRESENT, "the first holder lost the stage"
    assert amplitude_at(heard, 880) < ABSENT, "the second opener reached the program"
    await guest.leave()
    await host.leave()
    await space.end()


async def test_a_cohost_cannot_make_a_cohost(server: Server) -> None:
    space = await server.create_space("cohost makes cohost")
    await space.start()
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        made = await post(
            client, space, "/invite", space.host_token, {"role": "cohost", "name": "Cora"}
        )
        assert made.status_code == 201, made.text
        cohost = made.json()["token"]
        seen = await client.get(space.api("/room"), headers=bearer(cohost))
        assert seen.status_code == 200  # a working co-host
        resp = await post(client, space, "/invite", cohost, {"role": "cohost", "name": "Mal"})
        assert resp.status_code == 403, resp.text
        assert resp.json() == {
            "error": "forbidden",
            "detail": "a cohost cannot issue a cohost link",
        }
        speaker = await post(client, space, "/invite", cohost, {"role": "speaker", "name": "S"})
        assert speaker.status_code == 201, speaker.text
    await space.end()


async def test_a_revoked_link_is_refused_and_a_reissued_one_works(server: Server) -> None:
    space = await server.create_space("revoke and reissue")
    host, guest, link = await on_air_with_guest(space)
    pid = pid_of(link)
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        listed = (await client.get(space.api("/links"), headers=space.host_headers())).json()
        entry = next(k for k in listed["links"] if k["participant_id"] == pid)
        assert entry["claimed"] is True and entry["revoked"] is False

        reissued = await post(client, space, f"/links/{pid}/reissue", space.host_token)
        assert reissued.status_code == 200, reissued.text
        new_link = parse_stage_link(reissued.json()["link"])
        assert pid_of(new_link) == pid  # the same person
        cut_at = time.monotonic()
        old = await client.get(space.api("/room"), headers=bearer(link.token))
        assert old.status_code == 401 and "replaced" in old.json()["detail"]
        await guest.leave()
        await asyncio.sleep(1.5)
        assert amplitude_at(heard_after(host, cut_at + 0.5), GUEST_HZ) < ABSENT

        rightful = Speaker(new_link, ToneSource(GUEST_HZ))
        await rightful.join()
        await wait_live(client, space, pid)
        back_at = time.monotonic()
        await asyncio.sleep(1.5)
        assert amplitude_at(heard_after(host, back_at + 0.3), GUEST_HZ) > PRESENT

        revoked = await post(client, space, f"/links/{pid}/revoke", space.host_token)
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        for resp in (
            await client.get(space.api("/room"), headers=bearer(new_link.token)),
            await post(client, space, "/commands", new_link.token, {"command": "raise_hand"}),
        ):
            assert resp.status_code == 401, resp.text
            assert resp.json() == {
                "error": "unauthorized",
                "detail": "this link was revoked by the host",
            }
        refused = await post(
            client, space, f"/links/{pid}/revoke", new_link.token
        )  # the revoked person cannot undo it
        assert refused.status_code == 401
    await rightful.leave()
    await host.leave()
    await space.end()


async def test_a_week_ahead_spaces_tokens_outlive_a_day(server: Server) -> None:
    week_ahead = time.time() + 7 * 24 * 3600
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        resp = await client.post(
            f"{server.control_url}/api/spaces",
            json={"title": "next week", "scheduled_at": week_ahead},
            headers=bearer(server.admin_key),
        )
        assert resp.status_code == 201, resp.text
        made = resp.json()
        speaker = parse_stage_link(made["speaker_link"]).token
        invited = await client.post(
            f"{server.control_url}/api/spaces/{made['id']}/invite",
            json={"role": "speaker", "name": "Guest"},
            headers=bearer(made["host_token"]),
        )
        for token in (made["host_token"], speaker, invited.json()["token"]):
            exp = jwt.decode(token, options={"verify_signature": False})["exp"]
            assert exp >= week_ahead + 3600, "a token dies before the Space can run"
            assert exp > time.time() + 24 * 3600 + 60
        # Cancelled: the links are useless on stage, the public description stays.
        await client.post(
            f"{server.control_url}/api/spaces/{made['id']}/end", headers=bearer(made["host_token"])
        )
        offer = await client.post(
            f"{server.control_url}/api/spaces/{made['id']}/stage/offer",
            json={"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "offer"},
            headers={**bearer(speaker), "X-Townhall-Holder": "k"},
        )
        assert offer.status_code in (403, 409), offer.text
        public = await client.get(f"{server.control_url}/api/spaces/{made['id']}")
        assert public.status_code == 200 and public.json()["state"] == "ended"


async def test_a_removed_cohosts_socket_is_closed_within_a_second(server: Server) -> None:
    space = await server.create_space("removed cohost")
    await space.start()
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        made = await post(
            client, space, "/invite", space.host_token, {"role": "cohost", "name": "Cora"}
        )
        cohost = made.json()["token"]
        ws_url = space.api("/ws").replace("http", "ws", 1) + f"?token={cohost}&holder=cora"
        async with connect(ws_url, open_timeout=TIMEOUT_S) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            assert hello["type"] == "hello"
            removed_at = time.monotonic()
            resp = await post(
                client,
                space,
                "/commands",
                space.host_token,
                {"command": "remove", "target": hello["you"]},
            )
            assert resp.status_code == 200, resp.text
            snapshots, deadline = 0, removed_at + 3.0
            with pytest.raises(ConnectionClosed) as closed:
                while time.monotonic() < deadline:  # the meters alone arrive 4 times a second
                    message = json.loads(await asyncio.wait_for(ws.recv(), 3.0))
                    snapshots += message.get("type") == "room"
            closed_after_s = time.monotonic() - removed_at
    print(f"\nremoved co-host's socket closed {closed_after_s * 1000:.0f} ms after the command")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    assert closed_after_s < 1.0, f"the socket stayed open {closed_after_s:.2f} s"
    assert snapshots == 0, "a removed co-host's socket still got the room"
    await space.end()


def test_the_stage_page_holds_its_link_and_the_host_reissues_it(server: Server) -> None:
    """In Chromium: the speaker's page claims its link; the same link in another browser
    profile is refused with the reason; the host's page lists the link as in use and
    reissues it, which cuts the first page off."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian chromium is not installed")
    space = server.create_space_sync("links in the browser")
    space.start_sync()
    sync_api.expect.set_options(timeout=15_000)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--use-fake-ui-for-media-stream",
                  "--use-fake-device-for-media-stream", "--disable-background-networking"],
        )  # fmt: skip
        try:
            first = browser.new_context().new_page()
            first.goto(space.speaker_link)
            sync_api.expect(first.locator("body")).to_have_attribute("data-socket", "open")

            second = browser.new_context().new_page()  # another profile: another holder
            second.goto(space.speaker_link)
            sync_api.expect(second.locator("body")).to_have_attribute("data-socket", "refused")
            sync_api.expect(second.locator("#errors")).to_contain_text(
                "this link is already in use; ask the host for a new one"
            )
            # The first page's reload is the same holder: it gets back in.
            first.reload()
            sync_api.expect(first.locator("body")).to_have_attribute("data-socket", "open")

            host = browser.new_context().new_page()
            host.goto(space.host_link)
            row = host.locator("#links li", has_text="Speaker")
            sync_api.expect(row).to_have_attribute("data-state", "in use")
            row.get_by_role("button", name="Reissue").click()
            sync_api.expect(host.locator("#links-new")).to_contain_text("/speak#t=")
            sync_api.expect(first.locator("body")).to_have_attribute("data-socket", "refused")
            sync_api.expect(first.locator("#errors")).to_contain_text("replaced")
        finally:
            browser.close()
    space.end_sync()
