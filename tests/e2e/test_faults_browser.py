"""The listen page in Chromium (hls.js on the LL-HLS program) plays on across a SIGKILL
of the Space's stage process: ``currentTime`` keeps advancing past the restart, and the
speaker's tone is heard again, measured in the page by a DFT on what the <audio>
element plays (a WebAudio AnalyserNode on it)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from benchmarks.harness.page_audio import TONE_ANALYSER_JS
from benchmarks.harness.processes import kill9, process_table, wait_replaced
from benchmarks.harness.server import on_air

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
HLS_JS = Path(__file__).resolve().parents[2] / "node_modules" / "hls.js" / "dist" / "hls.min.js"
TONE_HZ = 440.0
PRESENT = 0.02  # full scale, after Opus, AAC-free fMP4 decode and the page's resampling
AFTER_KILL_S = 16.0

playwright_sync = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists() or not HLS_JS.exists():
    pytest.skip("needs Debian chromium and hls.js", allow_module_level=True)


def test_the_listen_page_plays_on_across_a_stage_restart() -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)
    with on_air(tone_hz=TONE_HZ) as space, sync_playwright() as pw:
        info = httpx.get(space.server.control_url + f"/api/spaces/{space.id}", timeout=10).json()
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(info["listen_link"])
            page.locator("#play").click()
            expect(page.locator("body")).to_have_attribute("data-audience", "playing")
            assert page.locator("#player").get_attribute("data-mode") == "hls"
            page.evaluate(TONE_ANALYSER_JS, ["#player", TONE_HZ])
            page.wait_for_function(
                "window.toneLevel() > 0.02 && document.querySelector('#player').currentTime > 2",
                timeout=20_000,
            )

            before = process_table(space.server.control_url) or []
            stage = next(p for p in before if p.name == f"stage:{space.id}")
            killed_at = time.monotonic()
            at_kill = float(page.evaluate("document.querySelector('#player').currentTime"))
            kill9(stage.pid)
            replaced = wait_replaced(
                lambda: process_table(space.server.control_url), before, stage, 10.0
            )
            assert replaced is not None, space.server.output(40)
            samples: list[tuple[float, float, float]] = []  # (since kill, currentTime, level)
            while time.monotonic() - killed_at < AFTER_KILL_S:
                current, level = page.evaluate(
                    "[document.querySelector('#player').currentTime, window.toneLevel()]"
                )
                samples.append((time.monotonic() - killed_at, float(current), float(level)))
                time.sleep(0.25)
            errors = page.evaluate("window.townhallDebug")
        finally:
            browser.close()
    final = samples[-1][1]
    print(f"\nstage killed at currentTime {at_kill:.1f}; {final:.1f} {AFTER_KILL_S} s later")
    # Time runs on past the gap and hls.js's hold-back for most of the rest.
    assert final - at_kill >= AFTER_KILL_S - 8.0, (samples[-8:], errors)
    levels = [round(lv, 3) for _, _, lv in samples]
    print(f"{TONE_HZ} Hz in the page, every 0.25 s after the kill: {levels}")
    late = [level for since, _, level in samples if since >= AFTER_KILL_S - 4.0]
    assert max(late) > PRESENT and sum(lv > PRESENT for lv in late) >= len(late) // 2, (
        late,
        errors,
    )
    assert not page_errors, page_errors
