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
from benchmarks.harness.processes import MountRefused, tmpfs
from townhall.feed import ChannelEnded, FeedMessage, HlsInit, HlsPart, OggHeader, OggPages
from townhall.media.hls import HlsConfig
from townhall.media.mixer import FRAME_SAMPLES, SAMPLE_RATE_HZ
from townhall.media.program import ProgramEncoder
from townhall.recording.recorder import Recorder, RecorderConfig, seal_after_crash
from townhall.supervise.messages import RecordingStatus


def tone(i: int, hz: float = 440.0) -> np.ndarray:
    t = (np.arange(FRAME_SAMPLES) + i * FRAME_SAMPLES) / SAMPLE_RATE_HZ
    return (np.sin(2 * np.pi * hz * t) * 0.3 * 32767).astype(np.int16)


def program_feed(
    ticks: int,
    space: str = "sp",
    hz: float = 440.0,
    first_seq: int = 0,
    restarted: bool = False,
    encoder: ProgramEncoder | None = None,
    first_tick: int = 0,
) -> Iterator[FeedMessage]:
    """The messages a stage publishes for ``ticks`` ticks of a tone. ``restarted``: a
    new stage incarnation, whose first part says media time jumped. With ``encoder``
    and ``first_tick``, the same stage carrying on (its header and init are resent, as
    the supervisor replays them to a restarted recorder)."""
    continuing = encoder is not None
    encoder = encoder or ProgramEncoder()
    header_sent = init_sent = False
    parts = first_seq
    for i in range(first_tick, first_tick + ticks):
        out = encoder.encode(tone(i, hz))
        if (out.ogg_pages or continuing) and not header_sent:
            header_sent = True
            yield OggHeader(space, encoder.ogg_header)
        if out.ogg_pages:
            yield OggPages(space, b"".join(p.data for p in out.ogg_pages), float(i))
        for frag in out.fragments:
            if not init_sent and encoder.init_segment:
                init_sent = True
                yield HlsInit(space, encoder.init_segment)
            duration_s = frag.sample_count * FRAME_SAMPLES / SAMPLE_RATE_HZ
            first = restarted and parts == first_seq
            yield HlsPart(space, frag.data, duration_s, 1e9 + i * 0.02, parts, first)
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


# -- a failing disk ------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB filesystem: writes fail with ENOSPC as they would on a full disk."""
    try:
        with tmpfs(tmp_path / "tiny", size_kib=64) as root:
            yield root
    except MountRefused as refused:
        pytest.skip(str(refused))


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


# -- restarts: of the stage, of the recorder -----------------------------------------------
def ffmpeg_decode(path: Path) -> np.ndarray:
    """Decode with the ffmpeg command line (a real player's demuxer) to 48 kHz mono."""
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", "48000", "-"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    return np.frombuffer(done.stdout, np.float32)


def vod_lines(root: Path) -> list[str]:
    return (root / "sp" / "vod.m3u8").read_text().splitlines()


def segment_names(root: Path) -> list[str]:
    return [line for line in vod_lines(root) if line.endswith(".m4s")]


