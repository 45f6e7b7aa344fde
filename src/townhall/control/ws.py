"""The stage WebSocket: room events and live meters pushed to the people on stage.

Commands go over HTTP (one code path, one set of errors); the socket only pushes. Each
socket has a bounded queue: a client too slow to keep up is closed (code 4408) and
resyncs from the snapshot it gets on reconnect.
"""

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from townhall.control.service import SpaceService
from townhall.errors import TownhallError
from townhall.live import Watcher

# WebSocket close codes in the 4000 range carry the HTTP meaning (4000 + status).
CLOSE_TOO_SLOW = 4408


def install_websocket(app: FastAPI, service: SpaceService) -> None:
    @app.websocket("/api/spaces/{space_id}/ws")
    async def stage_socket(ws: WebSocket, space_id: str, token: str = "", holder: str = "") -> None:
        await ws.accept()
        try:
            watcher = service.watch(space_id, token, holder[:128] or None)
        except TownhallError as err:
            await ws.close(code=4000 + err.status, reason=err.detail[:120])
            return
        try:
            await _pump(ws, watcher)
        finally:
            service.unwatch(watcher)


async def _pump(ws: WebSocket, watcher: Watcher) -> None:
    reader = asyncio.create_task(_drain_incoming(ws))
    try:
        while not reader.done():
            getter = asyncio.create_task(watcher.queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            if watcher.dropped:
                await ws.close(code=CLOSE_TOO_SLOW, reason="too slow; reconnect to resync")
                break
            if watcher.closed is not None:  # removed, demoted or their link revoked
                await ws.close(code=watcher.closed[0], reason=watcher.closed[1])
                break
            try:
                await ws.send_json(getter.result())
            except WebSocketDisconnect:
                break  # the page went away mid-send; the reader sees the close too
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await reader


async def _drain_incoming(ws: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await ws.receive_text()  # pings; anything else is ignored
