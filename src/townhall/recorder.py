"""The recorder: the program appended to disk as it is produced.

Writes, per Space, under ``recordings_dir``:

    {space}.ogg            the Ogg/Opus program, page by page (a valid file at any
                           moment: a crash loses at most the unflushed seconds)
    {space}/init.mp4       CMAF init segment
    {space}/s{n}.m4s       each completed segment
    {space}/vod.m3u8       EVENT playlist while live; VOD with ENDLIST once ended

Every write goes to the kernel at once; ``fsync`` runs at least every
``fsync_interval_s`` (in a thread, so the 20 ms clock never waits on the disk).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from townhall.media.hls import HlsConfig, HlsPackager, SegmentCompleted, segment_uri, vod_playlist


@dataclass(frozen=True)
class RecorderConfig:
    fsync_interval_s: float = 2.0


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
    def __init__(self, root: Path, space_id: str, hls: HlsConfig, config: RecorderConfig) -> None:
        self.config = config
        self.dir = root / space_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ogg_path = root / f"{space_id}.ogg"
        self._ogg: BinaryIO = self.ogg_path.open("wb")
        self._hls = HlsPackager(HlsConfig(hls.part_target_s, hls.parts_per_segment, 2, 1))
        self._durations: list[float] = []
        self._last_sync = 0.0
        self._syncing = False
        self.finished = False

    def write_ogg(self, data: bytes, now: float) -> None:
        self._ogg.write(data)
        self._ogg.flush()
        self._maybe_sync(now)

    def write_init(self, data: bytes) -> None:
        (self.dir / "init.mp4").write_bytes(data)

    def write_part(self, data: bytes, duration_s: float, now: float) -> None:
        for event in self._hls.add_part(data, duration_s, now):
            if isinstance(event, SegmentCompleted):
                self._write_segment(event)

    def _write_segment(self, event: SegmentCompleted) -> None:
        seg = event.segment
        (self.dir / segment_uri(seg.msn)).write_bytes(seg.data)
        self._durations.append(seg.duration_s)
        self._write_playlist(ended=False)

    def _write_playlist(self, ended: bool) -> None:
        text = vod_playlist(self._durations, self._hls.config.segment_target_s)
        if not ended:
            text = text.replace("#EXT-X-PLAYLIST-TYPE:VOD", "#EXT-X-PLAYLIST-TYPE:EVENT")
            text = text.replace("#EXT-X-ENDLIST\n", "")
        tmp = self.dir / "vod.m3u8.tmp"
        tmp.write_text(text)
        tmp.replace(self.dir / "vod.m3u8")

    def _maybe_sync(self, now: float) -> None:
        if self._syncing or now - self._last_sync < self.config.fsync_interval_s:
            return
        self._last_sync = now
        self._syncing = True
        fd = self._ogg.fileno()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, os.fsync, fd).add_done_callback(self._synced)

    def _synced(self, fut: asyncio.Future[None]) -> None:
        self._syncing = False
        fut.exception()  # retrieved: an fsync racing finish() is harmless

    def finish(self) -> None:
        if self.finished:
            return
        for event in self._hls.end():
            if isinstance(event, SegmentCompleted):
                self._write_segment(event)
        self._write_playlist(ended=True)
        self._ogg.flush()
        os.fsync(self._ogg.fileno())
        self._ogg.close()
        self.finished = True
