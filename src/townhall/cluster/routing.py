"""A control node answers for every Space in the cluster: requests for a Space another
node holds are sent on to that node (its lease names it), once.

An ASGI middleware in front of the control API: it only acts on ``/api/spaces/{id}...``
and the pages ``/s/{id}...`` for a Space this node does not know, so a node's own
Spaces never pay for it. HTTP requests are sent on whole; a stage WebSocket is relayed
frame by frame to the holder's, so a moderator's page reaches its Space through any
node (behind a shared name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from townhall.cluster.leases import LeaseTable

# A Space's API, its stage socket and its pages (``/s/{id}/...``).
_SPACE_PATH = re.compile(r"^/(?:api/spaces|s)/([A-Za-z0-9_-]{1,64})(?:/|$)")
FORWARDED_BY = "x-townhall-forwarded-by"
# Not sent on: they describe one connection, not the request.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"}
)


class RouteToHolder:
    def __init__(
        self,
        app: ASGIApp,
        knows: Callable[[str], bool],
        leases: LeaseTable,
        node: str,
        max_body_bytes: int,
        timeout_s: float = 10.0,
        unavailable_retry_after_s: int = 5,
        max_ws_message_bytes: int = 4096,
    ) -> None:
        self.app = app
        self.knows = knows
        self.leases = leases
        self.node = node
        self.max_body_bytes = max_body_bytes
        self.client = httpx.AsyncClient(timeout=timeout_s)
        # When to ask again after a lapsed lease: about when another node takes over.
        self.unavailable_retry_after_s = unavailable_retry_after_s
        self.max_ws_message_bytes = max_ws_message_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        space_id = self._elsewhere(scope)
        if space_id is None:
            return await self.app(scope, receive, send)
        now = time.time()
        lease = self.leases.holder(space_id, now)
        if lease is not None and lease.node == self.node:
            # This node's lease on a Space it does not hold (yet): sent on, the request
            # would come back here. Its room is being taken up, or let go.
            if scope["type"] == "websocket":
                return await self.app(scope, receive, send)
            busy = "this node's hold of this Space is changing"
            return await _json(
                send, 503, "unavailable", busy, retry_after_s=self.unavailable_retry_after_s
            )
        if scope["type"] == "websocket":
            if lease is None:
                return await self.app(scope, receive, send)  # refused there, as ever
            return await self._relay(scope, receive, send, lease.control_url)
        if lease is None:
            if self.leases.lapsed(space_id, now) is None:
                return await self.app(scope, receive, send)  # unknown anywhere: a 404
            gone = "the node holding this Space stopped answering"
            return await _json(
                send, 503, "unavailable", gone, retry_after_s=self.unavailable_retry_after_s
            )
        body = await _body(receive, self.max_body_bytes)
        if body is None:
            return await _json(send, 413, "payload_too_large", "the request body is too large")
        await self._forward(scope, body, lease.control_url, send)

    def _elsewhere(self, scope: Scope) -> str | None:
        """The Space of a request this node should send on, or None."""
        if scope["type"] not in ("http", "websocket"):
            return None
        m = _SPACE_PATH.match(scope["path"])
        if m is None or self.knows(m.group(1)):
            return None
        headers = dict(scope["headers"])
        if FORWARDED_BY.encode() in headers:
            return None  # sent on once already: answer (404) rather than loop
        return m.group(1)

    async def _forward(self, scope: Scope, body: bytes, base_url: str, send: Send) -> None:
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.decode("latin-1").lower() not in _HOP_BY_HOP
        ]
        headers.append((FORWARDED_BY, self.node))
        query = scope.get("query_string", b"").decode("latin-1")
        url = base_url.rstrip("/") + scope["path"] + (f"?{query}" if query else "")
        try:
            resp = await self.client.request(scope["method"], url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return await _json(send, 502, "bad_gateway", "the node holding this Space did "
                               f"not answer: {type(exc).__name__}", retry_after_s=2)  # fmt: skip
        out = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in resp.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-encoding"
        ]
        out.append((b"content-length", str(len(resp.content)).encode()))
        await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
        await send({"type": "http.response.body", "body": resp.content})

    async def _relay(self, scope: Scope, receive: Receive, send: Send, base_url: str) -> None:
        """A stage WebSocket for a Space the holder serves: opened there, relayed here."""
        if (await receive())["type"] != "websocket.connect":
            return
        query = scope.get("query_string", b"").decode("latin-1")
        url = re.sub(r"^http", "ws", base_url.rstrip("/")) + scope["path"]
        url += f"?{query}" if query else ""
        try:
            upstream = await connect(
                url,
                additional_headers={FORWARDED_BY: self.node},
                open_timeout=self.client.timeout.connect,
                max_size=self.max_ws_message_bytes,
                proxy=None,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI):
            # Before accepting: the page sees its handshake refused, and retries.
            return await send({"type": "websocket.close", "code": 1013})
        await send({"type": "websocket.accept"})
        async with upstream:
            down = asyncio.create_task(_downstream(upstream, send))
            up = asyncio.create_task(_upstream(receive, upstream))
            await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
            for task in (down, up):
                task.cancel()
        code = upstream.close_code or 1000
        with contextlib.suppress(RuntimeError, OSError):
            await send({"type": "websocket.close", "code": code,
                        "reason": upstream.close_reason or ""})  # fmt: skip

    async def close(self) -> None:
        await self.client.aclose()


async def _downstream(upstream: ClientConnection, send: Send) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in upstream:
            key = "text" if isinstance(message, str) else "bytes"
            await send({"type": "websocket.send", key: message})


async def _upstream(receive: Receive, upstream: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            await upstream.send(data if data is not None else message.get("bytes") or b"")


async def _body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _json(
    send: Send, status: int, code: str, detail: str, retry_after_s: int | None = None
) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
