"""A real townhall to test and to measure: ``townhall serve`` in a subprocess, Spaces on
it through the control API, and a Space on air with a ``townhall speak --tone`` bot on
stage so a real program flows through the audience port.

Used by the end-to-end tests (one server per session, a Space per test) and by every
benchmark. Everything started here is stopped on exit, also when start-up fails half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness.metrics import scrape
from benchmarks.harness.processes import free_port, pinned, stop
from townhall.peers.links import StageLink, parse_stage_link

START_TIMEOUT_S = 20.0
PROGRAM_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 10.0
# The server's output is kept for failure messages and the traceback check: the newest
# lines only, as a crowd can make a server log without end.
LOG_LINES = 5_000
_ADMIN_KEY = re.compile(r"admin key:\s+(\S+)")


def townhall_command(*args: str, cpu: int | None = None) -> list[str]:
    # ``-m townhall`` runs the townhall this process imports (PYTHONPATH, a checkout),
    # not whichever one installed the ``townhall`` script.
    return pinned([sys.executable, "-m", "townhall", *args], cpu)


@dataclass
class Server:
    control_url: str
    audience_url: str
    admin_key: str
    data_dir: Path
    proc: subprocess.Popen[str]
    log: deque[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def new_space(self, title: str, **fields: object) -> dict[str, Any]:
        """Create a Space as the admin; the API's answer (links, tokens, URLs)."""
        resp = httpx.post(
            f"{self.control_url}/api/spaces",
            json={"title": title, **fields},
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert resp.status_code == 201, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def create_space_sync(self, title: str) -> Space:
        body = self.new_space(title)
        return Space(
            id=body["id"],
            host_token=body["host_token"],
            host_link=body["host_link"],
            speaker_link=body["speaker_link"],
            ogg_url=body["audience"]["ogg"],
            hls_url=body["audience"]["hls"],
            server=self,
        )

    async def create_space(self, title: str) -> Space:
        return await asyncio.to_thread(self.create_space_sync, title)

    def metrics(self, timeout_s: float = REQUEST_TIMEOUT_S) -> str:
        """``/metrics`` of this server, with its admin key."""
        return scrape(self.control_url, self.admin_key, timeout_s)

    def tracebacks(self) -> list[str]:
        return [line for line in self.log if line.startswith("Traceback")]

    def output(self, last: int = 80) -> str:
        return "\n".join(list(self.log)[-last:])

    def stop(self, timeout_s: float = 10.0) -> None:
        stop(self.proc, timeout_s)


@dataclass
class Space:
    id: str
    host_token: str
    host_link: str
    speaker_link: str
    ogg_url: str
    hls_url: str
    server: Server

    @property
    def speaker(self) -> StageLink:
        return parse_stage_link(self.speaker_link)

    @property
    def replay_ogg_url(self) -> str:
        return f"{self.server.audience_url}/replay/{self.id}.ogg"

    @property
    def replay_hls_url(self) -> str:
        return f"{self.server.audience_url}/replay/{self.id}/index.m3u8"

    def api(self, path: str = "") -> str:
        return f"{self.server.control_url}/api/spaces/{self.id}{path}"

    def host_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.host_token}"}

    def _host_post(self, path: str, expect: int, body: dict[str, str] | None = None) -> Any:
        resp = httpx.post(
            self.api(path), json=body, headers=self.host_headers(), timeout=REQUEST_TIMEOUT_S
        )
        assert resp.status_code == expect, resp.text
        return resp.json()

    def start_sync(self) -> None:
        self._host_post("/start", 200)

    def end_sync(self) -> dict[str, object]:
        body: dict[str, object] = self._host_post("/end", 200)
        return body

    def invite_sync(self, name: str) -> StageLink:
        invited = self._host_post("/invite", 201, {"role": "speaker", "name": name})
        return parse_stage_link(invited["link"])

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def end(self) -> dict[str, object]:
        return await asyncio.to_thread(self.end_sync)

    async def invite(self, name: str) -> StageLink:
        return await asyncio.to_thread(self.invite_sync, name)

    def wait_program_sync(self, timeout_s: float = PROGRAM_TIMEOUT_S) -> None:
        """Until the audience port serves this Space's program: the playlist request is
        held (or answered 503) until the first segment exists; from then both feeds flow."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                resp = httpx.get(self.hls_url, timeout=2.0)
                if resp.status_code == 200 and "#EXT-X-PART:" in resp.text:
                    return
                last = f"{resp.status_code} {resp.text[:200]}"
            time.sleep(0.05)
        raise TimeoutError(f"space {self.id} never went on air: {last}")

    async def wait_program(self, timeout_s: float = PROGRAM_TIMEOUT_S) -> None:
        await asyncio.to_thread(self.wait_program_sync, timeout_s)


# -- the server process -------------------------------------------------------------------


def start_server(data_dir: Path, server_args: Iterable[str] = (), cpu: int | None = None) -> Server:
    """``townhall serve`` on two free ports; returns once its audience port answers."""
    control_port, audience_port = free_port(), free_port()
    args = ["serve", "--data-dir", str(data_dir), "--control-port", str(control_port)]
    args += ["--audience-port", str(audience_port), *server_args]
    proc = subprocess.Popen(
        townhall_command(*args, cpu=cpu),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log: deque[str] = deque(maxlen=LOG_LINES)
    admin_key: list[str] = []
    announced = threading.Event()
    threading.Thread(
        target=_pump, args=(proc, log, admin_key, announced), name="townhall-log", daemon=True
    ).start()
    try:
        if not announced.wait(START_TIMEOUT_S) or not admin_key:
            raise RuntimeError(
                f"townhall serve printed no admin key (status {proc.poll()}):\n" + "\n".join(log)
            )
        server = Server(
            f"http://127.0.0.1:{control_port}",
            f"http://127.0.0.1:{audience_port}",
            admin_key[0],
            data_dir,
            proc,
            log,
        )
        _wait_healthy(server, time.monotonic() + START_TIMEOUT_S)
    except BaseException:
        stop(proc)
        raise
    return server


def _pump(
    proc: subprocess.Popen[str], log: deque[str], admin_key: list[str], announced: threading.Event
) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        log.append(line.rstrip())
        if not announced.is_set() and (m := _ADMIN_KEY.search(line)):
            admin_key.append(m.group(1))
            announced.set()
    announced.set()  # it exited: stop waiting


def _wait_healthy(server: Server, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.audience_url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("townhall serve never answered /healthz:\n" + server.output())


@contextlib.contextmanager
def running_server(
    data_dir: Path | None = None, server_args: Iterable[str] = (), cpu: int | None = None
) -> Iterator[Server]:
    """A started server, stopped on exit; its data in a temp dir unless ``data_dir``."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="townhall-")))
        server = start_server(data_dir, server_args, cpu)
        stack.callback(server.stop)
        yield server


# -- a Space on air -----------------------------------------------------------------------


@contextlib.contextmanager
def on_air(
    cpu: int | None = None, tone_hz: float = 440.0, server_args: Iterable[str] = ()
) -> Iterator[Space]:
    """A started Space on its own server (pinned to ``cpu`` if given) with a tone bot on
    stage (the host) and its program flowing."""
    with running_server(server_args=server_args, cpu=cpu) as server:
        space = server.create_space_sync("on air")
        space.start_sync()
        speaker = subprocess.Popen(
            townhall_command("speak", space.host_link, "--tone", str(tone_hz)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            space.wait_program_sync()
            yield space
        finally:
            stop(speaker)
