"""The web UI in a real browser: a host and a listener in Debian's Chromium, for real.

A `townhall serve` subprocess; two Chromium processes (the fake-microphone file is per
process): the host's mic plays 440 Hz, the listener's 660 Hz. The host starts the Space
and is heard; the listener plays the live stream, raises a hand, is approved from the
host page, accepts, and comes up on stage. Judged by content: the Ogg program carries
440 Hz before the approval and no 660 Hz; after it, both.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from benchmarks.harness.audio import amplitude_at, decode
from benchmarks.harness.server import Server
from townhall.peers.listen import listen_ogg

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
FIXTURES = ROOT / "tests" / "fixtures"
PHONE = {"width": 390, "height": 844}

playwright_sync = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed", allow_module_level=True)


def tone_wav(freq_hz: float) -> Path:
    """A 10 s sine at `freq_hz` (Chromium loops the fake-capture file)."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / f"tone-{int(freq_hz)}hz.wav"
    if not path.exists():
        rate = 48_000
        t = np.arange(rate * 10) / rate
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm.tobytes())
    return path


def chromium_args(mic_wav: Path) -> list[str]:
    return [
        "--no-sandbox",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]


class Capture:
    """Listen to the live Ogg program on the server side, in a thread, for `seconds`."""

    def __init__(self, url: str, seconds: float) -> None:
        self.data = b""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url, seconds), daemon=True)
        self._thread.start()

    def _run(self, url: str, seconds: float) -> None:
        try:
            self.data = bytes(asyncio.run(listen_ogg(url, seconds)).data)
        except BaseException as e:  # reported by result()
            self.error = e

    def result(self, last_s: float | None = None) -> tuple[float, float]:
        """(amplitude at 440 Hz, amplitude at 660 Hz) over what was heard, or over its
        last ``last_s`` seconds (past the join burst of already-produced audio)."""
        self._thread.join(30)
        if self.error:
            raise self.error
        signal = decode(self.data)
        assert len(signal) > 48_000, f"heard only {len(signal)} samples"
        signal = signal[4800:]  # skip the first 100 ms (decoder start-up)
        if last_s is not None:
            signal = signal[-int(last_s * 48_000) :]
        return amplitude_at(signal, 440.0), amplitude_at(signal, 660.0)


