"""hls.js in Chromium plays on across a stage restart.

A real audience server (in a thread of this process) is fed by a real StageRuntime
that "crashes" (its clock stops without an end), then by a second one that carries
media time and part numbers on as a restarted stage process does. The playlist gains
an EXT-X-DISCONTINUITY; hls.js, with no recovery code of our own, must keep
``currentTime`` advancing past the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from townhall.audience.server import AudienceConfig, AudienceServer
from townhall.config import ServerConfig
from townhall.media.timeline import media_start
from townhall.stage.runtime import StageRuntime

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
HLS_JS = Path(__file__).resolve().parents[2] / "node_modules" / "hls.js" / "dist" / "hls.min.js"
SPACE = "sp-restart"
FIRST_S, GAP_S, SECOND_S = 8.0, 1.5, 14.0

playwright_sync = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists() or not HLS_JS.exists():
    pytest.skip("needs Debian chromium and hls.js", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RestartingOrigin:
    """An audience server and a stage that restarts once, on a loop in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.restarted_at: float | None = None
        self.first_seq_after: int | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    async def _serve(self) -> None:
        config = ServerConfig()
        server = AudienceServer(AudienceConfig(), None)
        await server.open("127.0.0.1", self.port)
        started_at = time.time()
        first = StageRuntime(SPACE, server, config.stage)
        first.start()
        await asyncio.sleep(FIRST_S)
        assert first._task is not None
        first._task.cancel()  # a crash: no flush, no end-of-stream, no ChannelEnded
        with contextlib.suppress(asyncio.CancelledError):
            await first._task
        await asyncio.sleep(GAP_S)
        next_seq = server.channels[SPACE].hls._next_seq
        start = media_start(
            started_at,
            time.time(),
            config.stage.encoder.part_target_s,
            config.audience.channel.hls.parts_per_segment,
            next_seq,
            restarted=True,
        )
        self.first_seq_after = start.first_part_seq
        second = StageRuntime(SPACE, server, config.stage, media_start=start)
        second.start()
        self.restarted_at = time.monotonic()
        await asyncio.sleep(SECOND_S)
        await second.end()
        await server.close()


PAGE = """<!doctype html><html><body><audio id="a" muted></audio><script>
window.samples = []; window.errors = [];
const audio = document.getElementById("a");
const hls = new Hls({ lowLatencyMode: true });
hls.on(Hls.Events.ERROR, (_e, d) => window.errors.push([d.type, d.details, d.fatal]));
hls.loadSource(URL_);
hls.attachMedia(audio);
hls.on(Hls.Events.MANIFEST_PARSED, () =>
  audio.play().catch((e) => window.errors.push(["play", String(e), true])));
</script></body></html>"""


def test_hls_js_keeps_playing_across_a_stage_restart() -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    origin = RestartingOrigin(port)
    url = f"http://127.0.0.1:{port}/live/{SPACE}/index.m3u8"
    samples: list[tuple[float, float]] = []  # (monotonic, currentTime)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page()
            time.sleep(2.5)  # a few parts exist before the player asks
            page.set_content("<!doctype html><html><body></body></html>")
            page.add_script_tag(path=str(HLS_JS))
            page.evaluate(
                "(src) => { document.open(); document.write(src); document.close(); }",
                PAGE.replace("URL_", repr(url)),
            )
            while not origin.done.is_set():
                current = page.evaluate("document.getElementById('a').currentTime")
                samples.append((time.monotonic(), float(current)))
                time.sleep(0.25)
            errors = page.evaluate("window.errors")
        finally:
            browser.close()
    if origin.error is not None:
        raise origin.error
    assert origin.restarted_at is not None
    before = [t for at, t in samples if at < origin.restarted_at]
    after = [t for at, t in samples if at >= origin.restarted_at]
    assert before and before[-1] > 2.0, f"hls.js did not play before the restart: {before[-3:]}"
    # Past the gap and hls.js's hold-back, time runs on for most of the second stage.
    assert after[-1] - before[-1] >= SECOND_S - 7.0, (after[-5:], errors)
    assert not [e for e in errors if e[2]], errors  # nothing fatal
