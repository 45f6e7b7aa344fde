"""Every page a person sees, in Debian's Chromium: endings, errors, the front page, the
calendar and previews, the listener's and host's flows around the live audio, the
replay; each at 1280x800 and 390x844 (screenshots in test-artifacts/pages), with no
horizontal scroll and no serious or critical axe-core violation.

A `townhall serve` subprocess (the session's); the host's Chromium has a fake
microphone playing 440 Hz; the listener's microphone is made to fail after Accept.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from benchmarks.harness.audio import amplitude_at
from benchmarks.harness.server import Server
from tests.e2e.test_browser import CHROMIUM, chromium_args, tone_wav
from townhall.room.roles import Role
from townhall.tokens import TokenIssuer

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "pages"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
# What every page is judged by: axe-core's worst two impact levels.
BLOCKING_IMPACTS = {"serious", "critical"}

playwright_sync = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed", allow_module_level=True)

AXE_RESULTS: dict[str, list[dict[str, Any]]] = {}


def axe_violations(page: Any) -> list[dict[str, Any]]:
    assert AXE.is_file(), "axe-core is missing: run npm install (package.json lists it)"
    if not page.evaluate("!!window.axe"):
        page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 4).map((n) => n.target.join(' '))}));
        }"""
    )
    return found


def look(page: Any, name: str) -> None:
    """Both viewports: a screenshot, no sideways scroll, no serious axe violation."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    for label, viewport in VIEWPORTS.items():
        page.set_viewport_size(viewport)
        page.wait_for_timeout(150)
        page.screenshot(path=str(SHOTS / f"{name}-{label}.png"), full_page=True)
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], f"{name} scrolls sideways at {label}: {widths}"
        violations = axe_violations(page)
        AXE_RESULTS[f"{name}-{label}"] = violations
        blocking = [v for v in violations if v["impact"] in BLOCKING_IMPACTS]
        assert not blocking, f"{name} at {label}: {blocking}"
    page.set_viewport_size(size)


def make_space(server: Server, **body: object) -> dict[str, Any]:
    resp = httpx.post(
        f"{server.control_url}/api/spaces",
        json={"title": "Pages", **body},
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


def host_post(space: dict[str, Any], path: str) -> dict[str, Any]:
    resp = httpx.post(
        f"{space['listen_link'].replace('/s/', '/api/spaces/')}/{path}",
        headers={"Authorization": f"Bearer {space['host_token']}"},
        timeout=20,
    )
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def server_secret(server: Server) -> str:
    with sqlite3.connect(server.data_dir / "townhall.sqlite3") as db:
        (secret,) = db.execute("SELECT value FROM settings WHERE key = 'token_secret'").fetchone()
    return str(secret)


@pytest.fixture(scope="module")
def pw() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)
    with sync_playwright() as p:
        yield p


@pytest.fixture
def browser(pw: Any) -> Iterator[Any]:
    b = pw.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=chromium_args(tone_wav(440))
    )
    yield b
    b.close()


def new_page(browser: Any, errors: list[str]) -> Any:
    context = browser.new_context(viewport=VIEWPORTS["phone"])
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(15_000)
    return page


# -- the front page ---------------------------------------------------------------


def test_front_page_lists_spaces_opens_links_and_creates_with_copyable_links(
    server: Server, browser: Any
) -> None:
    from playwright.sync_api import expect

    live = make_space(server, title="Front: live now", host_name="Ana Ruiz")
    host_post(live, "start")
    upcoming = make_space(server, title="Front: upcoming", scheduled_at=time.time() + 86_400)
    unlisted = make_space(server, title="Front: unlisted", listed=False)
    past = make_space(server, title="Front: past")
    host_post(past, "start")
    host_post(past, "end")
    cancelled = make_space(server, title="Front: cancelled")
    host_post(cancelled, "end")

    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(server.control_url + "/")
    expect(page.locator(f"#live-list li[data-id='{live['id']}']")).to_contain_text("Ana Ruiz")
    expect(page.locator(f"#upcoming-list li[data-id='{upcoming['id']}']")).to_be_visible()
    expect(page.locator(f"#past-list li[data-id='{past['id']}'] a")).to_have_attribute(
        "href", re.compile(f"/s/{past['id']}/replay$")
    )
    assert page.locator(f"li[data-id='{unlisted['id']}']").count() == 0
    assert page.locator(f"li[data-id='{cancelled['id']}']").count() == 0
    look(page, "front")

    # A link pasted into the field opens the Space (a stage link keeps its key).
    page.locator("#open-link").fill("not a link at all!")
    page.locator("#open button[type=submit]").click()
    expect(page.locator("#open-status")).to_contain_text("neither")
    page.locator("#open-link").fill(upcoming["listen_link"])
    page.locator("#open button[type=submit]").click()
    expect(page).to_have_url(upcoming["listen_link"])

    # Create: the host's name, three links with Copy buttons, no sideways scroll.
    page.goto(server.control_url + "/")
    page.locator("#title").fill("Created in the browser")
    page.locator("#host-name").fill("Mayor Ana Ruiz")
    page.locator("#key").fill(server.admin_key)
    page.locator("#create button[type=submit]").click()
    expect(page.locator("#created")).to_be_visible()
    expect(page.locator("#created")).to_be_focused()
    host_link = page.locator("#host-link").get_attribute("href")
    assert host_link and "/host#t=" in host_link
    page.locator("[data-link=host-link] button").click()
    expect(page.locator("[data-link=host-link] .status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == host_link
    look(page, "front-created")
    space_id = host_link.split("/s/")[1].split("/")[0]
    info = httpx.get(f"{server.control_url}/api/spaces/{space_id}").json()
    assert info["host_name"] == "Mayor Ana Ruiz"
    assert not errors, errors


# -- errors and endings -------------------------------------------------------------------


def test_error_and_ending_pages_say_what_happened(server: Server, browser: Any) -> None:
    from playwright.sync_api import expect

    errors: list[str] = []
    page = new_page(browser, errors)
    space = make_space(server, title="Errors")
    other = make_space(server, title="Another")

    # An unknown Space: a page, not JSON.
    page.goto(server.control_url + "/s/doesnotexist")
    expect(page.locator("h1")).to_have_text("This Space does not exist")
    look(page, "error-unknown-space")

    # A broken link (its key cut short): a clear page, no library message, no controls.
    page.goto(space["host_link"][:-12])
    expect(page.locator("#problem-h")).to_have_text("This link is not valid")
    assert "padding" not in page.content().lower() and page.locator("#start").count() == 0
    expect(page.locator("#problem-h")).to_be_focused()
    look(page, "error-bad-link")

    # An expired host link.
    issuer = TokenIssuer(server_secret(server))
    old = issuer.issue(space["id"], Role.HOST, "Host", now=time.time() - 2 * issuer.default_ttl_s)
    page.goto(f"{server.control_url}/s/{space['id']}/host#t={old}")
    expect(page.locator("#problem-h")).to_have_text("This link has expired")
    assert page.locator("#start").count() == 0

    # A host link for another Space.
    page.goto(f"{server.control_url}/s/{space['id']}/host#t={other['host_token']}")
    expect(page.locator("#problem-h")).to_have_text("This link is for another Space")
    look(page, "error-other-space")

    # The host cancels before the start, after a confirmation; listeners are told, with
    # no replay and no counts.
    page.goto(space["host_link"])
    page.locator("#end").click()
    expect(page.locator("#confirm-q")).to_have_text("Cancel this Space?")
    page.locator("#confirm-ok").click()
    expect(page.locator("#state")).to_have_text("Cancelled")
    expect(page.locator("#ending")).to_contain_text("cancelled before it went live")
    expect(page.locator("#replay-card")).to_be_hidden()
    look(page, "host-cancelled")
    page.goto(space["listen_link"])
    expect(page.locator("#state")).to_have_text("Cancelled")
    expect(page.locator("#ending")).to_contain_text("cancelled")
    expect(page.locator("#replay-card")).to_be_hidden()
    expect(page.locator("#counts")).to_be_hidden()
    look(page, "listen-cancelled")
    page.goto(f"{server.control_url}/s/{space['id']}/replay")
    expect(page.locator("#problem-h")).to_have_text("This Space was cancelled")
    assert not errors, errors


def test_a_scheduled_space_offers_a_calendar_file_and_previews(
    server: Server, browser: Any
) -> None:
    from playwright.sync_api import expect

    start = time.time() + 3 * 86_400
    space = make_space(
        server,
        title="Budget night, part 2; Q&A",
        description="Bring questions.",
        host_name="Ana Ruiz",
        scheduled_at=start,
    )
    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(space["listen_link"])
    expect(page.locator("#host")).to_have_text("Hosted by Ana Ruiz")
    expect(page.locator("#calendar-link")).to_be_visible()
    assert page.locator("meta[property='og:title']").get_attribute("content") == space["title"]
    assert "Ana Ruiz" in (
        page.locator("meta[property='og:description']").get_attribute("content") or ""
    )
    look(page, "listen-scheduled")
    href = page.locator("#calendar-link").get_attribute("href")
    text = page.evaluate("(u) => fetch(u).then((r) => r.text())", href)
    assert text.startswith("BEGIN:VCALENDAR\r\n") and text.endswith("END:VCALENDAR\r\n")
    unfolded = text.replace("\r\n ", "")
    assert "SUMMARY:Budget night\\, part 2\\; Q&A\r\n" in unfolded
    assert time.strftime("DTSTART:%Y%m%dT%H%M%SZ", time.gmtime(start)) in unfolded

    # The speaker's page before the start: named, waiting, usable on a phone.
    page.goto(space["speaker_link"])
    expect(page.locator("#whoami")).to_have_text("You are a speaker.")
    look(page, "speaker-scheduled")
    assert not errors, errors


# -- around the live audio: recording, delay, hands, a failed microphone, moderation -------


def heard_by_page(page: Any, seconds: float = 2.0) -> float:
    """Amplitude at 440 Hz of what the page's player plays (an AnalyserNode)."""
    samples = page.evaluate(
        """async (ms) => {
            const a = document.querySelector('#player');
            if (!window.__tap) {
                const ctx = new AudioContext();
                const src = ctx.createMediaElementSource(a);
                const an = ctx.createAnalyser();
                an.fftSize = 32768;
                src.connect(an); an.connect(ctx.destination);
                window.__tap = {ctx, an};
            }
            await window.__tap.ctx.resume();
            await new Promise((r) => setTimeout(r, ms));
            const buf = new Float32Array(window.__tap.an.fftSize);
            window.__tap.an.getFloatTimeDomainData(buf);
            return {rate: window.__tap.ctx.sampleRate, data: Array.from(buf)};
        }""",
        int(seconds * 1000),
    )
    signal = np.asarray(samples["data"], dtype=np.float64)
    if samples["rate"] != 48_000:  # amplitude_at assumes 48 kHz
        t = np.arange(len(signal)) / samples["rate"]
        signal = np.interp(np.arange(0, t[-1], 1 / 48_000), t, signal)
    return float(amplitude_at(signal, 440.0))