def trace_of(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [e["event"] for e in page.evaluate("window.townhallTrace")]


def test_host_and_listener_in_chromium(server: Server) -> None:
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    ARTIFACTS.mkdir(exist_ok=True)
    space = server.new_space("Browser town hall", description="Real Chromium, fake microphones.")
    ogg_url = space["audience"]["ogg"]

    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)

    with sync_playwright() as pw:
        host_browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(tone_wav(440))
        )
        guest_browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(tone_wav(660))
        )
        try:
            host = host_browser.new_context(viewport=PHONE).new_page()
            guest = guest_browser.new_context(viewport=PHONE).new_page()
            page_errors: list[str] = []
            for p in (host, guest):
                p.on("pageerror", lambda e: page_errors.append(str(e)))
                p.set_default_timeout(15_000)

            # -- the host starts the Space and passes the mic check --------------------
            host.goto(space["host_link"])
            expect(host.locator("#green-room-open")).to_be_visible()
            host.locator("#green-room-open").click()  # the host starts via the green room
            expect(host.locator("body")).to_have_attribute("data-mic", "checked")
            host.locator("#green-room-live").click()
            expect(host.locator("body")).to_have_attribute("data-mic", "live")
            marks["host live"] = time.monotonic() - t0
            before = Capture(ogg_url, 3.0)

            # -- the listener plays the live stream -----------------------------------
            guest.goto(space["listen_link"])
            expect(guest.locator("#title")).to_have_text("Browser town hall")
            expect(guest.locator("#hand")).to_be_enabled()
            guest.locator("#play").click()
            expect(guest.locator("body")).to_have_attribute("data-audience", "playing")
            guest.wait_for_function("document.querySelector('#player').currentTime > 1.0")
            mode = guest.locator("#player").get_attribute("data-mode")
            stalls = trace_of(guest).count("player-stalled")
            marks["listener playing"] = time.monotonic() - t0

            a440, a660 = before.result()
            assert a440 > 0.05, f"the host's 440 Hz is not in the program ({a440:.3f})"
            assert a660 < 0.01, f"660 Hz in the program before the approval ({a660:.3f})"

            # -- hand raised, approved by the host, accepted --------------------------
            guest.locator("#hand").click()
            guest.locator("#name").fill("Guest")
            guest.locator("#name-form button[type=submit]").click()
            expect(guest.locator("#hand")).to_have_text(re.compile("Lower hand"))
            guest_id = guest.evaluate("window.townhall.session.session_id")
            hand = host.locator(f"#hands li[data-id='{guest_id}']")
            expect(hand).to_contain_text("Guest")
            hand.locator("button[data-action=approve]").click()
            expect(hand).to_have_attribute("data-invited", "1")

            expect(guest.locator("#invite-banner")).to_be_visible()
            expect(guest.locator("#invite-banner")).to_contain_text("You're invited to speak")
            guest.locator("#accept").click()
            expect(guest.locator("body")).to_have_attribute("data-mic", re.compile("checking|live"))
            # The audience stream was stopped before the microphone opened, and is off.
            trace = guest.evaluate("window.townhallTrace")
            names = [e["event"] for e in trace]
            assert "audience-stopped" in names and "mic-opening" in names, names
            stopped = max(i for i, n in enumerate(names) if n == "audience-stopped")
            opening = names.index("mic-opening")
            assert stopped < opening, names
            assert trace[opening]["audiencePlaying"] is False, trace[opening]
            player = guest.evaluate(
                """() => {
                    const a = document.querySelector('#player');
                    return {paused: a.paused, src: a.getAttribute('src'),
                            hls: !!window.townhall.player.hls};
                }"""
            )
            assert player == {"paused": True, "src": None, "hls": False}, player

            # -- the new speaker passes the mic check and is heard -------------------
            expect(guest.locator("body")).to_have_attribute("data-mic", "live")
            expect(guest.locator("#mic-status")).to_contain_text("You're live")
            seat = host.locator(f"#stage li[data-id='{guest_id}']")
            expect(seat).to_have_attribute("data-live", "1")
            marks["speaker live"] = time.monotonic() - t0
            after = Capture(ogg_url, 3.0)
            a440_after, a660_after = after.result()
            assert a660_after > 0.05, (
                f"the new speaker's 660 Hz is not in the program ({a660_after:.3f})"
            )
            assert a440_after > 0.05, f"the host dropped out of the program ({a440_after:.3f})"
            # One person, one session: naming themselves, the probe, the HLS polls and
            # the Ogg fallback all count the guest once (a signed session id); the two
            # server-side captures are anonymous streams from one address, one after the
            # other: that address's first anonymous slot, once (docs/counting.md).
            counts = httpx.get(f"{server.control_url}/api/spaces/{space['id']}").json()["room"]
            assert counts["total_tuned_in"] == 1 + 1, counts
            packets = guest.evaluate("window.townhall.mic.packetsSent()")
            assert packets > 50, packets
            host.screenshot(path=str(ARTIFACTS / "host-live.png"), full_page=True)
            guest.screenshot(path=str(ARTIFACTS / "listener-on-stage.png"), full_page=True)

            # -- the new speaker mutes, then unmutes, themselves --------------------
            guest.locator("#mute").click()
            expect(guest.locator("#mute")).to_have_attribute("aria-pressed", "true")
            muted = Capture(ogg_url, 2.5).result(last_s=1.0)[1]
            guest.locator("#mute").click()
            expect(guest.locator("#mute")).to_have_attribute("aria-pressed", "false")
            unmuted = Capture(ogg_url, 2.5).result(last_s=1.0)[1]
            assert muted < 0.01, f"a muted speaker is still in the program ({muted:.3f})"
            assert unmuted > 0.05, f"an unmuted speaker is not back ({unmuted:.3f})"

            # -- the end: both pages offer the replay --------------------------------
            host.locator("#end").click()
            host.locator("#confirm-ok").click()  # the dialog confirms
            expect(host.locator("#replay-card")).to_be_visible()
            expect(guest.locator("#replay-card")).to_be_visible()
            expect(guest.locator("#replay-link")).to_have_attribute(
                "href", f"{server.audience_url}/replay/{space['id']}.ogg"
            )
            expect(guest.locator("body")).to_have_attribute("data-mic", "off")
            host.screenshot(path=str(ARTIFACTS / "host-ended.png"), full_page=True)
            guest.screenshot(path=str(ARTIFACTS / "listener-ended.png"), full_page=True)
            assert not page_errors, page_errors
        finally:
            guest_browser.close()
            host_browser.close()
    marks["total"] = time.monotonic() - t0
    print(
        f"player={mode} stalls={stalls} before: 440={a440:.3f} 660={a660:.3f}; "
        f"after: 440={a440_after:.3f} 660={a660_after:.3f}; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in marks.items())
    )


