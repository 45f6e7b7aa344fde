"""A node's identity in a cluster, and what its control process does with a Space it
takes over or hands over: the copy it writes, the copies it drops, its front page."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.unit.test_control_process import busy_space, config_in, open_control
from townhall import cli
from townhall.cluster.leases import identity_problem
from townhall.cluster.takeover import SpaceCopy
from townhall.control import process
from townhall.live import LiveSpace
from townhall.room.events import RoomEvent
from townhall.room.record import record_to_json
from townhall.room.roles import SpaceState


@pytest.mark.parametrize(
    ("host", "node_url"),
    [
        ("0.0.0.0", ""),
        ("::", ""),
        ("0.0.0.0", "http://0.0.0.0:8000"),
        ("10.0.0.5", "http://[::]:80"),
    ],
)
def test_a_node_known_only_by_a_wildcard_address_is_refused(host: str, node_url: str) -> None:
    problem = identity_problem(host, 8000, node_url)
    assert problem is not None and "cluster.node_url" in problem


@pytest.mark.parametrize(
    ("host", "node_url"),
    [("127.0.0.1", ""), ("::1", ""), ("10.0.0.5", ""), ("0.0.0.0", "http://10.0.0.5:8000")],
)
def test_a_node_with_its_own_address_is_accepted(host: str, node_url: str) -> None:
    assert identity_problem(host, 8000, node_url) is None


def test_serve_refuses_a_cluster_node_on_a_wildcard_address(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[object] = []
    monkeypatch.setattr("townhall.serve.main", served.append)
    argv = ["serve", "--host", "0.0.0.0", "--nats", "nats://127.0.0.1:4222"]
    # A node name alone does not do: the other nodes would forward to 0.0.0.0, themselves.
    assert cli.main([*argv, "--set", "cluster.node_name=a"]) == 2
    assert "cluster.node_url" in capsys.readouterr().err
    assert served == []
    assert cli.main([*argv, "--set", "cluster.node_url=http://10.0.0.5:8000"]) == 0
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 0  # one machine: no cluster
    assert len(served) == 2


async def test_a_space_taken_over_is_copied_at_once_naming_this_node(tmp_path: Path) -> None:
    a = await open_control(config_in(tmp_path / "a"))
    b = await open_control(config_in(tmp_path / "b"))
    try:
        space = await busy_space(a)
        record = a.control.store.space(space.id)
        room_json = record_to_json(a.live(space.id).room.record())
        copied: list[str] = []

        def copy_room(live: LiveSpace, _events: list[RoomEvent]) -> None:
            copied.append(live.space_id)

        b.control.copy_room = copy_room
        assert b.control.adopt(record, room_json)
        assert copied == [space.id]
    finally:
        await a.close()
        await b.close()


async def test_a_space_handed_over_is_forgotten_by_the_copier_and_the_front_page(
    tmp_path: Path,
) -> None:
    a = await open_control(config_in(tmp_path))
    try:
        space = await busy_space(a)
        assert [r.id for r in a.control.service.listed_spaces("live")] == [space.id]
        listed = await a.client.get("/api/spaces?state=live")
        assert listed.status_code == 200 and space.id in listed.text
        forgotten: list[str] = []
        a.control.forget_copy = forgotten.append
        a.control.hand_over(space.id, "node-b holds its lease")
        assert forgotten == [space.id]
        assert a.control.service.listed_spaces("live") == []
        listed = await a.client.get("/api/spaces?state=live")
        assert space.id not in listed.text
    finally:
        await a.close()


async def test_a_space_handed_over_that_ended_on_its_holder_ends_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its holder deleted the lease and its copy says it ended: this node marks it ended
    and stops remembering it as handed over."""
    a = await open_control(config_in(tmp_path))
    try:
        space = await busy_space(a)
        record = a.control.store.space(space.id)
        ended = replace(a.live(space.id).room.record(), state=SpaceState.ENDED)
        a.control.hand_over(space.id, "node-b holds its lease")
        copy = SpaceCopy(record, record_to_json(ended), "node-b", time.time())

        async def read_space_copy(*_args: object) -> SpaceCopy:
            return copy

        monkeypatch.setattr("townhall.cluster.rooms.read_space_copy", read_space_copy)
        follower = SimpleNamespace(connection=None)
        process._end_if_ended_there(a.control, a.control.config, follower, space.id)  # type: ignore[arg-type]
        for _ in range(50):
            if not a.control.service.handed_over(space.id):
                break
            await asyncio.sleep(0.01)
        assert not a.control.service.handed_over(space.id)
        assert a.control.store.space(space.id).state == "ended"
    finally:
        await a.close()
