"""End-to-end fixtures: one real ``townhall serve`` process for the whole session.

The server runs as the installed CLI on 127.0.0.1 with ports found by binding port 0.
Each test makes its own Space through the control API, so tests never share a room.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from townhall.peers.links import StageLink, parse_stage_link

TOWNHALL = Path(sys.executable).with_name("townhall")
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Space:
    id: str
    host_token: str
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

    async def start(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(self.api("/start"), headers=self.host_headers())
        assert resp.status_code == 200, resp.text

    async def end(self) -> dict[str, object]:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(self.api("/end"), headers=self.host_headers())
        assert resp.status_code == 200, resp.text
        body: dict[str, object] = resp.json()
        return body

    async def invite(self, name: str) -> StageLink:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(
                self.api("/invite"),
                json={"role": "speaker", "name": name},
                headers=self.host_headers(),
            )
        assert resp.status_code == 201, resp.text
        return parse_stage_link(resp.json()["link"])

    async def wait_program(self, timeout_s: float = 10.0) -> None:
        """Until the audience port serves this Space's program (the first part exists)."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
                resp = await client.get(self.hls_url)
                if resp.status_code == 200:
                    return
                await asyncio.sleep(0.05)
        raise TimeoutError(f"space {self.id} never went on air: {resp.status_code} {resp.text}")


@dataclass
class Server:
    control_url: str
    audience_url: str
    admin_key: str
    data_dir: Path
    proc: subprocess.Popen[str]
    log: list[str]

    def create_space_sync(self, title: str) -> Space:
        resp = httpx.post(
            f"{self.control_url}/api/spaces",
            json={"title": title},
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=10,
        )
        assert resp.status_code == 201, resp.text
        body = resp.json()
        return Space(
            id=body["id"],
            host_token=body["host_token"],
            speaker_link=body["speaker_link"],
            ogg_url=body["audience"]["ogg"],
            hls_url=body["audience"]["hls"],
            server=self,
        )

    async def create_space(self, title: str) -> Space:
        return await asyncio.to_thread(self.create_space_sync, title)


def _pump(stream: object, lines: queue.Queue[str], log: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        log.append(line.rstrip())
        lines.put(line)


def _start_server(data_dir: Path) -> Server:
    control_port, audience_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(TOWNHALL),
            "serve",
            "--data-dir",
            str(data_dir),
            "--control-port",
            str(control_port),
            "--audience-port",
            str(audience_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    threading.Thread(target=_pump, args=(proc.stdout, lines, log), daemon=True).start()
    admin_key = ""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not admin_key:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            raise RuntimeError("townhall serve printed no admin key:\n" + "\n".join(log)) from None
        if line.startswith("admin key:"):
            admin_key = line.split()[-1]
    server = Server(
        f"http://127.0.0.1:{control_port}",
        f"http://127.0.0.1:{audience_port}",
        admin_key,
        data_dir,
        proc,
        log,
    )
    _wait_healthy(server, deadline)
    return server


def _wait_healthy(server: Server, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.audience_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("townhall serve never answered /healthz:\n" + "\n".join(server.log))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("Debian ffmpeg is needed as a real peer")
    srv = _start_server(tmp_path_factory.mktemp("townhall-data"))
    yield srv
    srv.proc.terminate()
    try:
        srv.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
    tracebacks = [line for line in srv.log if line.startswith("Traceback")]
    assert not tracebacks, "the server logged tracebacks:\n" + "\n".join(srv.log[-80:])
