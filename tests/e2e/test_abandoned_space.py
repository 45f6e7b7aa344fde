"""A Space nobody is left in ends by itself, on a real server with short limits.

``room.abandon_warning_s`` 3 s and ``room.abandon_end_s`` 12 s. The host (a 440 Hz aiortc
peer) is on the air, then closes the connection: the seat shows ``connected: false``,
the public snapshot ``reconnecting: true`` within the warning time plus slack, and the
Space ends by itself after the end time, with a sealed replay that PyAV decodes to the
host's tone. A stage process killed (-9) and restarted meanwhile does not end a Space
whose speaker comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from benchmarks.harness.audio import SAMPLE_RATE_HZ, decode, peak_frequency
from benchmarks.harness.processes import kill9, process_table
from benchmarks.harness.server import Server, Space, start_server
from townhall.peers.links import parse_stage_link
from townhall.peers.sources import ToneSource
from townhall.peers.speak import Speaker

pytestmark = pytest.mark.e2e

WARNING_S = 3.0
END_S = 12.0
# Stage statuses every 0.1 s, the control monitor every 0.25 s, and a busy machine.
SLACK_S = 2.0


@pytest.fixture(scope="module")
def short_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("townhall-abandon"),
        ["--set", f"room.abandon_warning_s={WARNING_S}", "--set", f"room.abandon_end_s={END_S}"],
    )
    yield srv
    srv.stop()
    assert not srv.tracebacks(), "the server logged tracebacks:\n" + srv.output()


async def described(space: Space) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(space.api())
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


async def until(
    space: Space, holds: Callable[[dict[str, object]], bool], timeout_s: float
) -> tuple[float, dict[str, object]]:
    """Seconds until the Space's description satisfies ``holds``, and that description."""
    t0 = time.monotonic()
    while True:
        body = await described(space)
        if holds(body):
            return time.monotonic() - t0, body
        assert time.monotonic() - t0 < timeout_s, f"never held within {timeout_s} s: {body}"
        await asyncio.sleep(0.1)


def room_of(body: dict[str, object]) -> dict[str, object]:
    room = body["room"]
    assert isinstance(room, dict)
    return room


def host_seat(body: dict[str, object]) -> dict[str, object]:
    stage = room_of(body)["stage"]
    assert isinstance(stage, list) and stage, body
    seat: dict[str, object] = stage[0]
    return seat


async def test_a_host_who_disconnects_is_shown_reconnecting_then_the_space_ends_sealed(
    short_server: Server,
) -> None:
    space = await short_server.create_space("abandoned")
    await space.start()
    host = Speaker(parse_stage_link(space.host_link), ToneSource(440))
    await host.join()
    try:
        await space.wait_program()
        await until(space, lambda b: host_seat(b)["live"] is True, 10)
        on_air = await described(space)
        assert host_seat(on_air)["connected"] is True
        assert room_of(on_air)["reconnecting"] is False
        await asyncio.sleep(WARNING_S + 1)  # on the air, heard: never "reconnecting"
        assert room_of(await described(space))["reconnecting"] is False
    finally:
        await host.leave()
    left = time.monotonic()

    gone_s, _ = await until(space, lambda b: host_seat(b)["connected"] is False, 10)
    warned_s, warned = await until(
        space, lambda b: room_of(b)["reconnecting"] is True, WARNING_S + SLACK_S + gone_s
    )
    assert warned["state"] == "live"
    _, ended = await until(space, lambda b: b["state"] == "ended", END_S + 2 * SLACK_S)
    ended_after_s = time.monotonic() - left
    print(
        f"\nhost gone from the seat after {gone_s:.1f} s; reconnecting after "
        f"{gone_s + warned_s:.1f} s; ended after {ended_after_s:.1f} s "
        f"(warning {WARNING_S} s, end {END_S} s)"
    )
    assert ended_after_s >= END_S
    assert ended["replay"] == {"ogg": space.replay_ogg_url, "hls": space.replay_hls_url}

    async with httpx.AsyncClient(timeout=10) as client:
        deadline = time.monotonic() + 10
        while "#EXT-X-ENDLIST" not in (playlist := await client.get(space.replay_hls_url)).text:
            assert time.monotonic() < deadline, playlist.text
            await asyncio.sleep(0.2)
        ogg = await client.get(space.replay_ogg_url)
        live = await client.get(space.ogg_url)
    assert ogg.status_code == 200, ogg.text
    assert live.status_code == 404, live.text  # the live stream is over
    audio = decode(ogg.content)  # PyAV decodes the sealed file end to end
    print(f"replay: {len(audio) / SAMPLE_RATE_HZ:.1f} s, peak {peak_frequency(audio):.0f} Hz")
    assert len(audio) > 2 * SAMPLE_RATE_HZ
    assert abs(peak_frequency(audio) - 440) < 5


