"""The recorder writes a valid replay as it goes, and a complete VOD at the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness.audio import amplitude_at, decode
from townhall.feed import ChannelEnded, FeedMessage, HlsInit, HlsPart, OggHeader, OggPages
from townhall.media.hls import HlsConfig
from townhall.media.mixer import FRAME_SAMPLES, SAMPLE_RATE_HZ
from townhall.media.program import ProgramEncoder
from townhall.recording.recorder import Recorder, RecorderConfig, seal_after_crash
from townhall.store import Store


def tone(i: int, hz: float = 440.0) -> np.ndarray:
    t = (np.arange(FRAME_SAMPLES) + i * FRAME_SAMPLES) / SAMPLE_RATE_HZ
    return (np.sin(2 * np.pi * hz * t) * 0.3 * 32767).astype(np.int16)


def program_feed(ticks: int, space: str = "sp") -> Iterator[FeedMessage]:
    """The messages a stage publishes for ``ticks`` ticks of a tone, then its end."""
    encoder = ProgramEncoder()
    header_sent = init_sent = False
    parts = 0
    for i in range(ticks):
        out = encoder.encode(tone(i))
        if out.ogg_pages:
            if not header_sent:
                header_sent = True
                yield OggHeader(space, encoder.ogg_header)
            yield OggPages(space, b"".join(p.data for p in out.ogg_pages), float(i))
        for frag in out.fragments:
            if not init_sent and encoder.init_segment:
                init_sent = True
                yield HlsInit(space, encoder.init_segment)
            duration_s = frag.sample_count * FRAME_SAMPLES / SAMPLE_RATE_HZ
            yield HlsPart(space, frag.data, duration_s, 1e9 + i * 0.02, parts)
            parts += 1


def recorder(root: Path) -> Recorder:
    return Recorder(root, HlsConfig(), RecorderConfig(fsync_interval_s=0.0))


async def record(root: Path, ticks: int, finish: bool) -> Recorder:
    rec = recorder(root)
    for msg in program_feed(ticks):
        rec.publish(msg)
        await asyncio.sleep(0)
    if finish:
        rec.publish(ChannelEnded("sp", 2e9))
    return rec


def test_the_recording_is_playable_while_the_space_is_still_live(tmp_path: Path) -> None:
    asyncio.run(record(tmp_path, ticks=250, finish=False))  # 5 s, never finished
    audio = decode((tmp_path / "sp.ogg").read_bytes())
    assert len(audio) > 4 * SAMPLE_RATE_HZ and amplitude_at(audio, 440) > 0.1
    playlist = (tmp_path / "sp" / "vod.m3u8").read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist and "#EXT-X-ENDLIST" not in playlist


def test_the_finished_recording_is_a_complete_vod(tmp_path: Path) -> None:
    asyncio.run(record(tmp_path, ticks=260, finish=True))  # 5.2 s: a short last segment
    playlist = (tmp_path / "sp" / "vod.m3u8").read_text()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and playlist.endswith("#EXT-X-ENDLIST\n")
    durations = [
        float(line[8:].rstrip(",")) for line in playlist.splitlines() if line.startswith("#EXTINF:")
    ]
    assert durations[:2] == [2.0, 2.0] and 0 < durations[-1] < 2.0
    media = (tmp_path / "sp" / "init.mp4").read_bytes() + b"".join(
        (tmp_path / "sp" / f"s{n}.m4s").read_bytes() for n in range(len(durations))
    )
    audio = decode(media, "mp4")
    assert abs(len(audio) / SAMPLE_RATE_HZ - sum(durations)) < 0.1
    assert amplitude_at(audio, 440) > 0.1


def test_a_crash_loses_seconds_not_the_event(tmp_path: Path) -> None:
    """The process dies mid-Space (the recorder is never finished): on the next start
    the replay is sealed and still holds everything flushed before the crash."""
    asyncio.run(record(tmp_path, ticks=300, finish=False))  # no final page, no ENDLIST
    seal_after_crash(tmp_path, "sp")
    playlist = (tmp_path / "sp" / "vod.m3u8").read_text()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and playlist.endswith("#EXT-X-ENDLIST\n")
    audio = decode((tmp_path / "sp.ogg").read_bytes())
    assert len(audio) > 5.5 * SAMPLE_RATE_HZ and amplitude_at(audio, 440) > 0.1


def test_orphaned_live_spaces_are_ended_on_start(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    live, scheduled = store.create_space("a", "", None), store.create_space("b", "", None)
    store.set_state(live.id, "live", 1.0)
    assert store.end_orphaned(2.0) == [live.id]
    assert store.space(live.id).state == "ended" and store.space(scheduled.id).state == "scheduled"


# -- a failing disk ------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB filesystem: writes fail with ENOSPC as they would on a full disk."""
    root = tmp_path / "tiny"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def fill(path: Path) -> None:
    with path.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def paused_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "paused" in r.getMessage()]


