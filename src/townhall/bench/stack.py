"""A real townhall to measure: ``townhall serve`` in a subprocess, one live Space, and a
``townhall speak --tone`` bot on stage so a real program flows through the audience port.

Used by ``townhall bench`` and by the end-to-end load test. Everything it starts is
stopped on exit, also when start-up fails half-way.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_TIMEOUT_S = 20.0
_ADMIN_KEY = re.compile(r"admin key:\s+(\S+)")


@dataclass(frozen=True)
class LiveSpace:
    server_pid: int
    control_url: str
    audience_url: str
    space_id: str
    ogg_url: str
    host_token: str
    host_link: str

    @property
    def playlist_url(self) -> str:
        return f"{self.audience_url}/live/{self.space_id}/index.m3u8"


def free_port() -> int:
    # The server does not take port 0 yet: borrow one from the kernel and hand it over.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def townhall_command(*args: str, cpu: int | None = None) -> list[str]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return [*pin, sys.executable, "-m", "townhall", *args]


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def live_space(
    cpu: int | None = None, tone_hz: float = 440.0, server_args: tuple[str, ...] = ()
) -> Iterator[LiveSpace]:
    """A started Space with a tone speaker on stage and its first Ogg page produced."""
    with tempfile.TemporaryDirectory(prefix="townhall-bench-") as data_dir:
        control, audience = free_port(), free_port()
        server = _start_server(Path(data_dir), control, audience, cpu, server_args)
        speaker: subprocess.Popen[bytes] | None = None
        try:
            admin_key = _read_admin_key(server)
            space = _create_and_start(server.pid, control, audience, admin_key)
            speaker = _start_speaker(space, tone_hz)
            _wait_for_program(space)
            yield space
        finally:
            if speaker is not None:
                stop(speaker)
            stop(server)


def _start_server(
    data_dir: Path, control: int, audience: int, cpu: int | None, extra: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    args = [
        "serve",
        "--data-dir",
        str(data_dir),
        "--control-port",
        str(control),
        "--audience-port",
        str(audience),
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        townhall_command(*args, cpu=cpu),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _read_admin_key(server: subprocess.Popen[str]) -> str:
    assert server.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"townhall serve exited early (status {server.poll()})")
        if m := _ADMIN_KEY.search(line):
            return m.group(1)
    raise RuntimeError("townhall serve did not print its admin key in time")


def _create_and_start(pid: int, control: int, audience: int, admin_key: str) -> LiveSpace:
    control_url, audience_url = f"http://127.0.0.1:{control}", f"http://127.0.0.1:{audience}"
    resp = httpx.post(
        f"{control_url}/api/spaces",
        json={"title": "bench"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    resp.raise_for_status()
    body = resp.json()
    httpx.post(
        f"{control_url}/api/spaces/{body['id']}/start",
        headers={"Authorization": f"Bearer {body['host_token']}"},
    ).raise_for_status()
    ogg = f"{audience_url}/live/{body['id']}.ogg"
    return LiveSpace(
        pid, control_url, audience_url, body["id"], ogg, body["host_token"], body["host_link"]
    )


def _start_speaker(space: LiveSpace, tone_hz: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        townhall_command("speak", space.host_link, "--tone", str(tone_hz)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_program(space: LiveSpace) -> None:
    # The playlist answers 503 until the first fMP4 part exists; then both feeds flow.
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            resp = httpx.get(space.playlist_url, timeout=2.0)
            if resp.status_code == 200 and "#EXT-X-PART:" in resp.text:
                return
        time.sleep(0.2)
    raise RuntimeError("the program did not start flowing in time")
