"""The recorder in its own process, fed over its supervisor link: it reports each
Space's recording, a recorder killed mid-Space is replaced by one that appends to the
same files, and a recorder whose supervisor goes away exits without sealing."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from benchmarks.harness.audio import amplitude_at
from benchmarks.harness.processes import MountRefused, tmpfs
from tests.unit.test_recorder import ffmpeg_decode, program_feed
from townhall.audience.framing import FrameDecoder, encode_frame
from townhall.config import ServerConfig
from townhall.feed import ChannelEnded, FeedMessage
from townhall.media.mixer import SAMPLE_RATE_HZ
from townhall.media.program import ProgramEncoder
from townhall.recording.process import run_recorder_process
from townhall.supervise.messages import RecordingStatus
from townhall.supervise.specs import RecorderSpec


class RecorderChild:
    """A recorder process and the supervisor's end of its link."""

    def __init__(self, config: ServerConfig) -> None:
        self.link, theirs = socket.socketpair()
        ctx = multiprocessing.get_context("spawn")
        self.proc = ctx.Process(
            target=run_recorder_process, args=(RecorderSpec(config), theirs), daemon=True
        )
        self.proc.start()
        theirs.close()
        self.decoder = FrameDecoder(1 << 20)
        self.statuses: list[RecordingStatus] = []

    def send(self, messages: Iterable[FeedMessage]) -> None:
        for msg in messages:
            self.link.sendall(encode_frame(msg))

    def wait_for(self, state: str, timeout_s: float = 10.0) -> RecordingStatus:
        deadline = time.monotonic() + timeout_s
        self.link.settimeout(timeout_s)
        while True:
            for status in self.statuses:
                if status.state == state:
                    return status
            assert time.monotonic() < deadline, f"no {state!r} status: {self.statuses}"
            self.statuses += self.decoder.feed(self.link.recv(65536))


def test_a_killed_recorder_is_replaced_by_one_that_appends(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path)
    root = config.recordings_dir
    encoder = ProgramEncoder()
    first = RecorderChild(config)
    first.send(program_feed(300, encoder=encoder))  # 6 s
    started = first.wait_for("recording")
    assert started.space_id == "sp" and started.detail == ""
    deadline = time.monotonic() + 10
    while not (root / "sp" / "vod.m3u8").is_file():  # what it was sent is on disk
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    assert first.proc.pid is not None
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.join(5)

    second = RecorderChild(config)
    second.send(program_feed(300, encoder=encoder, first_tick=300, first_seq=14))
    assert second.wait_for("recording").detail == "resumed"
    second.send([ChannelEnded("sp", 2e9)])
    sealed = second.wait_for("sealed")
    assert sealed.write_errors == 0
    second.link.close()  # the supervisor went away: the recorder exits on its own
    second.proc.join(5)
    assert second.proc.exitcode == 0

    ogg = (root / "sp.ogg").read_bytes()
    assert ogg.count(b"OpusHead") == 1  # the same stream, continued
    audio = ffmpeg_decode(root / "sp.ogg")
    assert len(audio) > 10 * SAMPLE_RATE_HZ and amplitude_at(audio, 440) > 0.1
    playlist = (root / "sp" / "vod.m3u8").read_text()
    assert playlist.count("#EXT-X-DISCONTINUITY") == 1 and playlist.endswith("#EXT-X-ENDLIST\n")


def test_a_recorder_whose_supervisor_goes_away_leaves_live_files_appendable(
    tmp_path: Path,
) -> None:
    config = ServerConfig(data_dir=tmp_path)
    child = RecorderChild(config)
    child.send(program_feed(200, space="live"))
    child.wait_for("recording")
    child.link.close()
    child.proc.join(5)
    assert child.proc.exitcode == 0
    playlist = (config.recordings_dir / "live" / "vod.m3u8").read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist and "#EXT-X-ENDLIST" not in playlist


def test_a_full_disk_pauses_the_recording_and_end_still_seals(tmp_path: Path) -> None:
    """A real 64 KiB filesystem under the recordings: it fills up mid-Space."""
    data = tmp_path / "data"
    try:
        with tmpfs(data / "recordings", size_kib=64):
            _record_onto_a_full_disk(data)
    except MountRefused as refused:
        pytest.skip(str(refused))


def _record_onto_a_full_disk(data: Path) -> None:
    child = RecorderChild(ServerConfig(data_dir=data))
    child.send(program_feed(1500))  # 30 s of program, far more than 64 KiB
    paused = child.wait_for("paused")
    assert "No space left on device" in paused.detail and paused.write_errors == 1
    child.send([ChannelEnded("sp", 2e9)])
    assert child.wait_for("sealed").space_id == "sp"
    child.link.close()
    child.proc.join(5)
    playlist = (data / "recordings" / "sp" / "vod.m3u8").read_text()
    assert playlist.endswith("#EXT-X-ENDLIST\n")
    audio = ffmpeg_decode(data / "recordings" / "sp.ogg")
    assert len(audio) > SAMPLE_RATE_HZ and amplitude_at(audio, 440) > 0.1
