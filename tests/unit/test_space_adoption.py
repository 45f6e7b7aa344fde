"""A node holding a Space another node made, from its copy: the same room, the same
links and tokens (the nodes share the token secret), its stage opened here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tests.unit.test_control_app import host, open_town, town_config
from townhall.cluster.config import ClusterConfig
from townhall.config import ServerConfig
from townhall.room.record import record_to_json

SECRET = "a-secret-shared-by-every-origin-node-of-the-cluster"


def node(tmp_path: Path, name: str, secret: str = SECRET) -> ServerConfig:
    config = town_config(tmp_path / name)
    return replace(config, cluster=ClusterConfig(token_secret=secret))


async def test_a_live_space_is_adopted_as_its_copy_says(tmp_path: Path) -> None:
    async for a in open_town(node(tmp_path, "a")):
        space = await a.create()
        await a.go_live(space)
        guest = await a.invite(space, "Guest")
        await a.post(space, "/reactions", host(space), json={"emoji": "👏"})
        held = a.th.service.held(str(space["id"]))
        assert held is not None
        record = a.th.service.space(held.space_id)
        room_json = record_to_json(held.room.record())
        room_on_a = await a.room(space)
        async for b in open_town(node(tmp_path, "b")):
            assert b.th.service.adopt(record, room_json) is not None
            # Its stage runs here now, and the tokens made on A work.
            assert str(space["id"]) in b.stages
            room_on_b = await b.room(space)
            assert room_on_b["stage"] == room_on_a["stage"]
            assert room_on_b["pending_invitations"] == room_on_a["pending_invitations"]
            assert (await b.get(space, "/room", guest)).status_code == 200
            # A second copy changes nothing: the Space is this node's.
            assert b.th.service.adopt(record, room_json) is None
            # And the host ends it here.
            ended = await b.post(space, "/end", host(space))
            assert ended.status_code == 200, ended.text


async def test_an_ended_room_is_not_adopted(tmp_path: Path) -> None:
    async for a in open_town(node(tmp_path, "a")):
        space = await a.create()
        await a.go_live(space)
        await a.post(space, "/end", host(space))
        held = a.th.service.held(str(space["id"]))
        assert held is not None
        room_json = record_to_json(held.room.record())
        async for b in open_town(node(tmp_path, "b")):
            assert b.th.service.adopt(a.th.service.space(held.space_id), room_json) is None
            assert not b.th.service.knows(str(space["id"]))


async def test_without_the_shared_secret_the_links_do_not_verify(tmp_path: Path) -> None:
    async for a in open_town(node(tmp_path, "a")):
        space = await a.create()
        await a.go_live(space)
        held = a.th.service.held(str(space["id"]))
        assert held is not None
        copy = (a.th.service.space(held.space_id), record_to_json(held.room.record()))
        async for b in open_town(node(tmp_path, "b", secret="")):
            b.th.service.adopt(*copy)
            resp = await b.get(space, "/room", host(space))
            assert resp.status_code == 401, resp.text
