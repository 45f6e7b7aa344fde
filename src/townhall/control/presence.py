"""Who is listening, as the audience port reports it, counted per Space.

Implements :class:`townhall.audience.server.ListenerPresence` over the listener
counters of the Spaces the control plane holds. A report about a Space it does not
hold is dropped: only a held Space has listeners worth counting. A report past a
counter's bounds (``max_sessions``, the anonymous sessions of one address) is dropped
too: that listener is served, not counted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from townhall.errors import Unavailable
from townhall.room.counting import ListenerCounter


@dataclass(frozen=True)
class CountedPresence:
    counter_of: Callable[[str], ListenerCounter | None]
    clock: Callable[[], float] = time.monotonic

    def stream_opened(self, space_id: str, session_id: str, conn_id: str) -> None:
        if (counter := self.counter_of(space_id)) is not None:
            with contextlib.suppress(Unavailable):  # past the count cap: served, not counted
                counter.connection_opened(session_id, conn_id, self.clock())

    def stream_closed(
        self, space_id: str, session_id: str, conn_id: str, session_ended: bool
    ) -> None:
        if (counter := self.counter_of(space_id)) is not None:
            counter.connection_closed(session_id, conn_id, self.clock())
            if session_ended:
                counter.leave_if_unconnected(session_id, self.clock())

    def seen(self, space_id: str, session_id: str) -> None:
        if (counter := self.counter_of(space_id)) is not None:
            with contextlib.suppress(Unavailable):
                counter.heartbeat(session_id, self.clock())