def test_the_stage_page_rejoins_a_lost_stage_with_the_same_microphone(server: Server) -> None:
    """The host page replaces its connection when the socket says the stage restarts,
    and when its watchdog hears nothing; the microphone is opened once; the host sees
    a paused recording. (The stage really restarting is tested with the supervisor.)"""
    space = server.new_space("Rejoin")

    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(tone_wav(440))
        )
        try:
            host = browser.new_context(viewport=PHONE).new_page()
            page_errors: list[str] = []
            host.on("pageerror", lambda e: page_errors.append(str(e)))
            host.goto(space["host_link"])
            host.locator("#green-room-open").click()
            expect(host.locator("body")).to_have_attribute("data-mic", "checked")
            host.locator("#green-room-live").click()
            expect(host.locator("body")).to_have_attribute("data-mic", "live")
            first_pc = host.evaluate_handle("window.townhall.mic.pc")

            # -- the socket says the stage restarts: a new connection at once ----------
            host.evaluate("window.townhall.receive({type: 'stage', state: 'restarting'})")
            host.wait_for_function("window.townhallDebug.stageRejoins === 1")
            assert host.evaluate("(pc) => pc !== window.townhall.mic.pc", first_pc)
            expect(host.locator("body")).to_have_attribute("data-mic", "live")
            rejoin_ms = host.evaluate("window.townhall.mic.lastRejoinMs")
            assert rejoin_ms < 3000, rejoin_ms

            # -- the watchdog: a connection that has gone is replaced, with no message --
            host.evaluate("window.townhall.mic.pc.close()")
            host.wait_for_function("window.townhallDebug.stageRejoins === 2", timeout=8_000)
            lost = host.evaluate("window.townhallDebug.stageLost.map((l) => l.why)")
            assert lost[-1] == "the connection closed", lost
            expect(host.locator("body")).to_have_attribute("data-mic", "live")
            assert trace_of(host).count("mic-opened") == 1, "the microphone was asked for again"
            program = Capture(space["audience"]["ogg"], 2.5)
            a440, _ = program.result()
            assert a440 > 0.05, f"the host is not back in the program ({a440:.3f})"

            # -- the recording pauses and resumes: the host is told -------------------
            banner = host.locator("#recording-banner")
            expect(banner).to_be_hidden()
            host.evaluate(
                "window.townhall.receive({type: 'recording', state: 'paused',"
                " detail: 'the disk is full'})"
            )
            expect(banner).to_be_visible()
            expect(banner).to_have_text(
                "Recording paused: the disk is full. The live audio continues."
            )
            host.evaluate("window.townhall.receive({type: 'recording', state: 'recording'})")
            expect(banner).to_be_hidden()
            assert not page_errors, page_errors
            host.locator("#end").click()
            host.locator("#confirm-ok").click()
            expect(host.locator("#replay-card")).to_be_visible()
        finally:
            browser.close()


@pytest.mark.parametrize("mode", ["hls", "ogg"])
def test_the_player_hears_the_program_again_after_its_audience_worker_dies(mode: str) -> None:
    """A listener page plays (hls.js, or the Ogg stream in <audio>); the one audience
    worker is SIGKILLed and replaced; the player recovers by itself and plays on."""
    from playwright.sync_api import expect, sync_playwright

    from benchmarks.harness.server import on_air

    expect.set_options(timeout=15_000)
    with on_air(server_args=["--audience-workers", "1"]) as space, sync_playwright() as pw:
        info = httpx.get(space.server.control_url + f"/api/spaces/{space.id}").json()
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(tone_wav(660))
        )
        try:
            page = browser.new_context(viewport=PHONE).new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            if mode == "ogg":  # no hls.js: the player takes the Ogg stream
                page.add_init_script("Object.defineProperty(window, 'Hls', {get() {}, set() {}})")
            page.goto(info["listen_link"])
            page.locator("#play").click()
            expect(page.locator("body")).to_have_attribute("data-audience", "playing")
            page.wait_for_function("document.querySelector('#player').currentTime > 1.0")
            assert page.locator("#player").get_attribute("data-mode") == mode

            port = int(space.server.audience_url.rsplit(":", 1)[1])
            workers = [
                child
                for child in psutil.Process(space.server.proc.pid).children(recursive=True)
                if any(
                    c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                    for c in child.net_connections(kind="tcp")
                )
            ]
            assert len(workers) == 1, workers
            killed_at = time.monotonic()
            workers[0].kill()
            # Playing again, with the clock moving past what it had before the kill
            # (hls.js keeps its clock; a reloaded Ogg source starts again from 0).
            before = page.evaluate("document.querySelector('#player').currentTime")
            target = before + 3.0 if mode == "hls" else 2.0
            page.wait_for_function(
                "([t, n]) => document.querySelector('#player').currentTime > t &&"
                " (window.townhallDebug.playerReconnects + window.townhallDebug.hlsRecoveries"
                " >= n)",
                arg=[target, 1 if mode == "ogg" else 0],
                timeout=20_000,
            )
            took = time.monotonic() - killed_at
            counters = page.evaluate("window.townhallDebug")
            print(f"\n{mode}: playing on {took:.1f} s after the worker was killed; {counters}")
            assert page.locator("body").get_attribute("data-audience") == "playing"
            assert page.locator("#player").get_attribute("data-mode") == mode
            assert not page_errors, page_errors
        finally:
            browser.close()