async def test_a_restarting_stage_does_not_end_a_space_whose_speaker_comes_back(
    short_server: Server,
) -> None:
    space = await short_server.create_space("stage restart")
    await space.start()
    host = Speaker(parse_stage_link(space.host_link), ToneSource(440))
    await host.join()
    try:
        await space.wait_program()
        await until(space, lambda b: host_seat(b)["live"] is True, 10)
        table = process_table(short_server.control_url) or []
        stage = next(p for p in table if p.name == f"stage:{space.id}")
        kill9(stage.pid)
        # The speaker rejoins the new stage on its own and passes a fresh mic check.
        back_s, _ = await until(
            space,
            lambda b: host_seat(b)["live"] is True and host_seat(b)["connected"] is True,
            END_S,
        )
        await asyncio.sleep(END_S + SLACK_S - back_s)
        body = await described(space)
        print(f"\nback on the new stage after {back_s:.1f} s; rejoins {host.rejoins}")
        assert body["state"] == "live" and room_of(body)["reconnecting"] is False
        assert host.rejoins >= 1
    finally:
        await host.leave()
    await space.end()


@pytest.mark.browser
def test_in_chromium_a_host_who_closes_the_tab_is_reconnecting_then_the_space_ends(
    short_server: Server,
) -> None:
    """The host goes live from the green room in Chromium (fake 440 Hz microphone) and
    closes the tab; a listener's page says the host is reconnecting, then shows the
    ended Space with its replay, which decodes to the host's tone."""
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import expect, sync_playwright

    from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, PHONE, chromium_args, tone_wav

    space = short_server.new_space("Left alone", description="The host closes the tab.")
    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=15_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(tone_wav(440))
        )
        try:
            host = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            listener = browser.new_context(viewport=PHONE).new_page()
            errors: list[str] = []
            for p in (host, listener):
                p.on("pageerror", lambda e: errors.append(str(e)))
            host.goto(space["host_link"])
            host.locator("#green-room-open").click()
            expect(host.locator("body")).to_have_attribute("data-mic", "checked")
            host.locator("#green-room-live").click()
            expect(host.locator("body")).to_have_attribute("data-mic", "live")
            listener.goto(space["listen_link"])
            expect(listener.locator("body")).to_have_attribute("data-state", "live")
            expect(listener.locator("body")).to_have_attribute("data-reconnecting", "0")
            time.sleep(2.0)  # some program for the replay

            host.close()
            closed = time.monotonic()
            expect(listener.locator("body")).to_have_attribute(
                "data-reconnecting", "1", timeout=(WARNING_S + SLACK_S + 3) * 1000
            )
            warned_s = time.monotonic() - closed
            expect(listener.locator("#state")).to_contain_text("the host is reconnecting")
            expect(listener.locator("#stage")).to_contain_text("disconnected")
            listener.screenshot(path=str(ARTIFACTS / "abandoned-reconnecting-390.png"))
            expect(listener.locator("body")).to_have_attribute(
                "data-state", "ended", timeout=(END_S + 2 * SLACK_S) * 1000
            )
            ended_s = time.monotonic() - closed
            expect(listener.locator("#replay-card")).to_be_visible()
            listener.set_viewport_size({"width": 1280, "height": 800})
            listener.screenshot(path=str(ARTIFACTS / "abandoned-ended-1280.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    print(f"\ntab closed: reconnecting after {warned_s:.1f} s, ended after {ended_s:.1f} s")
    assert ended_s >= END_S - 1.0
    replay = httpx.get(f"{short_server.audience_url}/replay/{space['id']}.ogg", timeout=10)
    assert replay.status_code == 200, replay.text
    audio = decode(replay.content)
    assert len(audio) > 1.5 * SAMPLE_RATE_HZ
    assert abs(peak_frequency(audio) - 440) < 5
