"""The recorder: a feed sink that appends every Space's program to disk as it is produced.

Writes, per Space, under ``recordings_dir``:

    {space}.ogg            the Ogg/Opus program, page by page (a valid file at any
                           moment: a crash loses at most the unflushed seconds)
    {space}/init.mp4       CMAF init segment
    {space}/s{n}.m4s       each completed segment
    {space}/vod.m3u8       EVENT playlist while live; VOD with ENDLIST once ended

A Space's files are opened on its first header and sealed on ``ChannelEnded``. Every
write goes to the kernel at once; ``fsync`` runs at least every ``fsync_interval_s``
and once at the end, in a thread, so the 20 ms clock never waits on the disk.

The disk is allowed to fail (full, out of file descriptors): the failing Space's
recording pauses, the error is logged once and counted in ``write_errors``, nothing
reaches the stage, and the end still seals what was written. A write that fails half
way is undone (the Ogg file is cut back to its last whole page, a partial segment is
removed), so the replay stays valid and the space it held is free for the seal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from townhall.feed import ChannelEnded, FeedMessage, HlsInit, HlsPart, OggHeader, OggPages
from townhall.media.hls import HlsConfig, HlsPackager, SegmentCompleted, segment_uri, vod_playlist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecorderConfig:
    fsync_interval_s: float = 2.0
    # The packager only has to complete segments: it keeps this short a live window.
    window_segments: int = 2
    parts_window_segments: int = 1


def seal_after_crash(root: Path, space_id: str) -> None:
    """Close the replay of a Space whose process died: the Ogg file is already valid up
    to its last flushed page; the HLS playlist becomes a VOD with ENDLIST."""
    playlist = root / space_id / "vod.m3u8"
    if not playlist.is_file():
        return
    text = playlist.read_text().replace("#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-PLAYLIST-TYPE:VOD")
    if "#EXT-X-ENDLIST" not in text:
        text += "#EXT-X-ENDLIST\n"
    playlist.write_text(text)


class Recorder:
    """The feed sink: one ``SpaceRecording`` per Space between its first header and its end."""

    def __init__(self, root: Path, hls: HlsConfig, config: RecorderConfig) -> None:
        self.root = root
        self.hls = HlsConfig(
            hls.part_target_s,
            hls.parts_per_segment,
            config.window_segments,
            config.parts_window_segments,
        )
        self.config = config
        self.recordings: dict[str, SpaceRecording] = {}
        self.write_errors = 0  # recordings paused (or seals cut short) by a failing disk

    def publish(self, msg: FeedMessage) -> None:
        rec = self.recordings.get(msg.space_id)
        if rec is None:
            if not isinstance(msg, OggHeader | HlsInit):
                return  # not recording (yet): a Space's files open on its first header
            rec = self.recordings[msg.space_id] = SpaceRecording(
                self.root, msg.space_id, self.hls, self.config
            )
        if isinstance(msg, ChannelEnded):
            del self.recordings[msg.space_id]
        if rec.paused:
            if isinstance(msg, ChannelEnded):
                self._seal_paused(rec)
            return
        try:
            rec.write(msg)
        except OSError as exc:
            self.write_errors += 1
            rec.paused = True
            log.error("recording of space %s paused: %s; its replay keeps what was written",
                      rec.space_id, exc)  # fmt: skip
            if isinstance(msg, ChannelEnded):
                self._seal_paused(rec)

    def _seal_paused(self, rec: SpaceRecording) -> None:
        try:
            rec.seal_as_written()
        except OSError as exc:
            self.write_errors += 1
            log.error("replay of space %s could not be sealed: %s", rec.space_id, exc)


class SpaceRecording:
    """One Space's files. Every method may raise ``OSError``; ``Recorder`` contains it."""

    def __init__(self, root: Path, space_id: str, hls: HlsConfig, config: RecorderConfig) -> None:
        self.space_id = space_id
        self.config = config
        self.dir = root / space_id
        self.ogg_path = root / f"{space_id}.ogg"
        self.paused = False
        self.sealed = False
        self._ogg: BinaryIO | None = None
        self._ogg_bytes = 0  # what the Ogg file holds in whole pages
        self._hls = HlsPackager(hls)
        self._durations: list[float] = []
        self._last_sync_s: float | None = None
        self._syncing = False

    def write(self, msg: FeedMessage) -> None:
        match msg:
            case OggHeader(data=data):
                self._write_ogg(data)
            case OggPages(data=data, at_monotonic_s=at):
                self._write_ogg(data)
                self._maybe_sync(at)
            case HlsInit(data=data):
                self._open()
                (self.dir / "init.mp4").write_bytes(data)
            case HlsPart(data=data, duration_s=duration_s, at_unix_s=at):
                for event in self._hls.add_part(data, duration_s, at):
                    if isinstance(event, SegmentCompleted):
                        self._write_segment(event)
            case ChannelEnded():
                self._seal()

    def _open(self) -> BinaryIO:
        if self._ogg is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            # Unbuffered: each message is one write to the kernel, and a failed write
            # leaves nothing behind in a buffer for a later flush to append.
            self._ogg = self.ogg_path.open("wb", buffering=0)
        return self._ogg

    def _write_ogg(self, data: bytes) -> None:
        ogg = self._open()
        view = memoryview(data)
        try:
            while view:
                view = view[ogg.write(view) or 0 :]
        except OSError:
            with contextlib.suppress(OSError):  # back to the last whole page
                os.ftruncate(ogg.fileno(), self._ogg_bytes)
                ogg.seek(self._ogg_bytes)
            raise
        self._ogg_bytes += len(data)

    def _write_segment(self, event: SegmentCompleted) -> None:
        seg = event.segment
        self._open()
        path = self.dir / segment_uri(seg.msn)
        try:
            path.write_bytes(seg.data)
        except OSError:
            path.unlink(missing_ok=True)  # not in the playlist: it would only hold space
            raise
        self._durations.append(seg.duration_s)
        self._write_playlist(ended=False)

    def _write_playlist(self, ended: bool) -> None:
        text = vod_playlist(self._durations, self._hls.config.segment_target_s)
        if not ended:
            text = text.replace("#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-PLAYLIST-TYPE:EVENT")
            text = text.replace("#EXT-X-ENDLIST\n", "")
        tmp, playlist = self.dir / "vod.m3u8.tmp", self.dir / "vod.m3u8"
        try:
            tmp.write_text(text)
            tmp.replace(playlist)
        except OSError:
            tmp.unlink(missing_ok=True)
            if not ended or not playlist.is_file():
                raise
            # A full disk has no room for a second copy; the final playlist is about
            # as long as the live one, so it fits in the blocks that one holds.
            with playlist.open("r+") as f:
                f.write(text)
                f.truncate()

    def _maybe_sync(self, now_s: float) -> None:
        last = self._last_sync_s
        if self._syncing or (last is not None and now_s - last < self.config.fsync_interval_s):
            return
        assert self._ogg is not None
        self._last_sync_s = now_s
        self._syncing = True
        fd = self._ogg.fileno()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, os.fsync, fd).add_done_callback(self._synced)

    def _synced(self, fut: asyncio.Future[None]) -> None:
        self._syncing = False
        fut.exception()  # retrieved: an fsync racing the seal is harmless

    def _seal(self) -> None:
        """The end: the last short segment, the VOD playlist, the file synced and closed."""
        for event in self._hls.end():
            if isinstance(event, SegmentCompleted):
                self._write_segment(event)
        self.seal_as_written()

    def seal_as_written(self) -> None:
        """Seal without writing more media: after a failure, or as the last step of the end."""
        if self.sealed:
            return
        self.sealed = True
        ogg, self._ogg = self._ogg, None
        if ogg is not None:
            _sync_and_close_later(ogg)
        if self.dir.is_dir():
            self._write_playlist(ended=True)


def _sync_and_close_later(f: BinaryIO) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop: a synchronous caller may wait on the disk
        _sync_and_close(f)
        return
    loop.run_in_executor(None, _sync_and_close, f).add_done_callback(_retrieve)


def _sync_and_close(f: BinaryIO) -> None:
    try:
        os.fsync(f.fileno())
    finally:
        f.close()


def _retrieve(fut: asyncio.Future[None]) -> None:
    if (exc := fut.exception()) is not None:
        log.warning("the final fsync of a recording failed: %s", exc)