def test_a_full_disk_pauses_the_recording_and_the_end_seals_what_was_written(
    tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> Recorder:
        rec = recorder(tiny_disk)
        for msg in program_feed(ticks=1500):  # 30 s of program, far more than 64 KiB
            rec.publish(msg)  # never raises: the stage's clock must not see the disk
        fill(tiny_disk / "filler")  # and by the end, not a block is left
        rec.publish(ChannelEnded("sp", 2e9))
        return rec

    with caplog.at_level(logging.ERROR, logger="townhall.recording.recorder"):
        rec = asyncio.run(scenario())
    assert rec.write_errors == 1 and len(paused_lines(caplog)) == 1
    assert "No space left on device" in paused_lines(caplog)[0]
    assert not rec.recordings  # sealed and forgotten
    # The Ogg file was cut back to its last whole page: it plays, up to the failure.
    audio = decode((tiny_disk / "sp.ogg").read_bytes())
    assert 1 * SAMPLE_RATE_HZ < len(audio) < 29 * SAMPLE_RATE_HZ
    assert amplitude_at(audio, 440) > 0.1
    # The HLS replay is a sealed VOD of exactly the segments that were written.
    playlist = (tiny_disk / "sp" / "vod.m3u8").read_text()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and playlist.endswith("#EXT-X-ENDLIST\n")
    listed = [line for line in playlist.splitlines() if line.endswith(".m4s")]
    assert listed and sorted(p.name for p in (tiny_disk / "sp").glob("*.m4s")) == sorted(listed)
    media = (tiny_disk / "sp" / "init.mp4").read_bytes() + b"".join(
        (tiny_disk / "sp" / name).read_bytes() for name in listed
    )
    assert amplitude_at(decode(media, "mp4"), 440) > 0.1


def test_a_file_that_fails_every_write_pauses_only_its_space(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/dev/full fails every write with ENOSPC; no privilege needed."""
    (tmp_path / "broken.ogg").symlink_to("/dev/full")

    async def scenario() -> Recorder:
        rec = recorder(tmp_path)
        for broken, healthy in zip(
            program_feed(300, "broken"), program_feed(300, "ok"), strict=False
        ):
            rec.publish(broken)
            rec.publish(healthy)
        rec.publish(ChannelEnded("broken", 2e9))
        rec.publish(ChannelEnded("ok", 2e9))
        return rec

    with caplog.at_level(logging.ERROR, logger="townhall.recording.recorder"):
        rec = asyncio.run(scenario())
    assert rec.write_errors == 1 and len(paused_lines(caplog)) == 1
    assert "broken" in paused_lines(caplog)[0]
    assert (tmp_path / "broken" / "vod.m3u8").read_text().endswith("#EXT-X-ENDLIST\n")
    audio = decode((tmp_path / "ok.ogg").read_bytes())  # the other Space is untouched
    assert len(audio) > 5.5 * SAMPLE_RATE_HZ and amplitude_at(audio, 440) > 0.1
