"""The feed log: enough of the feed to bring a fresh audience process to the live state."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from townhall.feed import (
    ChannelEnded,
    FeedMessage,
    HlsInit,
    HlsPart,
    OggHeader,
    OggPages,
    RoomUpdate,
)


@dataclass
class _ChannelLog:
    ogg_header: OggHeader | None = None
    hls_init: HlsInit | None = None
    room: RoomUpdate | None = None
    ended: ChannelEnded | None = None
    ogg_pages: deque[OggPages] = field(default_factory=deque)
    hls_parts: deque[HlsPart] = field(default_factory=deque)


class FeedLog:
    """What an audience process started mid-stream needs to serve every live channel at
    once: the headers, the last room snapshot, a few seconds of Ogg pages (the join
    burst) and the LL-HLS window's parts (so its media sequence numbers match). After a
    restarted stage's new Ogg header, only that header and the pages after it.

    Pure and bounded: per channel, at most ``keep_ogg_pages`` and ``keep_hls_parts``
    messages; at most ``keep_ended`` ended channels (served out their grace period).
    """

    def __init__(self, keep_ogg_pages: int, keep_hls_parts: int, keep_ended: int = 64) -> None:
        self.keep_ogg_pages = keep_ogg_pages
        self.keep_hls_parts = keep_hls_parts
        self.keep_ended = keep_ended
        self._channels: OrderedDict[str, _ChannelLog] = OrderedDict()
        self._ended: deque[str] = deque()

    def record(self, msg: FeedMessage) -> None:
        log = self._channels.get(msg.space_id)
        if log is None:
            log = self._channels[msg.space_id] = _ChannelLog(
                ogg_pages=deque(maxlen=self.keep_ogg_pages),
                hls_parts=deque(maxlen=self.keep_hls_parts),
            )
        if log.ended is not None:
            return  # nothing after the end reaches listeners, so nothing to replay
        match msg:
            case OggHeader():
                log.ogg_header = msg
                log.ogg_pages.clear()  # a new logical stream: older pages are not its own
            case HlsInit():
                log.hls_init = msg
            case RoomUpdate():
                log.room = msg
            case OggPages():
                log.ogg_pages.append(msg)  # a bounded deque: the oldest falls out
            case HlsPart():
                log.hls_parts.append(msg)
            case ChannelEnded():
                log.ended = msg
                self._forget_oldest_ended(msg.space_id)

    def _forget_oldest_ended(self, space_id: str) -> None:
        self._ended.append(space_id)
        while len(self._ended) > self.keep_ended:
            self._channels.pop(self._ended.popleft(), None)

    def replay(self) -> list[FeedMessage]:
        """The messages that bring a fresh process to the live state, in order."""
        out: list[FeedMessage] = []
        for log in self._channels.values():
            firsts = (log.ogg_header, log.hls_init, log.room)
            out += [m for m in firsts if m is not None]
            out += log.ogg_pages
            out += log.hls_parts
            if log.ended is not None:
                out.append(log.ended)
        return out

    def __len__(self) -> int:
        return len(self._channels)
