"""A node that comes back after another node took its Space over.

Three NATS servers and two ``townhall serve --nats`` origin nodes (A and B) sharing the
token secret. A holds a live Space; B takes it over, and the host changes the room on B.
Then A is back with its old data, and must not answer from its older room nor run the
Space's stage: it sends the Space's requests to B.

- **restarted**: A's whole process tree is killed (``kill -9``), B takes the Space over,
  and A is started again on its old data directory;
- **stalled**: A's supervisor is stopped (``SIGSTOP``) past its lease, B takes the Space
  over, and A's supervisor is let go on (``SIGCONT``): its next renewal finds B's lease.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.harness.nats import nats_cluster
from benchmarks.harness.processes import process_table
from benchmarks.harness.server import Server, Space, running_server
from tests.e2e.test_cluster_takeover import kill_tree, room_view, until

pytestmark = pytest.mark.e2e

LEASE_S = 3.0
TAKEN_OVER_WITHIN_S = 30.0
# How long A is watched for a stage of the Space it must not run.
NO_STAGE_FOR_S = 6.0


def node_args(urls: str, secret: str, name: str) -> list[str]:
    return [
        "--nats", urls, "--set", f"cluster.lease_s={LEASE_S}",
        "--set", f"cluster.token_secret={secret}", "--set", f"cluster.node_name={name}",
    ]  # fmt: skip


def runs_stage(node: Server, space: Space) -> bool:
    return any(p.name == f"stage:{space.id}" for p in process_table(node.control_url) or [])


def room_on(node: Server, space: Space) -> httpx.Response:
    return httpx.get(f"{node.control_url}/api/spaces/{space.id}/room",
                     headers=space.host_headers(), timeout=10)  # fmt: skip


def links_on(node: Server, space: Space) -> str:
    resp = httpx.get(f"{node.control_url}/api/spaces/{space.id}/links",
                     headers=space.host_headers(), timeout=10)  # fmt: skip
    assert resp.status_code == 200, resp.text
    return resp.text


def seen_from(node: Server, space: Space) -> tuple[dict[str, object], str]:
    """The room and its links, as ``node`` answers for them."""
    room = room_on(node, space)
    assert room.status_code == 200, room.text
    return room_view(room.json()), links_on(node, space)


def invite(node: Server, space: Space, name: str) -> None:
    resp = httpx.post(f"{node.control_url}/api/spaces/{space.id}/invite",
                      json={"role": "speaker", "name": name}, headers=space.host_headers(),
                      timeout=10)  # fmt: skip
    assert resp.status_code == 201, resp.text


def taken_over_by_b(node_a: Server, node_b: Server, space: Space) -> dict[str, object]:
    """B runs the Space's stage; the host invites someone there (A's room lacks them)."""
    until(lambda: runs_stage(node_b, space), TAKEN_OVER_WITHIN_S, "B runs the Space's stage")
    until(lambda: room_on(node_b, space).status_code == 200, 10, "B answers for the Space")
    invite(node_b, space, "Invited on B")
    assert "Invited on B" in links_on(node_b, space)
    return room_view(room_on(node_b, space).json())


def answers_for_b(node_a: Server, node_b: Server, space: Space) -> None:
    """A answers with B's room, a command through A reaches B's room, and A runs no
    stage of the Space."""
    until(lambda: room_on(node_a, space).status_code == 200, 15, "A answers for the Space")
    assert seen_from(node_a, space) == seen_from(node_b, space)
    assert "Invited on B" in links_on(node_a, space)
    invite(node_a, space, "Invited through A")
    assert "Invited through A" in links_on(node_b, space)
    assert seen_from(node_a, space) == seen_from(node_b, space)
    deadline = time.monotonic() + NO_STAGE_FOR_S
    while time.monotonic() < deadline:
        assert not runs_stage(node_a, space), "A runs a stage of a Space B holds"
        time.sleep(0.3)
    assert runs_stage(node_b, space)


def test_a_node_restarted_on_its_old_data_sends_a_taken_over_space_to_its_holder() -> None:
    secret = secrets.token_urlsafe(32)
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(nats_cluster(3))
        a_data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="townhall-a-")))
        node_a = stack.enter_context(
            running_server(a_data, server_args=node_args(cluster.urls, secret, "node-a"))
        )
        node_b = stack.enter_context(
            running_server(server_args=node_args(cluster.urls, secret, "node-b"))
        )
        space = node_a.create_space_sync("comes back")
        space.start_sync()
        invite(node_a, space, "Invited on A")
        until(lambda: runs_stage(node_a, space), 15, "A runs the Space's stage")
        time.sleep(1.0)  # the copy's write to the cluster

        kill_tree(node_a)
        taken_over_by_b(node_a, node_b, space)

        # A again, on its old data: its journal says the Space is live, on its stage.
        node_a = stack.enter_context(
            running_server(a_data, server_args=node_args(cluster.urls, secret, "node-a"))
        )
        answers_for_b(node_a, node_b, space)
        assert any("handed over" in line for line in node_a.log), node_a.output()
        ended = httpx.post(f"{node_a.control_url}/api/spaces/{space.id}/end",
                           headers=space.host_headers(), timeout=10)  # fmt: skip
        assert ended.status_code == 200, ended.text
        assert room_on(node_b, space).json()["state"] == "ended"
        assert not node_a.tracebacks(), node_a.output()
        assert not node_b.tracebacks(), node_b.output()


def test_a_node_whose_lease_was_taken_while_stalled_closes_its_stage() -> None:
    secret = secrets.token_urlsafe(32)
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(nats_cluster(3))
        node_a = stack.enter_context(
            running_server(server_args=node_args(cluster.urls, secret, "node-a"))
        )
        node_b = stack.enter_context(
            running_server(server_args=node_args(cluster.urls, secret, "node-b"))
        )
        space = node_a.create_space_sync("stalled")
        space.start_sync()
        until(lambda: runs_stage(node_a, space), 15, "A runs the Space's stage")
        time.sleep(1.0)  # the copy's write to the cluster

        # A's supervisor (it renews the leases) stalls; its other processes go on.
        os.kill(node_a.pid, signal.SIGSTOP)
        try:
            taken_over_by_b(node_a, node_b, space)
        finally:
            os.kill(node_a.pid, signal.SIGCONT)
        until(lambda: not runs_stage(node_a, space), 15, "A closes the Space's stage")
        answers_for_b(node_a, node_b, space)
        assert any("handed over" in line for line in node_a.log), node_a.output()
        assert not node_a.tracebacks(), node_a.output()
        assert not node_b.tracebacks(), node_b.output()
