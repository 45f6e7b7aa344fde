"""The recorder: a feed sink that appends every Space's program to disk as it is produced.

Writes, per Space, under ``recordings_dir``:

    {space}.ogg            the Ogg/Opus program, page by page (a valid file at any
                           moment: a crash loses at most the unflushed seconds); a
                           restarted stage's new logical stream is chained after the
                           old one (RFC 3533 section 4), so it stays one file
    {space}/init.mp4       CMAF init segment (init{n}.mp4 if a restarted stage's differs)
    {space}/s{n}.m4s       each completed segment, numbered from 0 in recording order
    {space}/vod.m3u8       EVENT playlist while live; VOD with ENDLIST once ended; a
                           segment after a gap carries EXT-X-DISCONTINUITY

A Space's files are opened on its first media message and sealed on ``ChannelEnded``;
nothing else seals them, so a recorder that stops (or is killed) while a Space is live
leaves them appendable, and the next one resumes them: the Ogg file is cut back to its
last whole page and appended to, the playlist is read back, and the next segment is
marked as following a gap. Every write goes to the kernel at once; ``fsync`` runs at
least every ``fsync_interval_s`` and once at the end, in a thread, so the loop never
waits on the disk.

The disk is allowed to fail (full, out of file descriptors): the failing Space's
recording pauses, the error is logged once and counted in ``write_errors``, and the end
still seals what was written. A write that fails half way is undone (the Ogg file is cut
back to its last whole page, a partial segment is removed), so the replay stays valid
and the space it held is free for the seal. A paused recording tries again on the first
message ``retry_paused_after_s`` later: an operator who frees the disk gets the rest of
the event, with the hole marked as a gap, and a disk that is still full costs one failed
write per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from townhall.feed import (
    ChannelEnded,
    FeedMessage,
    HlsInit,
    HlsPart,
    OggHeader,
    OggPages,
    RoomUpdate,
)
from townhall.media.hls import HlsConfig, segment_uri
from townhall.recording import vod
from townhall.recording.oggfile import page_serial, read_state
from townhall.supervise.messages import RecordingStatus

log = logging.getLogger(__name__)

RECORDING, PAUSED, SEALED = "recording", "paused", "sealed"


@dataclass(frozen=True)
class RecorderConfig:
    fsync_interval_s: float = 2.0
    # A paused recording (a write failed) tries again on the first message this much later.
    retry_paused_after_s: float = 10.0


def seal_after_crash(root: Path, space_id: str) -> None:
    """Close the replay of a Space that will not resume: the Ogg file is already valid
    up to its last flushed page; the HLS playlist becomes a VOD with ENDLIST."""
    playlist = root / space_id / "vod.m3u8"
    if playlist.is_file():
        playlist.write_text(vod.seal(playlist.read_text()))


StatusSink = Callable[[RecordingStatus], None]


class Recorder:
    """The feed sink: one ``SpaceRecording`` per Space between its first media message
    and its end. ``on_status`` hears each Space start recording, pause and be sealed."""

    def __init__(
        self,
        root: Path,
        hls: HlsConfig,
        config: RecorderConfig,
        on_status: StatusSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.hls = hls
        self.config = config
        self.on_status = on_status
        self.clock = clock
        self.recordings: dict[str, SpaceRecording] = {}
        self.write_errors = 0  # recordings paused (or seals cut short) by a failing disk

    def publish(self, msg: FeedMessage) -> None:
        if isinstance(msg, RoomUpdate):
            return  # the room's snapshots are for live listeners only
        rec = self.recordings.get(msg.space_id)
        if rec is None:
            if isinstance(msg, ChannelEnded) and not _has_files(self.root, msg.space_id):
                return  # never recorded: nothing to seal
            if _sealed(self.root, msg.space_id):
                return  # ended: a late message (or a second end) must not reopen it
            rec = self.recordings[msg.space_id] = SpaceRecording(
                self.root, msg.space_id, self.hls, self.config
            )
        if isinstance(msg, ChannelEnded):
            del self.recordings[msg.space_id]
        if rec.paused and not self._retry_due(rec):
            rec.skip(msg)
            if isinstance(msg, ChannelEnded):
                self._seal_paused(rec)
            return
        retrying = rec.paused
        try:
            opened = rec.write(msg)
        except OSError as exc:
            self._paused(rec, exc, retrying)
            if isinstance(msg, ChannelEnded):
                self._seal_paused(rec)
            return
        if retrying:
            log.warning("recording of space %s resumed after a failed write", rec.space_id)
            self._status(rec, RECORDING, "resumed after a failed write; the hole is a gap")
        elif opened and not isinstance(msg, ChannelEnded):
            self._status(rec, RECORDING, "resumed" if rec.resumed else "")
        if isinstance(msg, ChannelEnded):
            self._status(rec, SEALED)

    def close(self) -> None:
        """Close every file without sealing: the Spaces are still live, and the next
        recorder resumes them."""
        for rec in self.recordings.values():
            rec.close()
        self.recordings.clear()

    def _retry_due(self, rec: SpaceRecording) -> bool:
        return self.clock() - rec.paused_at >= self.config.retry_paused_after_s

    def _paused(self, rec: SpaceRecording, exc: OSError, retrying: bool) -> None:
        rec.pause(self.clock())
        if retrying:
            return  # still failing: logged and counted when it first paused
        self.write_errors += 1
        log.error("recording of space %s paused: %s; its replay keeps what was written",
                  rec.space_id, exc)  # fmt: skip
        self._status(rec, PAUSED, str(exc))

    def _seal_paused(self, rec: SpaceRecording) -> None:
        try:
            rec.seal_as_written()
        except OSError as exc:
            self.write_errors += 1
            log.error("replay of space %s could not be sealed: %s", rec.space_id, exc)
        self._status(rec, SEALED, "sealed as written before the disk failed")

    def _status(self, rec: SpaceRecording, state: str, detail: str = "") -> None:
        if self.on_status is not None:
            self.on_status(RecordingStatus(rec.space_id, state, detail, self.write_errors))


def _has_files(root: Path, space_id: str) -> bool:
    return (root / f"{space_id}.ogg").is_file() or (root / space_id / "vod.m3u8").is_file()


def _sealed(root: Path, space_id: str) -> bool:
    try:
        return vod.is_sealed((root / space_id / "vod.m3u8").read_text())
    except OSError:
        return False


class SpaceRecording:
    """One Space's files. ``write`` may raise ``OSError``; ``Recorder`` contains it."""

    def __init__(self, root: Path, space_id: str, hls: HlsConfig, config: RecorderConfig) -> None:
        self.space_id = space_id
        self.config = config
        self.hls = hls
        self.dir = root / space_id
        self.ogg_path = root / f"{space_id}.ogg"
        self.playlist_path = self.dir / "vod.m3u8"
        self.opened = False
        self.resumed = False  # the files held an earlier recorder's part of this Space
        self.paused = False
        self.paused_at = 0.0
        self.sealed = False
        # Ogg: the file, its length in whole pages, the stream it ends with, the newest
        # header the feed sent (written before the next pages if it is another stream).
        self._ogg: BinaryIO | None = None
        self._ogg_bytes = 0
        self._file_header = b""
        self._file_serial: int | None = None
        self._header: bytes | None = None
        # HLS: the playlist so far, the open segment's parts, the current init segment.
        self._segments: list[vod.VodSegment] = []
        self._parts: list[bytes] = []
        self._parts_s = 0.0
        self._init: bytes | None = None
        self._next_init: bytes | None = None  # a new init, written with the next segment
        self._gap = False  # the next segment follows a gap in media time
        self._map_uri: str | None = None  # the next segment's new EXT-X-MAP
        self._last_sync_s: float | None = None
        self._syncing = False

    # -- the feed ------------------------------------------------------------------
    def write(self, msg: FeedMessage) -> bool:
        """Apply one message; True if this opened the Space's files."""
        opened = self._open()
        match msg:
            case OggHeader(data=data):
                self._header = data
                self._write_header()
            case OggPages(data=data, at_monotonic_s=at):
                self._write_header()
                if page_serial(data) == self._file_serial:
                    self._write_ogg(data)
                    self._maybe_sync(at)
                # Else pages of a stream whose header never reached us: undecodable.
            case HlsInit(data=data):
                self._set_init(data)
            case HlsPart():
                self._add_part(msg)
            case ChannelEnded():
                self._seal()
        if self.paused:
            self.paused = False
        return opened

    def skip(self, msg: FeedMessage) -> None:
        """A message while paused: only what a later resume needs is kept."""
        match msg:
            case OggHeader(data=data):
                self._header = data
            case HlsInit(data=data):
                if data != self._init:
                    self._next_init = data

    def pause(self, now: float) -> None:
        self.paused, self.paused_at = True, now
        self._parts, self._parts_s = [], 0.0  # the open segment lost parts: dropped
        self._gap = self._gap or bool(self._segments)

    # -- opening: new files, or an interrupted recording's ---------------------------
    def _open(self) -> bool:
        if self.opened:
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.ogg_path.is_file():
            state = read_state(self.ogg_path)
            if state.whole_bytes:
                self.resumed = True
            self._ogg_bytes = state.whole_bytes
            self._file_header, self._file_serial = state.header, state.serial
            with self.ogg_path.open("r+b") as f:
                f.truncate(state.whole_bytes)  # a torn last page from a killed writer
        if self.playlist_path.is_file():
            self._segments = vod.parse(self.playlist_path.read_text())
            self.resumed = self.resumed or bool(self._segments)
            self._gap = bool(self._segments)
            maps = [s.map_uri for s in self._segments if s.map_uri is not None]
            init_path = self.dir / (maps[-1] if maps else vod.FIRST_MAP_URI)
            if init_path.is_file():
                self._init = init_path.read_bytes()
        # Unbuffered and appending: each message is one write to the kernel at the end
        # of the file, and a failed write leaves nothing in a buffer for a later flush.
        self._ogg = self.ogg_path.open("ab", buffering=0)
        self.opened = True
        if self.resumed:
            log.info("recording of space %s resumes its files (%d Ogg bytes, %d segments)",
                     self.space_id, self._ogg_bytes, len(self._segments))  # fmt: skip
        return True

    # -- Ogg -----------------------------------------------------------------------
    def _write_header(self) -> None:
        """The newest header, unless the file already ends with that stream: a stage
        that was not restarted continues it (the missed pages are a gap a decoder
        skips); a restarted one is a new stream, chained after the old."""
        data = self._header
        if data is not None and data != self._file_header:
            self._write_ogg(data)
            self._file_header, self._file_serial = data, page_serial(data)

    def _write_ogg(self, data: bytes) -> None:
        ogg = self._ogg
        assert ogg is not None
        view = memoryview(data)
        try:
            while view:
                view = view[ogg.write(view) or 0 :]
        except OSError:
            with contextlib.suppress(OSError):  # back to the last whole page
                os.ftruncate(ogg.fileno(), self._ogg_bytes)
            raise
        self._ogg_bytes += len(data)

    # -- HLS -----------------------------------------------------------------------
    def _set_init(self, data: bytes) -> None:
        if self._init is None and self._next_init is None:
            (self.dir / vod.FIRST_MAP_URI).write_bytes(data)
            self._init = data
        elif data != self._init:
            self._next_init = data  # a restarted stage's encoder: from its first segment

    def _add_part(self, part: HlsPart) -> None:
        if self._init is None and self._next_init is None:
            return  # no init segment: its parts could not be played
        pps = self.hls.parts_per_segment
        if part.discontinuity or (part.seq is not None and part.seq % pps == 0):
            self._close_segment()
            self._gap = self._gap or (part.discontinuity and bool(self._segments))
        self._parts.append(part.data)
        self._parts_s += part.duration_s
        at_end = (part.seq + 1) % pps == 0 if part.seq is not None else len(self._parts) >= pps
        if at_end:
            self._close_segment()

    def _close_segment(self) -> None:
        if not self._parts:
            return
        if self._next_init is not None:
            self._write_next_init()
        msn = len(self._segments)
        path = self.dir / segment_uri(msn)
        try:
            path.write_bytes(b"".join(self._parts))
        except OSError:
            path.unlink(missing_ok=True)  # not in the playlist: it would only hold space
            raise
        self._segments.append(
            vod.VodSegment(segment_uri(msn), self._parts_s, self._gap, self._map_uri)
        )
        self._parts, self._parts_s = [], 0.0
        self._gap, self._map_uri = False, None
        self._write_playlist(ended=False)

    def _write_next_init(self) -> None:
        assert self._next_init is not None
        if self._init is None:  # the first one never made it to disk: it is the first
            (self.dir / vod.FIRST_MAP_URI).write_bytes(self._next_init)
            self._init, self._next_init = self._next_init, None
            return
        uri = f"init{sum(s.map_uri is not None for s in self._segments) + 1}.mp4"
        (self.dir / uri).write_bytes(self._next_init)
        self._init, self._next_init = self._next_init, None
        self._map_uri, self._gap = uri, True

    def _write_playlist(self, ended: bool) -> None:
        text = vod.render(self._segments, self.hls.segment_target_s, ended)
        tmp = self.dir / "vod.m3u8.tmp"
        try:
            tmp.write_text(text)
            tmp.replace(self.playlist_path)
        except OSError:
            tmp.unlink(missing_ok=True)
            if not ended or not self.playlist_path.is_file():
                raise
            # A full disk has no room for a second copy; the final playlist is about
            # as long as the live one, so it fits in the blocks that one holds.
            with self.playlist_path.open("r+") as f:
                f.write(text)
                f.truncate()

    # -- durability and the end ----------------------------------------------------
    def _maybe_sync(self, now_s: float) -> None:
        last = self._last_sync_s
        if self._syncing or (last is not None and now_s - last < self.config.fsync_interval_s):
            return
        assert self._ogg is not None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the final close syncs
        self._last_sync_s = now_s
        self._syncing = True
        loop.run_in_executor(None, os.fsync, self._ogg.fileno()).add_done_callback(self._synced)

    def _synced(self, fut: asyncio.Future[None]) -> None:
        self._syncing = False
        fut.exception()  # retrieved: an fsync racing the seal is harmless

    def _seal(self) -> None:
        """The end: the last short segment, the VOD playlist, the file synced and closed."""
        self._close_segment()
        self.seal_as_written()

    def seal_as_written(self) -> None:
        """Seal without writing more media: after a failure, or as the last step of the end."""
        if self.sealed:
            return
        self.sealed = True
        self.close()
        if self.opened:
            self._write_playlist(ended=True)

    def close(self) -> None:
        ogg, self._ogg = self._ogg, None
        if ogg is not None:
            _sync_and_close_later(ogg)


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
