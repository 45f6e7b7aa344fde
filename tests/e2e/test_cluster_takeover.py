"""A Space taken over by another origin node when its node dies.

Three NATS servers, two ``townhall serve --nats`` origin nodes (A and B) sharing the
token secret, one edge, and a real nginx in front of both control ports as the name
every link carries (``deploy/nginx/townhall-control.conf``, as shipped). A tone bot
speaks on A's stage through that name; a listener hears it on the edge. Then A's whole
process tree is killed (``kill -9``): B takes the Space over from its copy in the
cluster once A's lease lapses, runs its stage, numbers the program on at the edge (a
discontinuity, no part number used twice), the bot reconnects through the shared name
by itself, and the host keeps control through it.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import time

import httpx
import psutil
import pytest
from websockets.sync.client import connect

from benchmarks.harness.caches import nginx_control_front
from benchmarks.harness.nats import edges, nats_cluster
from benchmarks.harness.probe import OggProbe
from benchmarks.harness.processes import free_port, kill9, process_table, stop
from benchmarks.harness.server import Server, running_server, townhall_command

pytestmark = pytest.mark.e2e

TONE_HZ = 440.0
LEASE_S = 3.0
HEARD_WITHIN_S = 15.0
# A's lease lapses (3 s), B waits its grace (1 s) and starts the stage; the bot's
# reconnect schedule then brings it back within its next attempt or two.
TAKEN_OVER_WITHIN_S = 30.0
_PART = re.compile(r'#EXT-X-PART:DURATION=[0-9.]+,URI="p(\d+)\.(\d+)\.m4s"')


def kill_tree(server: Server) -> None:
    """``kill -9`` of a ``townhall serve`` and every process it started, each by pid."""
    children = psutil.Process(server.pid).children(recursive=True)
    kill9(server.pid)
    for child in children:
        kill9(child.pid)
    server.proc.wait(10)


def parts(text: str) -> list[tuple[int, int]]:
    return [(int(m), int(p)) for m, p in _PART.findall(text)]


def room_view(body: dict[str, object]) -> dict[str, object]:
    """What a room is, without who is connected now (that changes with any restart)."""
    seats = body["stage"]
    assert isinstance(seats, list)
    return {
        "state": body["state"],
        "title": body["title"],
        "host_id": body["host_id"],
        "stage": [{k: s[k] for k in ("id", "name", "role", "muted")} for s in seats],
        "pending_invitations": body["pending_invitations"],
        "reaction_tallies": body["reaction_tallies"],
        "hand_count": body["hand_count"],
    }


def until(check: object, within_s: float, what: str) -> object:
    deadline = time.monotonic() + within_s
    while True:
        got = check()  # type: ignore[operator]
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} within {within_s} s"
        time.sleep(0.2)


def heard_on_stage(ws_url: str) -> bool:
    """A stage WebSocket's level reports show someone connected and heard."""
    with connect(ws_url, open_timeout=10) as ws:
        for _ in range(50):
            message = json.loads(ws.recv(timeout=10))
            if message.get("type") == "levels" and any(
                m["connected"] and m["receiving"] for m in message["members"]
            ):
                return True
    return False


