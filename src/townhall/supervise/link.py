"""A child process's framed socket to the supervisor (and the supervisor's end of it).

Frames are ``audience.framing``'s: a length, then a pickled message. Sending never
blocks: the bytes go to the transport, and a peer that lets more than
``max_backlog_bytes`` pile up is cut off (a supervisor that stopped reading is gone; a
child that stopped reading is restarted). ``closed`` resolves when the peer goes away,
which is how a child learns that its supervisor died: it exits rather than run orphaned.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from townhall.audience.framing import FrameDecoder, encode_frame
from townhall.feed import FeedMessage

log = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_BACKLOG_BYTES = 32 * 1024 * 1024


class Link(asyncio.Protocol):
    def __init__(
        self,
        on_message: Callable[[Any], None],
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
    ) -> None:
        self._on_message = on_message
        self._decoder = FrameDecoder(max_frame_bytes)
        self._max_backlog_bytes = max_backlog_bytes
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport; same interface.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except ValueError:
            log.exception("broken frame on the supervisor link; closing it")
            self.close()
            return
        for msg in messages:
            self._on_message(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def deliver_to(self, on_message: Callable[[Any], None]) -> None:
        """Hand the messages that arrive from now on to another handler (a standby
        process that takes up a role)."""
        self._on_message = on_message

    def send(self, msg: object) -> bool:
        """Queue one message; False if the link is closed or was cut for its backlog."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > self._max_backlog_bytes:
            log.error(
                "the peer stopped reading (%d bytes queued); closing the link",
                transport.get_write_buffer_size(),
            )
            transport.abort()
            return False
        transport.write(encode_frame(msg))
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class LinkFeed:
    """A feed sink whose messages go to the hub (the stage's program, the control
    plane's room snapshots). ``Link.send`` only queues bytes, so publishing never blocks."""

    def __init__(self, send: Callable[[object], object]) -> None:
        self._send = send

    def publish(self, msg: FeedMessage) -> None:
        self._send(msg)


async def open_link(
    sock: socket.socket,
    on_message: Callable[[Any], None],
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
) -> Link:
    """Wrap one end of a socketpair (handed over at spawn) in a ``Link``."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    _, link = await loop.create_unix_connection(
        lambda: Link(on_message, max_frame_bytes, max_backlog_bytes), sock=sock
    )
    return link
