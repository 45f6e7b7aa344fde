"""Bounds for the control port that uvicorn does not enforce itself.

uvicorn speaks HTTP/1.1 and WebSocket correctly and is configured with what it has
(keep-alive timeout, WebSocket message size and pings, trusted proxies), but it has no
limit on a request head's size or on how long it may take to arrive, no timeout for a
connection that never sends a request, and no cap on connections (``limit_concurrency``
only answers 503 once the request is read, after the socket and its buffers are taken).
``guarded_protocol`` adds those to uvicorn's own httptools protocol, as a subclass passed
as ``uvicorn.Config(http=...)``:

- a connection over the process's or its address's cap (``ConnectionLedger``) gets 503
  with Retry-After and is closed at once, before anything is read;
- a fresh or keep-alive connection with no request for ``idle_timeout_s`` is closed, even
  if it trickles bytes that are not a request (uvicorn's keep-alive timer restarts on
  any byte);
- a request must arrive whole (head and body) within ``head_timeout_s`` of its first
  byte (slowloris), and its head within ``max_head_bytes`` (else 431): what the parser
  buffers stays bounded by that plus one read.

A WebSocket upgrade hands the transport to another protocol object, which alone hears
the connection close: its ``connection_lost`` is wrapped, so the connection's slot is
released when the WebSocket closes, not at the upgrade.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from townhall.fdbudget import ConnectionLedger


@dataclass(frozen=True)
class PortLimits:
    head_timeout_s: float
    idle_timeout_s: float
    max_head_bytes: int
    # What a refused newcomer is told to wait before it tries again.
    retry_after_s: int = 2


@dataclass
class PortGuard:
    """One process's ledger and limits, shared by all its connections."""

    ledger: ConnectionLedger
    limits: PortLimits
    closed_slow: int = 0  # closed for a head (or body) that took too long
    closed_idle: int = 0  # closed for sending no request
    refused_large: int = 0  # answered 431


def refusal_bytes(status: int, detail: str, retry_after_s: int | None = None) -> bytes:
    """A complete JSON error response that closes the connection."""
    code = HTTPStatus(status).name.lower()
    if status == 503:
        code = "unavailable"
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after_s is not None:
        head.append(f"Retry-After: {retry_after_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_protocol(guard: PortGuard) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, bounded by ``guard`` (see the module docstring)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._address = ""
            self._admitted = False
            self._timer: asyncio.TimerHandle | None = None
            self._reading_head = False
            self._head_bytes = 0

        # -- the connection's slot --------------------------------------------------
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._address = self.client[0] if self.client else ""
            refusal = guard.ledger.admit(self._address)
            if refusal is not None:
                limits = guard.limits
                transport.write(refusal_bytes(503, refusal, limits.retry_after_s))
                transport.close()
                return
            self._admitted = True
            self._arm(guard.limits.idle_timeout_s, self._idle)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._release()
            super().connection_lost(exc)

        def _release(self) -> None:
            if self._admitted:
                self._admitted = False
                guard.ledger.release(self._address)

        def handle_websocket_upgrade(self) -> None:
            self._disarm()
            super().handle_websocket_upgrade()
            upgraded = self.transport.get_protocol()
            if upgraded is self:
                return
            lost: Callable[[Exception | None], None] = upgraded.connection_lost

            def released(exc: Exception | None) -> None:
                try:
                    lost(exc)
                finally:
                    self._release()

            # The transport now calls the WebSocket protocol alone.
            setattr(upgraded, "connection_lost", released)  # noqa: B010

        # -- reading ----------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if not self._admitted or self.transport.is_closing():
                return
            super().data_received(data)
            if self._reading_head:
                self._head_bytes += len(data)
                if self._head_bytes > guard.limits.max_head_bytes:
                    self._too_large()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading_head, self._head_bytes = True, 0
            self._arm(guard.limits.head_timeout_s, self._slow)

        def on_headers_complete(self) -> None:
            self._reading_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()  # the request is in; the application answers it

        def on_response_complete(self) -> None:
            super().on_response_complete()
            idle = self._timer is None and not self.pipeline
            if idle and not self.transport.is_closing():
                self._arm(guard.limits.idle_timeout_s, self._idle)

        # -- timers and refusals ----------------------------------------------------
        def _arm(self, delay_s: float, then: Callable[[], None]) -> None:
            self._disarm()
            self._timer = self.loop.call_later(delay_s, then)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _idle(self) -> None:
            self._timer = None
            guard.closed_idle += 1
            self.transport.close()

        def _slow(self) -> None:
            self._timer = None
            guard.closed_slow += 1
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            # uvicorn answers a request it cannot parse in plain text; every error of
            # this API is JSON saying what was wrong.
            detail = f"malformed HTTP request: {msg}" if msg else "malformed HTTP request"
            self.transport.write(refusal_bytes(400, detail))
            self.transport.close()

        def _too_large(self) -> None:
            self._disarm()
            self._reading_head = False
            guard.refused_large += 1
            limit = guard.limits.max_head_bytes
            detail = f"the request head is over {limit} bytes"
            self.transport.write(refusal_bytes(431, detail))
            self.transport.close()

    return GuardedHttpToolsProtocol
