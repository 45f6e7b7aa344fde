"""The recorder's own process: the feed from the supervisor in, files and
``RecordingStatus`` out.

The supervisor runs it at a lower CPU priority than the stage and the control plane; its disk
waits (a slow or full disk) stall only itself: the stage's clock never sees them. When
the supervisor link closes it exits without sealing anything: the Spaces are still live,
and the next recorder resumes their files.
"""

from __future__ import annotations

import logging
import socket

import uvloop

from townhall.feed import ChannelEnded, HlsInit, HlsPart, OggHeader, OggPages
from townhall.recording.recorder import Recorder
from townhall.supervise.link import Link, open_link
from townhall.supervise.messages import RecordingStatus
from townhall.supervise.specs import RecorderSpec

log = logging.getLogger(__name__)

# Room snapshots travel the same feed; the recording has no use for them.
FEED_MESSAGES = (OggHeader, OggPages, HlsInit, HlsPart, ChannelEnded)


def run_recorder_process(spec: RecorderSpec, sock: socket.socket) -> None:
    """Entry point of the recorder process; returns when the supervisor goes away."""
    uvloop.run(record(spec, sock))


class _StatusRelay:
    """Statuses to the supervisor; those raised before the link is up wait for it."""

    def __init__(self) -> None:
        self.link: Link | None = None
        self.waiting: list[RecordingStatus] = []

    def __call__(self, status: RecordingStatus) -> None:
        if self.link is None:
            self.waiting.append(status)
        else:
            self.link.send(status)

    def attach(self, link: Link) -> None:
        self.link = link
        for status in self.waiting:
            link.send(status)
        self.waiting.clear()


async def record(spec: RecorderSpec, sock: socket.socket) -> None:
    config = spec.config
    config.recordings_dir.mkdir(parents=True, exist_ok=True)
    relay = _StatusRelay()
    recorder = Recorder(
        config.recordings_dir, config.audience.channel.hls, config.recorder, on_status=relay
    )
    link = await open_link(sock, lambda msg: _publish(recorder, msg))
    relay.attach(link)
    await link.closed
    recorder.close()


def _publish(recorder: Recorder, msg: object) -> None:
    if not isinstance(msg, FEED_MESSAGES):
        return  # the recorder consumes the feed only
    try:
        recorder.publish(msg)
    except Exception:  # a bug in one Space's recording must not stop the others'
        log.exception("the recorder raised on %s for space %s", type(msg).__name__,
                      msg.space_id)  # fmt: skip
