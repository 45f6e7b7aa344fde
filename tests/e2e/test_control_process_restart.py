"""The control process for real: spawned as the supervisor spawns it, killed with SIGKILL,
replaced by another on the same listening socket, and the Space is still live in the
same roles. The test holds the supervisor's end of the link and plays the hub and the
Space's stage process on it."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx

from townhall.config import ServerConfig
from townhall.control.process import run_control_process
from townhall.store import Store
from townhall.supervise.link import Link, open_link
from townhall.supervise.messages import (
    Connect,
    MemberStatus,
    OpenStage,
    ResyncPresence,
    StageReply,
    StageRequest,
    StageStatus,
)
from townhall.supervise.specs import ControlSpec

ADMIN_KEY = "admin-key-for-the-test"


@dataclass
class FakeHub:
    """The supervisor's end of one control process's link; answers as the stage would."""

    link: Link | None = None
    received: list[object] = field(default_factory=list)
    connected: set[str] = field(default_factory=set)

    def on_message(self, msg: object) -> None:
        self.received.append(msg)
        if isinstance(msg, StageRequest):
            assert self.link is not None
            if isinstance(msg.op, Connect):
                self.connected.add(msg.op.participant_id)
            self.link.send(StageReply(msg.space_id, msg.request_id, ok=True, sdp="v=0 answer"))

    def report(self, space_id: str) -> None:
        assert self.link is not None
        members = tuple(
            MemberStatus(pid, pid, True, -20.0, 0.1, "connected") for pid in sorted(self.connected)
        )
        self.link.send(StageStatus(space_id, members, 50, 0, 0.02))

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.received if isinstance(m, kind)]


def spawn(config: ServerConfig, listener: socket.socket) -> tuple[BaseProcess, socket.socket]:
    ours, theirs = socket.socketpair()
    proc = multiprocessing.get_context("spawn").Process(
        target=run_control_process, args=(ControlSpec(config, listener), theirs), daemon=True
    )
    proc.start()
    theirs.close()
    return proc, ours


async def eventually(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def roles(client: httpx.AsyncClient, space_id: str, host: str) -> list[tuple[str, ...]]:
    room = (await client.get(f"/api/spaces/{space_id}/room", headers=auth(host))).json()
    seats = [(s["name"], s["role"], str(s["muted"])) for s in room["stage"]]
    return [*seats, *((h["name"], "hand") for h in room["hand_queue"])]


async def scenario(tmp_path: Path) -> None:
    Store(tmp_path / "townhall.sqlite3").setting("admin_key", ADMIN_KEY)
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = listener.getsockname()[1]
    config = ServerConfig(data_dir=tmp_path, control_port=port)
    base = f"http://127.0.0.1:{port}"

    hub = FakeHub()
    proc, ours = spawn(config, listener)
    hub.link = await open_link(ours, hub.on_message)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            health = await client.get("/healthz")  # waits in the backlog until served
            [me] = health.json()["processes"]
            assert (me["role"], me["pid"]) == ("control", proc.pid)
            made = await client.post("/api/spaces", json={"title": "Kill me"},
                                     headers=auth(ADMIN_KEY))  # fmt: skip
            space_id, host = made.json()["id"], made.json()["host_token"]
            assert (
                await client.post(f"/api/spaces/{space_id}/start", headers=auth(host))
            ).is_success
            await eventually(lambda: len(hub.of(OpenStage)) == 1)
            started_at = hub.of(OpenStage)[0].started_at_unix_s

            invite = await client.post(f"/api/spaces/{space_id}/invite", json={"name": "Sam"},
                                       headers=auth(host))  # fmt: skip
            speaker = invite.json()["token"]
            offer = {"sdp": "v=0", "type": "offer"}
            for token in (host, speaker):
                answered = await client.post(f"/api/spaces/{space_id}/stage/offer", json=offer,
                                             headers=auth(token))  # fmt: skip
                assert answered.json() == {"sdp": "v=0 answer", "type": "answer"}
            host_id = Store(config.db_path).space(space_id).host_id
            [speaker_id] = hub.connected - {host_id}
            cmd = f"/api/spaces/{space_id}/commands"
            await client.post(cmd, json={"command": "mute", "target": speaker_id},
                              headers=auth(host))  # fmt: skip
            signed = []
            for name in ("Troll", "Hal"):
                resp = await client.post(f"/api/spaces/{space_id}/listeners", json={"name": name})
                signed.append((resp.json()["token"], resp.json()["session_id"]))
                await client.post(cmd, json={"command": "raise_hand"}, headers=auth(signed[-1][0]))
            (troll, troll_id), _ = signed
            await client.post(cmd, json={"command": "remove", "target": troll_id},
                              headers=auth(host))  # fmt: skip
            hub.report(space_id)
            before = await roles(client, space_id, host)
            assert before == [
                ("Host", "host", "False"),
                ("Sam", "speaker", "True"),
                ("Hal", "hand"),
            ]

        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(hub.link.closed, 10)
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL

        hub = FakeHub()
        proc, ours = spawn(config, listener)
        hub.link = await open_link(ours, hub.on_message)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            after = await roles(client, space_id, host)
            assert after == before
            space = (await client.get(f"/api/spaces/{space_id}")).json()
            assert (space["state"], space["started_at"]) == ("live", started_at)
            await eventually(lambda: len(hub.of(OpenStage)) == 1)
            assert hub.of(OpenStage)[0].started_at_unix_s == started_at
            assert hub.of(ResyncPresence) == [ResyncPresence()]
            refused = await client.post(cmd, json={"command": "raise_hand"}, headers=auth(troll))
            assert refused.status_code == 403 and "removed" in refused.text

        # Its supervisor gone, the control process exits by itself.
        hub.link.close()
        await asyncio.get_running_loop().run_in_executor(None, proc.join, 10)
        assert proc.exitcode is not None
    finally:
        if proc.is_alive():
            proc.kill()
        listener.close()


def test_a_killed_control_process_is_replaced_and_the_space_goes_on(tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))
