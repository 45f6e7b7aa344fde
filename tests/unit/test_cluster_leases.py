"""Leases: which node holds a Space, and when that stops being true."""

from __future__ import annotations

import time

import pytest

from townhall.cluster.leases import Lease, LeaseTable, decode_lease, encode_lease
from townhall.cluster.routing import FORWARDED_BY, RouteToHolder
from townhall.cluster.wire import WireError


def lease(space: str = "s1", at: float = 100.0, node: str = "a") -> Lease:
    return Lease(space, node, f"http://{node}:8000", at)


def test_a_lease_round_trips() -> None:
    assert decode_lease(encode_lease(lease())) == lease()


@pytest.mark.parametrize("data", [b"", b"{}", b"[1]", b'{"space_id": "s"}', b"\xff"])
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_lease(data)


def test_a_renewed_lease_holds_and_a_lapsed_one_does_not() -> None:
    table = LeaseTable(lease_s=3.0, max_leases=10)
    table.put(lease(at=100.0))
    assert table.holder("s1", 102.9) == lease(at=100.0)
    assert table.lapsed("s1", 102.9) is None
    assert table.holder("s1", 103.1) is None
    assert table.lapsed("s1", 103.1) == lease(at=100.0)
    table.put(lease(at=103.0, node="b"))  # another node took it
    assert table.holder("s1", 104.0) == lease(at=103.0, node="b")


def test_a_dropped_lease_is_neither_held_nor_lapsed() -> None:
    table = LeaseTable(lease_s=3.0, max_leases=10)
    table.put(lease())
    table.drop("s1")
    assert table.holder("s1", 100.0) is None and table.lapsed("s1", 200.0) is None


def test_the_table_is_bounded_oldest_first() -> None:
    table = LeaseTable(lease_s=3.0, max_leases=2)
    for i in range(3):
        table.put(lease(space=f"s{i}"))
    assert table.holder("s0", 100.0) is None
    assert table.holder("s2", 100.0) is not None


@pytest.mark.parametrize(
    ("path", "space"),
    [
        ("/api/spaces/abc", "abc"),
        ("/api/spaces/abc/ws", "abc"),
        ("/s/abc", "abc"),
        ("/s/abc/host", "abc"),
        ("/static/app.js", None),
        ("/api/spaces", None),
        ("/spaces/abc.ics", None),
    ],
)
def test_the_requests_sent_on_are_a_spaces_api_socket_and_pages(
    path: str, space: str | None
) -> None:
    async def app(_scope: object, _receive: object, _send: object) -> None:
        return None

    route = RouteToHolder(app, lambda _id: False, LeaseTable(3.0, 10), "b", 1024)
    for kind in ("http", "websocket"):
        assert route._elsewhere({"type": kind, "path": path, "headers": []}) == space
    forwarded = {"type": "http", "path": path, "headers": [(FORWARDED_BY.encode(), b"a")]}
    assert route._elsewhere(forwarded) is None


async def test_a_request_for_a_space_leased_to_this_node_is_not_sent_to_itself() -> None:
    """This node's lease, but no room of the Space here (being taken up, or let go):
    asked again later, never sent on to this node's own URL."""
    answered: list[object] = []

    async def app(_scope: object, _receive: object, _send: object) -> None:
        answered.append("app")

    table = LeaseTable(3.0, 10)
    now = time.time()
    table.put(lease("abc", at=now, node="b"))
    route = RouteToHolder(app, lambda _id: False, table, "b", 1024)
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/api/spaces/abc", "headers": [],
             "query_string": b""}  # fmt: skip
    await route(scope, receive, send)  # type: ignore[arg-type]
    await route.close()
    assert sent[0]["status"] == 503 and answered == []
