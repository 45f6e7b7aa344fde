"""The host's stage WebSocket, watched from a thread: what the host page would be told,
and when (monotonic clock of this process). Reconnects when the control process that
served it goes away, as the page does."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

RECONNECT_S = 0.2
OPEN_TIMEOUT_S = 3.0
MESSAGES_KEPT = 10_000


@dataclass
class StageWatch:
    """Messages from ``ws(s)://.../api/spaces/{id}/ws?token=...``, kept with their time."""

    url: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: deque[tuple[float, dict[str, Any]]] = field(
        default_factory=lambda: deque(maxlen=MESSAGES_KEPT)
    )
    connected_at: list[float] = field(default_factory=list)  # monotonic, per connection
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> StageWatch:
        self._thread = threading.Thread(target=self._run, name="stage-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def first(self, kind: str, state: str | None, after_s: float) -> float | None:
        """When the first message of ``type`` ``kind`` (and ``state``) after ``after_s``
        arrived; None if none has."""
        with self.lock:
            for at, msg in self.messages:
                matches = msg.get("type") == kind and state in (None, msg.get("state"))
                if at >= after_s and matches:
                    return at
        return None

    def connected_after(self, after_s: float) -> float | None:
        """When it first connected again after ``after_s``; None if it has not."""
        with self.lock:
            return next((at for at in self.connected_at if at >= after_s), None)

    def _run(self) -> None:
        while not self._stop.is_set():
            with (
                contextlib.suppress(OSError, WebSocketException, TimeoutError),
                connect(self.url, open_timeout=OPEN_TIMEOUT_S) as ws,
            ):
                with self.lock:
                    self.connected_at.append(time.monotonic())
                while not self._stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        self._keep(ws.recv(timeout=0.5))
            self._stop.wait(RECONNECT_S)

    def _keep(self, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            return
        if isinstance(msg, dict):
            with self.lock:
                self.messages.append((time.monotonic(), msg))
