"""The stage WebSocket: room events and live meters pushed to the people on stage.

Commands go over HTTP (one code path, one set of errors); the socket only pushes, and
reads nothing but short text pings. What it pushes is bounded per socket (see
:class:`~townhall.live.Watcher`): snapshots and meters are coalesced, events queue up to
a bound past which the client is taken for stuck and closed (4408); it resyncs from the
snapshot it gets on reconnect. A participant holds at most
``control.max_stage_socket_connections`` sockets: a new one closes their oldest (4409).
A binary frame closes the socket with 1003, a message over
``control.max_ws_message_bytes`` with 1009.
"""

import asyncio
import contextlib
import json
from collections.abc import Mapping

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from townhall.control.service import SpaceService
from townhall.errors import TownhallError
from townhall.live import Watcher, WatcherEnd

# WebSocket close codes in the 4000 range carry the HTTP meaning (4000 + status).
CLOSE_TOO_SLOW = 4408
CLOSE_SUPERSEDED = 4409
# RFC 6455: data of a type the endpoint cannot accept, and a message too big to process.
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TOO_BIG = 1009

_CLOSE_CODES: Mapping[WatcherEnd, int] = {
    WatcherEnd.TOO_SLOW: CLOSE_TOO_SLOW,
    WatcherEnd.SUPERSEDED: CLOSE_SUPERSEDED,
}

Closing = tuple[int, str]


def install_websocket(app: FastAPI, service: SpaceService) -> None:
    max_bytes = service.config.max_ws_message_bytes

    @app.websocket("/api/spaces/{space_id}/ws")
    async def stage_socket(ws: WebSocket, space_id: str, token: str = "", holder: str = "") -> None:
        await ws.accept()
        try:
            watcher = service.watch(space_id, token, holder[:128] or None)
        except TownhallError as err:
            await _close(ws, (4000 + err.status, err.detail))
            return
        try:
            await _pump(ws, watcher, max_bytes)
        finally:
            service.unwatch(watcher)


async def _pump(ws: WebSocket, watcher: Watcher, max_bytes: int) -> None:
    reader = asyncio.create_task(_read_incoming(ws, max_bytes))
    closing: Closing | None = None
    try:
        while not reader.done():
            getter = asyncio.create_task(watcher.next_batch())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                closing = reader.result()
                break
            if watcher.ending is not None:
                closing = (_CLOSE_CODES[watcher.ending], watcher.ending.value)
                break
            if watcher.closed is not None:  # removed, demoted or their link revoked
                closing = watcher.closed
                break
            try:
                for message in getter.result():
                    await ws.send_text(json.dumps(message, separators=(",", ":")))
            except (WebSocketDisconnect, RuntimeError):
                break  # the page went away mid-send; the reader sees the close too
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            ended_by_client = await reader
            closing = closing or ended_by_client
    if closing is not None:
        await _close(ws, closing)


async def _read_incoming(ws: WebSocket, max_bytes: int) -> Closing | None:
    """Read pings until the client goes (None) or sends what ends the socket."""
    while True:
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        if message.get("bytes") is not None:
            return (CLOSE_UNSUPPORTED_DATA, "binary frames are not accepted")
        if len((message.get("text") or "").encode()) > max_bytes:
            return (CLOSE_TOO_BIG, f"message over {max_bytes} bytes")


async def _close(ws: WebSocket, closing: Closing) -> None:
    code, reason = closing
    # The reason travels in a control frame: at most 123 bytes of UTF-8.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.close(code=code, reason=reason.encode()[:120].decode(errors="ignore"))