def test_a_restarted_stage_is_chained_into_one_replay_with_both_sides_audible(
    tmp_path: Path,
) -> None:
    """Two stage incarnations (two encoders, new serials): one Ogg file of two chained
    streams and one VOD playlist with the gap marked, both played end to end by ffmpeg."""

    async def scenario() -> None:
        rec = recorder(tmp_path)
        for msg in program_feed(250, hz=440):  # 5 s
            rec.publish(msg)
        # The stage died; its successor starts 3 s of media time later, on a boundary.
        for msg in program_feed(250, hz=880, first_seq=16, restarted=True):
            rec.publish(msg)
        rec.publish(ChannelEnded("sp", 2e9))

    asyncio.run(scenario())
    ogg = (tmp_path / "sp.ogg").read_bytes()
    assert ogg.count(b"OpusHead") == 2  # two logical streams, chained
    audio = ffmpeg_decode(tmp_path / "sp.ogg")
    half = len(audio) // 2
    assert len(audio) > 9 * SAMPLE_RATE_HZ
    assert amplitude_at(audio[:half], 440) > 0.1 > amplitude_at(audio[:half], 880)
    assert amplitude_at(audio[half:], 880) > 0.1 > amplitude_at(audio[half:], 440)
    lines = vod_lines(tmp_path)
    assert lines.count("#EXT-X-DISCONTINUITY") == 1 and lines[-1] == "#EXT-X-ENDLIST"
    after_gap = lines[lines.index("#EXT-X-DISCONTINUITY") + 2]
    assert after_gap == "s3.m4s"  # 5 s: two full segments and a short one, then the gap
    hls = ffmpeg_decode(tmp_path / "sp" / "vod.m3u8")
    listed_s = sum(float(x[8:].rstrip(",")) for x in lines if x.startswith("#EXTINF:"))
    # Both encoders here count media time from 0, so the second side's timestamps go
    # back; ffmpeg's HLS demuxer trims a little at that seam, not a side.
    assert listed_s > 8 and abs(len(hls) / SAMPLE_RATE_HZ - listed_s) < 0.6
    assert amplitude_at(hls[: len(hls) // 2], 440) > 0.1
    assert amplitude_at(hls[len(hls) // 2 :], 880) > 0.1


def test_a_restarted_recorder_appends_to_a_live_spaces_files(tmp_path: Path) -> None:
    """The recorder process was killed mid-Space (mid-write, even) and a new one takes
    over: the same files grow, the header is not written again, the gap is marked."""
    encoder = ProgramEncoder()

    async def scenario() -> Recorder:
        first = recorder(tmp_path)
        for msg in program_feed(300, encoder=encoder):  # 6 s
            first.publish(msg)
        before.extend(segment_names(tmp_path))
        with (tmp_path / "sp.ogg").open("ab") as f:
            f.write(b"OggS\0\2torn")  # killed half way through a page
        for _ in program_feed(100, encoder=encoder, first_tick=300):
            pass  # 2 s the stage produced while no recorder ran
        second = recorder(tmp_path)
        for msg in program_feed(300, encoder=encoder, first_tick=400, first_seq=20):
            second.publish(msg)
        second.publish(ChannelEnded("sp", 2e9))
        return second

    before: list[str] = []
    asyncio.run(scenario())
    ogg = (tmp_path / "sp.ogg").read_bytes()
    assert ogg.count(b"OpusHead") == 1 and b"torn" not in ogg
    audio = ffmpeg_decode(tmp_path / "sp.ogg")
    assert 11 * SAMPLE_RATE_HZ < len(audio) < 14 * SAMPLE_RATE_HZ  # 12 s recorded, 2 s hole
    assert amplitude_at(audio, 440) > 0.1
    names = segment_names(tmp_path)
    assert names[: len(before)] == before and len(names) >= len(before) + 3 >= 5
    assert names == [f"s{n}.m4s" for n in range(len(names))]
    lines = vod_lines(tmp_path)
    assert lines.count("#EXT-X-DISCONTINUITY") == 1 and lines[-1] == "#EXT-X-ENDLIST"
    assert lines[lines.index("#EXT-X-DISCONTINUITY") + 2] == f"s{len(before)}.m4s"
    assert amplitude_at(ffmpeg_decode(tmp_path / "sp" / "vod.m3u8"), 440) > 0.1


def test_a_recorder_started_after_the_space_went_quiet_still_seals_it(tmp_path: Path) -> None:
    asyncio.run(record(tmp_path, ticks=200, finish=False))
    statuses: list[RecordingStatus] = []
    rec = Recorder(tmp_path, HlsConfig(), RecorderConfig(), on_status=statuses.append)
    rec.publish(ChannelEnded("sp", 2e9))
    assert [s.state for s in statuses] == ["sealed"]
    assert vod_lines(tmp_path)[-1] == "#EXT-X-ENDLIST"
    rec.publish(ChannelEnded("never-recorded", 2e9))
    assert not (tmp_path / "never-recorded").exists() and len(statuses) == 1


def test_a_paused_recording_resumes_when_the_disk_has_room_again(
    tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    statuses: list[RecordingStatus] = []
    config = RecorderConfig(fsync_interval_s=0.0, retry_paused_after_s=10.0)
    rec = Recorder(tiny_disk, HlsConfig(), config, statuses.append, clock=lambda: now[0])
    encoder = ProgramEncoder()

    async def scenario() -> None:
        for msg in program_feed(150, encoder=encoder):  # 3 s recorded
            rec.publish(msg)
        fill(tiny_disk / "filler")
        for msg in program_feed(250, encoder=encoder, first_tick=150, first_seq=10):
            rec.publish(msg)  # fails: paused, logged once, not retried yet
        (tiny_disk / "filler").unlink()  # the operator frees the disk
        now[0] += 10.0
        for msg in program_feed(75, encoder=encoder, first_tick=400, first_seq=32):
            rec.publish(msg)  # 10 s after the pause: retried, and it works
        rec.publish(ChannelEnded("sp", 2e9))

    with caplog.at_level(logging.ERROR, logger="townhall.recording.recorder"):
        asyncio.run(scenario())
    assert [s.state for s in statuses] == ["recording", "paused", "recording", "sealed"]
    assert "No space left on device" in statuses[1].detail and statuses[1].write_errors == 1
    assert rec.write_errors == 1 and len(paused_lines(caplog)) == 1
    audio = ffmpeg_decode(tiny_disk / "sp.ogg")
    assert 3.5 * SAMPLE_RATE_HZ < len(audio) < 5 * SAMPLE_RATE_HZ  # before, and after, the hole
    assert amplitude_at(audio[-SAMPLE_RATE_HZ:], 440) > 0.1
    lines = vod_lines(tiny_disk)
    assert lines.count("#EXT-X-DISCONTINUITY") == 1 and lines[-1] == "#EXT-X-ENDLIST"


def test_a_restarted_stage_with_another_init_segment_gets_its_own_map(tmp_path: Path) -> None:
    async def scenario() -> None:
        rec = recorder(tmp_path)
        for msg in program_feed(150):
            rec.publish(msg)
        for msg in program_feed(150, hz=880, first_seq=12, restarted=True):
            if isinstance(msg, HlsInit):  # as if the new encoder's parameters differed
                msg = HlsInit("sp", msg.data + b"\0")
            rec.publish(msg)
        rec.publish(ChannelEnded("sp", 2e9))

    asyncio.run(scenario())
    lines = vod_lines(tmp_path)
    gap = lines.index("#EXT-X-DISCONTINUITY")
    assert lines[gap + 1] == '#EXT-X-MAP:URI="init1.mp4"'
    assert (tmp_path / "sp" / "init1.mp4").read_bytes().endswith(b"\0")
    assert not (tmp_path / "sp" / "init.mp4").read_bytes().endswith(b"\0")


def test_a_sealed_replay_is_not_reopened_by_late_messages(tmp_path: Path) -> None:
    """The hub ends a Space whose stage did not answer; the stage's own end, and its
    last pages, come after: the sealed replay stays as it was."""
    asyncio.run(record(tmp_path, ticks=200, finish=True))
    ogg, playlist = (tmp_path / "sp.ogg").read_bytes(), vod_lines(tmp_path)
    statuses: list[RecordingStatus] = []
    rec = Recorder(tmp_path, HlsConfig(), RecorderConfig(), on_status=statuses.append)
    for msg in program_feed(100, first_seq=40):
        rec.publish(msg)
    rec.publish(ChannelEnded("sp", 2e9))
    assert (tmp_path / "sp.ogg").read_bytes() == ogg and vod_lines(tmp_path) == playlist
    assert not statuses and not rec.recordings
