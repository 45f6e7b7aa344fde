"""Two origin nodes on one NATS cluster: each answers for the other's Spaces.

Node A runs a live Space (a tone bot on its stage); node B, another ``townhall serve
--nats`` with its own data, holds nothing. A's lease in the cluster names it as the
Space's holder, so B sends the Space's requests on to A; once A is gone (SIGKILL) and
its lease lapses, B says so instead of pretending the Space never existed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from benchmarks.harness.nats import NatsCluster, nats_cluster
from benchmarks.harness.processes import kill9
from benchmarks.harness.server import Server, Space, on_air, running_server

pytestmark = pytest.mark.e2e

LEASE_S = 3.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with nats_cluster(3) as c:
        yield c


def cluster_args(cluster: NatsCluster) -> list[str]:
    return ["--nats", cluster.urls, "--set", f"cluster.lease_s={LEASE_S}"]


@pytest.fixture(scope="module")
def node_a(cluster: NatsCluster) -> Iterator[Space]:
    with on_air(server_args=cluster_args(cluster)) as space:
        yield space


@pytest.fixture(scope="module")
def node_b(cluster: NatsCluster, node_a: Space) -> Iterator[Server]:
    with running_server(server_args=cluster_args(cluster)) as server:
        yield server


def via(node: Server, space: Space, path: str = "") -> str:
    return f"{node.control_url}/api/spaces/{space.id}{path}"


def eventually(check: object, timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        resp: httpx.Response = check()  # type: ignore[operator]
        if resp.status_code != 404 or time.monotonic() > deadline:
            return resp
        time.sleep(0.2)


def test_the_other_node_answers_for_the_space(node_a: Space, node_b: Server) -> None:
    here = httpx.get(node_a.api(), timeout=10)
    there = eventually(lambda: httpx.get(via(node_b, node_a), timeout=10), LEASE_S * 2)
    assert there.status_code == 200, there.text
    assert there.json()["title"] == here.json()["title"]
    assert there.json()["state"] == "live"


def test_the_other_node_carries_the_hosts_commands(node_a: Space, node_b: Server) -> None:
    invited = httpx.post(
        via(node_b, node_a, "/invite"),
        json={"role": "speaker", "name": "Through B"},
        headers=node_a.host_headers(),
        timeout=10,
    )
    assert invited.status_code == 201, invited.text
    token = invited.json()["token"]
    # The invitation was made on A: A knows the token B handed out.
    room = httpx.get(node_a.api("/room"), headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert room.status_code == 200, room.text
    # A command through B changes A's room.
    host = httpx.get(node_a.api("/room"), headers=node_a.host_headers(), timeout=10).json()
    host_id = next(s["id"] for s in host["stage"] if s["role"] == "host")
    muted = httpx.post(
        via(node_b, node_a, "/commands"),
        json={"command": "mute", "target": host_id},
        headers=node_a.host_headers(),
        timeout=10,
    )
    assert muted.status_code == 200, muted.text
    after = httpx.get(node_a.api("/room"), headers=node_a.host_headers(), timeout=10).json()
    assert next(s for s in after["stage"] if s["id"] == host_id)["muted"] is True
    # And its errors come back as they are: a forged token is A's 401, said by B.
    forged = httpx.post(
        via(node_b, node_a, "/commands"),
        json={"command": "mute", "target": host_id},
        headers={"Authorization": "Bearer forged"},
        timeout=10,
    )
    assert forged.status_code == 401 and "detail" in forged.json()


def test_an_unknown_space_is_a_404_on_every_node(node_b: Server) -> None:
    resp = httpx.get(f"{node_b.control_url}/api/spaces/nosuchspace", timeout=10)
    assert resp.status_code == 404 and "detail" in resp.json()


def test_when_the_holder_is_gone_the_other_node_says_so(node_a: Space, node_b: Server) -> None:
    kill9(node_a.server.pid)
    node_a.server.proc.wait(10)
    deadline = time.monotonic() + LEASE_S * 3
    while True:
        resp = httpx.get(via(node_b, node_a), timeout=10)
        if resp.status_code == 503:
            break
        assert resp.status_code in (200, 502), resp.text  # forwarded, or A's socket gone
        assert time.monotonic() < deadline, f"still {resp.status_code} after the lease"
        time.sleep(0.2)
    assert resp.json()["error"] == "unavailable"
    assert "stopped answering" in resp.json()["detail"]
    assert int(resp.headers["retry-after"]) > 0