def test_live_pages_around_the_audio(server: Server, browser: Any, pw: Any) -> None:
    from playwright.sync_api import expect

    space = make_space(server, title="Live pages", host_name="Ana Ruiz")
    errors: list[str] = []
    host = new_page(browser, errors)
    host.goto(space["host_link"])
    host.locator("#green-room-open").click()  # the host goes live through the green room
    expect(host.locator("body")).to_have_attribute("data-mic", "checked")
    host.locator("#green-room-live").click()
    expect(host.locator("body")).to_have_attribute("data-mic", "live")
    expect(host.locator("#stage li").first).to_contain_text("Ana Ruiz")

    # The listener's microphone will fail: a separate browser without the fake device's luck.
    guest_browser = pw.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=chromium_args(tone_wav(660))
    )
    try:
        guest = new_page(guest_browser, errors)
        guest.add_init_script(
            "navigator.mediaDevices.getUserMedia = () => Promise.reject("
            "new DOMException('Permission denied', 'NotAllowedError'));"
        )
        # Contract: the page asks the control API for its own state (GET /room) only
        # while a hand is up or an invitation pending, at most every 3 s.
        room_asks: list[float] = []
        guest.on(
            "request",
            lambda r: room_asks.append(time.monotonic()) if r.url.endswith("/room") else None,
        )
        guest.goto(space["listen_link"])
        expect(guest.locator("#rec")).to_be_visible()
        expect(guest.locator("#host")).to_have_text("Hosted by Ana Ruiz")
        guest.locator("#play").click()
        expect(guest.locator("body")).to_have_attribute("data-audience", "playing")
        expect(guest.locator("#behind")).to_have_text(re.compile(r"About \d+ s behind live"))
        behind = float(guest.locator("body").get_attribute("data-behind-s") or "nan")
        assert 0 <= behind < 15, behind
        assert heard_by_page(guest) > 0.01, "the listener does not hear the host"
        look(guest, "listen-live")
        assert not room_asks, "a listener with no hand up asked the control API"

        # A raised hand dismissed by the host is told to the listener.
        guest.locator("#hand").click()
        guest.locator("#name").fill("Guest Gil")
        guest.locator("#name-form button[type=submit]").click()
        expect(guest.locator("#hand")).to_have_text(re.compile("Lower hand"))
        gid = guest.evaluate("window.townhall.session.session_id")
        hand = host.locator(f"#hands li[data-id='{gid}']")
        hand.locator("button[data-action=dismiss]").click()
        expect(guest.locator("#hand-status")).to_contain_text("The host lowered your hand")
        expect(guest.locator("#hand")).to_have_text(re.compile("Raise hand"))

        # The host's list of listeners, with Remove behind a confirmation.
        expect(host.locator(f"#listeners li[data-id='{gid}']")).to_contain_text("Guest Gil")
        remove = host.locator(f"#listeners li[data-id='{gid}'] button[data-action=remove-listener]")
        remove.click()
        expect(host.locator("dialog.confirm")).to_be_visible()
        expect(host.locator("#confirm-cancel")).to_be_focused()
        look(host, "host-confirm-remove")
        host.locator("#confirm-cancel").click()
        expect(host.locator("dialog.confirm")).to_have_count(0)
        expect(remove).to_be_focused()  # focus is kept after the dialog

        # The host shares the listen link and makes an invitation link: both shown in
        # full, copyable, and the phone page does not grow sideways.
        host.locator("#share").click()
        expect(host.locator("#share-status")).to_contain_text(space["listen_link"])
        host.locator("#invite-name").fill("Guest speaker")
        host.locator("#invite-form button[type=submit]").click()
        host.locator("[data-link=invite-url] button").click()
        expect(host.locator("[data-link=invite-url] .status")).to_have_text("Copied.")
        invite_link = host.locator("#invite-url").get_attribute("href") or ""
        assert "/speak#t=" in invite_link
        assert host.evaluate("navigator.clipboard.readText()") == invite_link

        # Raised again and invited: the banner takes the focus and is announced.
        guest.locator("#hand").click()
        expect(host.locator(f"#hands li[data-id='{gid}']")).to_be_visible()
        host.locator(f"#hands li[data-id='{gid}'] button[data-action=approve]").click()
        expect(guest.locator("#invite-banner")).to_be_visible()
        expect(guest.locator("#invite-banner")).to_be_focused()
        assert guest.locator("#invite-banner").get_attribute("role") == "alert"
        look(guest, "listen-invited")
        look(host, "host-live")

        # Accept, and the microphone is refused: back in the audience, told, hearing.
        guest.locator("#accept").click()
        expect(guest.locator("#errors")).to_contain_text("back in the audience")
        expect(guest.locator("body")).to_have_attribute("data-audience", "playing")
        expect(guest.locator("#onstage")).to_be_hidden()
        expect(host.locator(f"#stage li[data-id='{gid}']")).to_have_count(0)
        assert heard_by_page(guest) > 0.01, "the listener does not hear the Space again"
        look(guest, "listen-mic-failed")
        asks_while_engaged = len(room_asks)
        gaps = np.diff(room_asks)
        assert asks_while_engaged >= 2, room_asks
        assert gaps.min() >= 2.9, gaps
        guest.wait_for_timeout(4000)  # hand down, no invitation: no more asking
        assert len(room_asks) == asks_while_engaged, "the page polls with no hand up"

        # Remove, confirmed: the listener is gone from the host's list.
        remove = host.locator(f"#listeners li[data-id='{gid}'] button[data-action=remove-listener]")
        remove.click()
        host.locator("#confirm-ok").click()
        expect(host.locator(f"#listeners li[data-id='{gid}']")).to_have_count(0)

        # End, confirmed: ended pages show no live counts and open the replay.
        host.wait_for_timeout(2500)  # a few seconds of program for the replay
        host.locator("#end").click()
        expect(host.locator("#confirm-ok")).to_have_text("End Space")
        host.locator("#confirm-ok").click()
        expect(host.locator("#replay-card")).to_be_visible()
        expect(guest.locator("#replay-card")).to_be_visible()
        expect(guest.locator("#counts")).to_be_hidden()
        expect(guest.locator("#rec")).to_be_hidden()
        expect(host.locator("#counts")).to_be_hidden()
        look(guest, "listen-ended")
        look(host, "host-ended")
    finally:
        guest_browser.close()

    # The replay page: its length, and seeking (HTTP Range on the file).
    page = new_page(browser, errors)
    page.goto(f"{server.control_url}/s/{space['id']}/replay")
    page.wait_for_function("Number.isFinite(window.townhall.audio.duration)", timeout=20_000)
    duration = page.evaluate("window.townhall.audio.duration")
    assert duration > 2, duration
    length = f"{int(duration) // 60}:{int(duration) % 60:02d}"
    expect(page.locator("#position")).to_have_text(re.compile(rf"\d+:\d\d / {length}$"))
    page.evaluate("(t) => { window.townhall.audio.currentTime = t; }", duration / 2)
    page.wait_for_function(
        "(t) => Math.abs(window.townhall.audio.currentTime - t) < 1"
        " && !window.townhall.audio.seeking",
        arg=duration / 2,
    )
    look(page, "replay")
    assert not errors, errors
    print(
        f"\nbehind live {behind:.1f} s; replay {duration:.1f} s; axe: "
        + ", ".join(f"{k}={len(v)}" for k, v in AXE_RESULTS.items())
    )