def status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_a_space_taken_over_by_another_node_after_its_node_is_killed() -> None:
    front_port = free_port()
    shared = f"http://127.0.0.1:{front_port}"
    secret = secrets.token_urlsafe(32)
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(nats_cluster(3))
        args = [
            "--nats", cluster.urls, "--public-control-url", shared,
            "--set", f"cluster.lease_s={LEASE_S}", "--set", f"cluster.token_secret={secret}",
        ]  # fmt: skip
        node_a = stack.enter_context(running_server(server_args=args))
        node_b = stack.enter_context(running_server(server_args=args))
        front = stack.enter_context(
            nginx_control_front(front_port, [node_a.control_url, node_b.control_url])
        )
        [edge] = stack.enter_context(edges(cluster.urls, 1))

        space = node_a.create_space_sync("taken over")
        space.start_sync()
        assert space.host_link.startswith(shared), space.host_link
        api = f"{front}/api/spaces/{space.id}"
        host = space.host_headers()
        # Both nodes answer for it (B through A's lease) before its links are used.
        until(lambda: status(f"{node_b.control_url}/api/spaces/{space.id}") == 200, 10,
              "B answers for A's Space")  # fmt: skip
        bot = subprocess.Popen(
            townhall_command("speak", space.host_link, "--tone", str(TONE_HZ),
                             "--join-timeout", "60"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stack.callback(stop, bot)
        probe = OggProbe(f"{edge.url}/live/{space.id}.ogg", [TONE_HZ], name="edge", seed=7)
        stack.enter_context(probe)
        hls = f"{edge.url}/live/{space.id}/index.m3u8"

        def heard(after: float, new_stream: bool = False) -> float | None:
            with probe.lock:
                return probe.log.first_with([TONE_HZ], after, sustain=10, new_stream=new_stream)

        until(lambda: heard(time.monotonic() - 60), HEARD_WITHIN_S, "the edge hears A's stage")
        # The host changes the room through the shared name: the copy must carry it.
        reacted = httpx.post(f"{api}/reactions", json={"emoji": "👏"}, headers=host, timeout=10)
        assert reacted.status_code == 200, reacted.text
        invited = httpx.post(f"{api}/invite", json={"role": "speaker", "name": "Guest"},
                             headers=host, timeout=10)  # fmt: skip
        assert invited.status_code == 201, invited.text
        guest = {"Authorization": f"Bearer {invited.json()['token']}"}
        time.sleep(1.0)  # the copy's write to the cluster
        on_a = room_view(httpx.get(f"{node_a.control_url}/api/spaces/{space.id}/room",
                                   headers=host, timeout=10).json())  # fmt: skip
        links_on_a = httpx.get(f"{api}/links", headers=host, timeout=10).json()
        before = parts(httpx.get(hls, timeout=10).text)
        assert before

        # The host's stage WebSocket on B, relayed to A (which holds the Space).
        via_b = node_b.control_url.replace("http://", "ws://") + f"/api/spaces/{space.id}/ws"
        assert heard_on_stage(f"{via_b}?token={space.host_token}"), "nobody heard via B"

        killed_at = time.monotonic()
        kill_tree(node_a)

        # B takes it over: its stage runs, and the edge hears the bot again, on a new
        # stream (B's stage), which only the bot, reconnected to B, can have made.
        until(lambda: any(p.name == f"stage:{space.id}" for p in
                          process_table(node_b.control_url) or []),
              TAKEN_OVER_WITHIN_S, "B runs the Space's stage")  # fmt: skip
        back = until(lambda: heard(killed_at, new_stream=True), TAKEN_OVER_WITHIN_S,
                     "the edge hears the tone from B's stage")  # fmt: skip
        assert isinstance(back, float)
        with probe.lock:
            assert probe.log.disconnects_between(killed_at, time.monotonic()) == 0
        assert bot.poll() is None, "the speaker bot gave up"
        print(f"tone heard from B's stage {back - killed_at:.2f} s after the kill")

        # The numbering at the edge: on from A's, never a number twice, a discontinuity.
        text = httpx.get(hls, timeout=10).text
        after = parts(text)
        assert after[-1] > before[-1]
        assert after == sorted(set(after)), after
        assert "#EXT-X-DISCONTINUITY" in text

        # B's room is A's last, and the links made on A work on B (through the name).
        on_b = httpx.get(f"{node_b.control_url}/api/spaces/{space.id}/room", headers=host,
                         timeout=10)  # fmt: skip
        assert on_b.status_code == 200, on_b.text
        assert room_view(on_b.json()) == on_a
        assert httpx.get(f"{api}/links", headers=host, timeout=10).json() == links_on_a
        assert httpx.get(f"{api}/room", headers=guest, timeout=10).status_code == 200
        # The host's stage WebSocket, through the shared name: B's stage hears the bot.
        ws_url = front.replace("http://", "ws://") + f"/api/spaces/{space.id}/ws"
        assert heard_on_stage(f"{ws_url}?token={space.host_token}"), "nobody heard on B"
        # The host keeps control through the shared name: a command, then the end.
        again = httpx.post(f"{api}/invite", json={"role": "speaker", "name": "Second"},
                           headers=host, timeout=10)  # fmt: skip
        assert again.status_code == 201, again.text
        ended = httpx.post(f"{api}/end", headers=host, timeout=10)
        assert ended.status_code == 200, ended.text
        assert not node_b.tracebacks(), node_b.output()
        print("\n".join(line for line in node_b.log if "taking it over" in line
                        or "numbering on" in line or "taken over" in line))  # fmt: skip
