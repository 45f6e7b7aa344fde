"""Private by default: /metrics takes the admin key or moves to its own address; a
listener's room is the public one plus their own state; the stage socket is not theirs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.websockets import WebSocketDisconnect

from benchmarks.harness.metrics import admin_headers, scrape_async
from tests.unit.test_control_app import (
    bearer,
    fake_stages,
    host,
    open_town,
    town_config,
)
from townhall.app import Townhall
from townhall.control.api import create_app, create_metrics_app


async def test_metrics_take_the_admin_key_on_the_control_port(tmp_path: Path) -> None:
    async for town in open_town(town_config(tmp_path)):
        await town.create("scheduled, known only to the admin")
        bare = await town.client.get("/metrics")
        assert bare.status_code == 401 and bare.json()["error"] == "unauthorized"
        wrong = await town.client.get("/metrics", headers=admin_headers("guess"))
        assert wrong.status_code == 401
        text = await scrape_async(town.client, "", town.th.admin_key)
        assert "townhall_listening_now" in text


async def test_metrics_on_their_own_address_leave_the_control_port(tmp_path: Path) -> None:
    config = town_config(tmp_path, metrics_address="127.0.0.1:0")
    th = Townhall(config, stage_factory=fake_stages({}))
    try:
        control = httpx.ASGITransport(app=create_app(th))
        async with httpx.AsyncClient(transport=control, base_url="http://c") as client:
            resp = await client.get("/metrics", headers=admin_headers(th.admin_key))
            assert resp.status_code == 404
        private = httpx.ASGITransport(app=create_metrics_app(th))
        async with httpx.AsyncClient(transport=private, base_url="http://m") as client:
            resp = await client.get("/metrics")  # the address is the protection
            assert resp.status_code == 200 and "townhall_" in resp.text
    finally:
        await th.shutdown()


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_listener_token_is_refused_on_the_stage_socket_until_seated(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    th = Townhall(town_config(tmp_path), stage_factory=fake_stages({}))
    with TestClient(create_app(th)) as client:
        space = client.post("/api/spaces", json={"title": "ws"}, headers=bearer(th.admin_key))
        sid = space.json()["id"]
        client.post(f"/api/spaces/{sid}/start", headers=bearer(host(space.json())))
        listener = client.post(f"/api/spaces/{sid}/listeners", json={"name": "L"}).json()
        url = f"/api/spaces/{sid}/ws?token={listener['token']}"
        with client.websocket_connect(url) as ws, pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4403
        # Invited and accepted, the same token is on stage: the socket is theirs now.
        me, token = listener["session_id"], listener["token"]

        def command(token: str, name: str, target: str | None = None) -> None:
            body = {"command": name} if target is None else {"command": name, "target": target}
            resp = client.post(f"/api/spaces/{sid}/commands", json=body, headers=bearer(token))
            assert resp.status_code == 200, resp.text

        command(token, "raise_hand")
        command(host(space.json()), "invite", me)
        command(token, "accept_invitation")
        with client.websocket_connect(url) as ws:
            assert ws.receive_json()["type"] == "hello"
