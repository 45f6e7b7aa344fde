"""A node holding a Space another node made, from its copy: the same room, the same
links and tokens (the nodes share the token secret), its stage opened here."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from tests.unit.test_control_app import host, open_town, town_config
from townhall.cluster.config import ClusterConfig
from townhall.config import ServerConfig
from townhall.control.service import SpaceService
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


class SlowCopier:
    """The cluster's copier as the service sees it, writing only when told to."""

    def __init__(self, service: SpaceService) -> None:
        self.service = service
        self.rooms: list[str] = []  # the state of each room whose copy was waited for
        self.written = asyncio.Event()

    async def settled(self, space_id: str) -> None:
        held = self.service.held(space_id)
        assert held is not None
        self.rooms.append(held.room.state.value)
        await self.written.wait()


async def test_an_end_is_answered_only_after_its_ended_room_is_copied(tmp_path: Path) -> None:
    """In a cluster, the end waits for the ended room's copy: a node dying right after
    answering leaves no live copy for another node to take over."""
    async for a in open_town(node(tmp_path, "a")):
        space = await a.create()
        await a.go_live(space)
        copier = SlowCopier(a.th.service)
        a.th.service.ended_copied = copier.settled
        ending = asyncio.create_task(a.post(space, "/end", host(space)))
        await asyncio.sleep(0.2)
        assert copier.rooms == ["ended"]  # the copy waited for is of the ended room
        assert not ending.done()  # and the end is not answered before it is written
        copier.written.set()
        assert (await ending).status_code == 200


async def test_a_space_handed_over_is_not_answered_from_the_older_room(tmp_path: Path) -> None:
    """Another node holds the Space now: this node does not resume it from its journal,
    answers nothing from its older room (its requests go to the holder), and takes it
    up again from the holder's copy if that node goes."""
    async for a in open_town(node(tmp_path, "a")):
        space = await a.create()
        await a.go_live(space)
        space_id = str(space["id"])
        held = a.th.service.held(space_id)
        assert held is not None
        record = a.th.service.space(space_id)
        room_json = record_to_json(held.room.record())
        assert a.th.service.hand_over(space_id) is held
        assert not a.th.service.knows(space_id)
        assert a.th.service.held(space_id) is None
        resp = await a.get(space, "/room", host(space))
        assert resp.status_code == 503, resp.text
        assert a.th.service.resume_live_spaces() == []
        assert a.th.service.space(space_id).state == "live"  # handed over, not ended
        # The holder went: this node takes it up from the copy.
        assert a.th.service.adopt(record, room_json) is not None
        assert a.th.service.knows(space_id)
        assert (await a.get(space, "/room", host(space))).status_code == 200
