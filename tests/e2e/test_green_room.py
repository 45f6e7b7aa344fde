"""The green room on a real server: the people on stage meet before the audience hears.

The host (440 Hz) and two speakers (660 Hz, and 880 Hz who leaves before the start) join
the stage of a scheduled Space with aiortc peers. Judged by FFT: each hears the others
and not themselves; a listener holding the Ogg URL gets no audio bytes until Go live,
then both tones; Go live with a speaker gone is refused (409 naming them) until forced;
the replay starts at Go live (no 880 Hz from the green room anywhere in it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from benchmarks.harness.audio import SAMPLE_RATE_HZ, amplitude_at, decode, pcm16_to_float
from benchmarks.harness.server import Server, Space
from townhall.peers.links import parse_stage_link
from townhall.peers.sources import ToneSource
from townhall.peers.speak import Speaker

pytestmark = pytest.mark.e2e

TONE_MIN = 0.05  # a 0.3 full-scale tone measures about 0.3 after Opus
QUIET_MAX = 0.01
MIC_CHECK_TIMEOUT_S = 10.0


@dataclass
class OggArrivals:
    """What a player holding the live Ogg URL receives, with arrival times; it asks
    again (0.3 s later) whenever the server answers anything but a stream."""

    url: str
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def run(self, until: float) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=1.0)) as client:
            while time.monotonic() < until:
                with contextlib.suppress(httpx.HTTPError):
                    async with client.stream("GET", self.url) as resp:
                        self.statuses.append(resp.status_code)
                        if resp.status_code == 200:
                            async for chunk in resp.aiter_bytes():
                                self.chunks.append((time.monotonic(), chunk))
                                if time.monotonic() >= until:
                                    return
                await asyncio.sleep(0.3)

    def before(self, t: float) -> int:
        return sum(len(c) for at, c in self.chunks if at < t)

    def data(self) -> bytes:
        return b"".join(c for _, c in self.chunks)


async def post(space: Space, path: str, body: dict[str, object] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(space.api(path), json=body, headers=space.host_headers())


async def host_room(space: Space) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(space.api("/room"), headers=space.host_headers())
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


async def public_room(space: Space) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(space.api())
    assert resp.status_code == 200, resp.text
    room: dict[str, object] = resp.json()["room"]
    return room


async def cy_gone_from_the_stage(space: Space) -> None:
    deadline = time.monotonic() + MIC_CHECK_TIMEOUT_S
    while True:
        stage = (await host_room(space))["stage"]
        assert isinstance(stage, list)
        if not any(seat["name"] == "Cy" and seat["connected"] for seat in stage):
            return
        assert time.monotonic() < deadline, stage
        await asyncio.sleep(0.1)


async def mic_checks_passed(space: Space, count: int) -> None:
    deadline = time.monotonic() + MIC_CHECK_TIMEOUT_S
    while True:
        stage = (await host_room(space))["stage"]
        assert isinstance(stage, list)
        if sum(1 for seat in stage if seat["live"]) >= count:
            return
        assert time.monotonic() < deadline, f"mic checks never passed: {stage}"
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def on_stage(*speakers: Speaker) -> AsyncIterator[None]:
    for s in speakers:
        await s.join()
    try:
        yield
    finally:
        await asyncio.gather(*(s.leave() for s in speakers), return_exceptions=True)


async def test_green_room_speakers_hear_each_other_and_the_audience_only_after_go_live(
    server: Server,
) -> None:
    space = await server.create_space("green room")
    opened = await post(space, "/green-room")
    assert opened.status_code == 200, opened.text
    assert opened.json()["green_room"] is True and opened.json()["state"] == "scheduled"
    public = await public_room(space)
    assert public["green_room"] is True and public["state"] == "scheduled"

    # Nobody connected yet: Go live names the host's silent seat and stays scheduled.
    refused = await post(space, "/start")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "dead_microphones"
    assert [d["reason"] for d in refused.json()["dead_mics"]] == ["not connected to the stage"]

    host = Speaker(parse_stage_link(space.host_link), ToneSource(440))
    bea = Speaker(await space.invite("Bea"), ToneSource(660))
    cy = Speaker(await space.invite("Cy"), ToneSource(880))
    listener = OggArrivals(space.ogg_url)
    async with on_stage(host, bea):
        await cy.join()
        await mic_checks_passed(space, 3)
        listening = asyncio.create_task(listener.run(until=time.monotonic() + 30))
        since = time.monotonic() + 0.3
        await asyncio.sleep(2.0)
        heard_host = pcm16_to_float(host.heard.pcm(since))
        heard_bea = pcm16_to_float(bea.heard.pcm(since))
        assert len(heard_host) > SAMPLE_RATE_HZ and len(heard_bea) > SAMPLE_RATE_HZ
        host_own, host_bea = amplitude_at(heard_host, 440), amplitude_at(heard_host, 660)
        bea_own, bea_host = amplitude_at(heard_bea, 660), amplitude_at(heard_bea, 440)
        print(
            f"\ngreen room: host hears 660 at {host_bea:.3f} (own {host_own:.5f}), "
            f"880 at {amplitude_at(heard_host, 880):.3f}; Bea hears 440 at {bea_host:.3f} "
            f"(own {bea_own:.5f})"
        )
        assert host_bea > TONE_MIN and bea_host > TONE_MIN
        assert amplitude_at(heard_host, 880) > TONE_MIN  # Cy is in the green room too
        # Own tone at least 34 dB under the other one: removed, not just attenuated.
        assert host_own < host_bea / 50 and bea_own < bea_host / 50

        # Cy leaves; Go live names Cy (gone or silent) until the host forces it.
        await cy.leave()
        # Until the stage notices the closed connection, Cy's microphone was heard a
        # moment ago and Go live would rightly let it pass.
        await cy_gone_from_the_stage(space)
        deadline = time.monotonic() + 10
        while True:
            refused = await post(space, "/start")
            assert refused.status_code == 409, refused.text
            dead = refused.json()["dead_mics"]
            if [d["name"] for d in dead] == ["Cy"]:
                break
            assert time.monotonic() < deadline, dead
            await asyncio.sleep(0.3)
        assert listener.statuses and listener.before(time.monotonic()) == 0, listener.statuses
        went_live = await post(space, "/start", {"force": True})
        live_at = time.monotonic()
        assert went_live.status_code == 200, went_live.text
        assert went_live.json()["state"] == "live"
        assert (await public_room(space))["green_room"] is False

        await asyncio.sleep(5.0)
        listener_bytes_before_live = listener.before(live_at)
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    ended = await space.end()
    assert ended["state"] == "ended"

    print(f"listener statuses before Go live: {sorted(set(listener.statuses))}")
    assert listener_bytes_before_live == 0
    program = decode(listener.data())
    assert len(program) > 2 * SAMPLE_RATE_HZ, len(program)
    assert amplitude_at(program, 440) > TONE_MIN and amplitude_at(program, 660) > TONE_MIN
    assert amplitude_at(program, 880) < QUIET_MAX

    replay = await sealed_replay(space)
    audio = decode(replay)
    live_s = len(audio) / SAMPLE_RATE_HZ
    start = audio[:SAMPLE_RATE_HZ]
    print(
        f"replay {live_s:.1f} s; its first second: 440 at {amplitude_at(start, 440):.3f}, "
        f"660 at {amplitude_at(start, 660):.3f}, 880 at {amplitude_at(start, 880):.4f}"
    )
    # The recording starts at Go live: no green-room audio (Cy's 880 Hz) anywhere, the
    # two speakers from its first second, and no longer than the time on the air.
    assert amplitude_at(audio, 880) < QUIET_MAX
    assert amplitude_at(start, 440) > TONE_MIN and amplitude_at(start, 660) > TONE_MIN
    assert live_s < time.monotonic() - live_at + 1.0


async def sealed_replay(space: Space, timeout_s: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            playlist = await client.get(space.replay_hls_url)
            if playlist.status_code == 200 and "#EXT-X-ENDLIST" in playlist.text:
                ogg = await client.get(space.replay_ogg_url)
                assert ogg.status_code == 200, ogg.text
                return ogg.content
            assert time.monotonic() < deadline, f"the replay was never sealed: {playlist.text}"
            await asyncio.sleep(0.2)


async def test_go_live_from_the_green_room_without_force_when_every_mic_is_heard(
    server: Server,
) -> None:
    space = await server.create_space("green room, all heard")
    assert (await post(space, "/green-room")).status_code == 200
    host = Speaker(parse_stage_link(space.host_link), ToneSource(440))
    async with on_stage(host):
        await mic_checks_passed(space, 1)
        went_live = await post(space, "/start")
        assert went_live.status_code == 200, went_live.text
        await space.wait_program()
        # The mic check passed in the green room stands: the host is heard at once.
        async with httpx.AsyncClient(timeout=10) as client:
            seat = (await client.get(space.api("/room"), headers=space.host_headers())).json()
        assert seat["stage"][0]["live"] is True and seat["stage"][0]["connected"] is True
    await space.end()


# -- in Chromium: the host's page, a speaker's page ------------------------------------


INBOUND_LEVEL_JS = """async () => {
    const pc = window.townhall.mic.pc;
    if (!pc) return 0;
    let level = 0;
    for (const r of (await pc.getStats()).values())
        if (r.type === "inbound-rtp" && r.kind === "audio")
            level = Math.max(level, r.audioLevel || 0);
    return level;
}"""


def ogg_bytes_within(url: str, seconds: float) -> int:
    """Bytes a player holding the live Ogg URL gets in ``seconds`` (an answer other than
    a stream is none)."""
    got = 0
    timeout = httpx.Timeout(5.0, read=seconds)
    with (
        contextlib.suppress(httpx.ReadTimeout),
        httpx.stream("GET", url, timeout=timeout) as resp,
    ):
        if resp.status_code != 200:
            return 0
        for chunk in resp.iter_bytes():
            got += len(chunk)
    return got


@pytest.mark.browser
def test_green_room_in_chromium_mic_checks_then_go_live_confirms_a_dead_mic(
    server: Server,
) -> None:
    """The host opens the green room, a speaker joins from a phone-sized page; both pass
    the mic check and hear each other while the Ogg URL gives no audio; the speaker
    closes the tab; Go live asks the host to confirm, naming them; forced, the program
    carries the host's 440 Hz and not the speaker's 660 Hz."""
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import expect, sync_playwright

    from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, PHONE, Capture, chromium_args, tone_wav

    space = server.new_space("Green room in Chromium", description="Mic checks before the start.")
    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=15_000)
    with sync_playwright() as pw:
        host_browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(tone_wav(440))
        )
        guest_browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(tone_wav(660))
        )
        try:
            host = host_browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            guest = guest_browser.new_context(viewport=PHONE).new_page()
            errors: list[str] = []
            for p in (host, guest):
                p.on("pageerror", lambda e: errors.append(str(e)))

            host.goto(space["host_link"])
            expect(host.locator("#green-room-open")).to_be_visible()
            expect(host.locator("#start")).to_be_hidden()  # the host starts via the green room
            host.screenshot(path=str(ARTIFACTS / "green-room-closed-1280.png"), full_page=True)
            host.locator("#green-room-open").click()
            expect(host.locator("body")).to_have_attribute("data-green-room", "open")
            expect(host.locator("#green-room-live")).to_be_visible()
            expect(host.locator("#start")).to_be_hidden()

            guest.goto(space["speaker_link"])
            expect(guest.locator("body")).to_have_attribute("data-green-room", "open")
            guest.locator("#connect").click()
            expect(guest.locator("body")).to_have_attribute("data-mic", "checked")
            expect(host.locator("body")).to_have_attribute("data-mic", "checked")
            expect(host.locator("#green-room-checks li[data-check=passed]")).to_have_count(2)
            expect(guest.locator("#state")).to_have_text("Scheduled")

            # Each hears the other (mix-minus arrives), the audience gets nothing.
            guest.wait_for_function(f"({INBOUND_LEVEL_JS})().then((l) => l > 0.02)")
            host.wait_for_function(f"({INBOUND_LEVEL_JS})().then((l) => l > 0.02)")
            assert ogg_bytes_within(space["audience"]["ogg"], 2.0) == 0
            host.screenshot(path=str(ARTIFACTS / "green-room-host-1280.png"), full_page=True)
            guest.screenshot(path=str(ARTIFACTS / "green-room-speaker-390.png"), full_page=True)

            # The speaker closes the tab: Go live names them and asks first.
            guest.close()
            expect(host.locator("#green-room-checks li[data-check=pending]")).to_have_count(1)
            host.locator("#green-room-live").click()
            confirm = host.locator("#green-room-confirm")
            expect(confirm).to_be_visible()
            expect(confirm).to_contain_text("Speaker")
            expect(host.locator("#green-room-force")).to_be_focused()
            expect(host.locator("#state")).to_have_text("Scheduled")
            host.screenshot(path=str(ARTIFACTS / "green-room-confirm-1280.png"), full_page=True)
            host.set_viewport_size(PHONE)
            host.screenshot(path=str(ARTIFACTS / "green-room-confirm-390.png"), full_page=True)
            width = host.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"the page scrolls sideways: {width} px"

            host.locator("#green-room-force").click()
            expect(host.locator("#state")).to_have_text("● Live")
            expect(host.locator("#green-room")).to_be_hidden()
            expect(host.locator("body")).to_have_attribute("data-mic", "live")
            a440, a660 = Capture(space["audience"]["ogg"], 3.0).result()
            host.screenshot(path=str(ARTIFACTS / "green-room-live-390.png"), full_page=True)
            assert not errors, errors
        finally:
            guest_browser.close()
            host_browser.close()
    print(f"\nafter Go live: 440 at {a440:.3f}, 660 at {a660:.3f}")
    assert a440 > TONE_MIN and a660 < QUIET_MAX
    httpx.post(
        f"{server.control_url}/api/spaces/{space['id']}/end",
        headers={"Authorization": f"Bearer {space['host_token']}"},
    )
