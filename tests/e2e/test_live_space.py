"""A live Space end to end: real WebRTC speakers, real listeners, real decoders.

Speakers are aiortc peers sending known tones; listeners are townhall's own Ogg and
LL-HLS clients, PyAV decodes what they received, and Debian's ffmpeg plays the live
URLs. Every audio check is by content: the tone's frequency found by FFT, and the
absence of a speaker's own tone from what they hear.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from benchmarks.harness.audio import (
    SAMPLE_RATE_HZ,
    amplitude_at,
    arrival_of,
    decode,
    has_tone,
    ogg_pages,
    pcm16_to_float,
    peak_frequency,
    tone_windows,
)
from benchmarks.harness.server import Server, Space
from benchmarks.latency import measure_space
from townhall.peers.listen import listen_hls, listen_ogg, parse_playlist, remux_to_ogg
from townhall.peers.sources import ToneSource
from townhall.peers.speak import Speaker

pytestmark = pytest.mark.e2e

TONE_MIN = 0.05  # a 0.3 full-scale tone measures about 0.3 after Opus


@contextlib.asynccontextmanager
async def on_stage(*speakers: Speaker) -> AsyncIterator[None]:
    for s in speakers:
        await s.join()
    try:
        yield
    finally:
        await asyncio.gather(*(s.leave() for s in speakers), return_exceptions=True)


async def live_space(server: Server, title: str) -> Space:
    space = await server.create_space(title)
    await space.start()
    return space


async def mic_checked(space: Space) -> None:
    """On air, and long enough for the server's mic check (300 ms of signal) to pass."""
    await space.wait_program()
    await asyncio.sleep(1.2)


# -- one speaker -------------------------------------------------------------------------


async def test_one_speaker_heard_over_ogg_and_ll_hls(server: Server) -> None:
    space = await live_space(server, "one speaker")
    async with on_stage(Speaker(space.speaker, ToneSource(440))):
        await mic_checked(space)
        ogg, hls = await asyncio.gather(
            listen_ogg(space.ogg_url, 3.0), listen_hls(space.hls_url, 3.0)
        )
        async with httpx.AsyncClient(timeout=10) as client:
            playlist = (await client.get(space.hls_url)).text
    await space.end()

    # Durations are what a player schedules by (8216bis 4.4.4.1, 4.4.4.9): 0.5 s parts,
    # 2 s segments, matching the audio they carry.
    parts = [
        float(line.split("DURATION=")[1].split(",")[0])
        for line in playlist.splitlines()
        if line.startswith("#EXT-X-PART:")
    ]
    segments = [
        float(line[8:].rstrip(",")) for line in playlist.splitlines() if line.startswith("#EXTINF:")
    ]
    assert parts and all(abs(d - 0.5) < 1e-6 for d in parts), playlist
    assert segments and all(abs(d - 2.0) < 1e-6 for d in segments), playlist

    for name, audio in (("ogg", decode(bytes(ogg.data))), ("hls", decode(bytes(hls.data), "mp4"))):
        assert len(audio) > 1.5 * SAMPLE_RATE_HZ, f"{name}: only {len(audio)} samples"
        assert abs(peak_frequency(audio) - 440) < 5, name
        # Per 20 ms window, not one FFT over the capture: a frame the stage concealed
        # under hypervisor steal breaks the tone's phase, and a whole-capture FFT then
        # reads a tone present throughout as faint.
        heard = float(tone_windows(audio, 440).mean())
        assert heard > 0.8, (name, heard)
        assert amplitude_at(audio, 660) < 0.01, name
    # The LL-HLS bytes are a real fMP4 stream: they remux to Ogg without re-encoding.
    assert has_tone(decode(remux_to_ogg(bytes(hls.data))), 440)


# -- two speakers ------------------------------------------------------------------------


async def test_two_speakers_program_has_both_and_each_mix_minus_has_only_the_other(
    server: Server,
) -> None:
    space = await live_space(server, "two speakers")
    a = Speaker(space.speaker, ToneSource(440))
    b = Speaker(await space.invite("B"), ToneSource(660))
    async with on_stage(a, b):
        await mic_checked(space)
        since = time.monotonic() + 0.3  # past the mic check of both
        program = await listen_ogg(space.ogg_url, 2.5)
        heard_a, heard_b = pcm16_to_float(a.heard.pcm(since)), pcm16_to_float(b.heard.pcm(since))
    await space.end()

    mixed = decode(bytes(program.data))
    assert amplitude_at(mixed, 440) > 0.08 and amplitude_at(mixed, 660) > 0.08
    assert len(heard_a) > SAMPLE_RATE_HZ and len(heard_b) > SAMPLE_RATE_HZ
    a_own, a_other = amplitude_at(heard_a, 440), amplitude_at(heard_a, 660)
    b_own, b_other = amplitude_at(heard_b, 660), amplitude_at(heard_b, 440)
    print(
        f"\nmix-minus: A hears 660 at {a_other:.3f}, own 440 at {a_own:.5f}; "
        f"B hears 440 at {b_other:.3f}, own 660 at {b_own:.5f}"
    )
    assert a_other > 0.08 and b_other > 0.08
    # Own tone at least 40 dB under the other speaker's: removed, not just attenuated.
    assert a_own < a_other / 100, (a_own, a_other)
    assert b_own < b_other / 100, (b_own, b_other)


# -- replay ------------------------------------------------------------------------------


async def test_replay_ogg_and_vod_hls_hold_the_tone_within_5_s_of_the_end(server: Server) -> None:
    space = await live_space(server, "replay")
    async with on_stage(Speaker(space.speaker, ToneSource(440))):
        await mic_checked(space)
        await asyncio.sleep(2.5)
    ended = await space.end()
    ended_at = time.monotonic()
    assert ended["replay"] == {"ogg": space.replay_ogg_url, "hls": space.replay_hls_url}

    async with httpx.AsyncClient(timeout=5) as client:
        while (ogg := await client.get(space.replay_ogg_url)).status_code != 200:
            assert time.monotonic() - ended_at < 5, ogg.text
            await asyncio.sleep(0.1)
        playlist = (await client.get(space.replay_hls_url)).text
        view = parse_playlist(playlist)
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and view.ended
        assert view.init_uri == "init.mp4" and view.segment_uris
        base = space.replay_hls_url.rsplit("/", 1)[0]
        fmp4 = (await client.get(f"{base}/{view.init_uri}")).content
        for uri in view.segment_uris:
            seg = await client.get(f"{base}/{uri}")
            assert seg.status_code == 200, seg.text
            fmp4 += seg.content
    assert time.monotonic() - ended_at < 5

    audio = decode(ogg.content)
    assert len(audio) > 2.5 * SAMPLE_RATE_HZ
    assert abs(peak_frequency(audio) - 440) < 5
    vod = decode(fmp4, "mp4")
    assert abs(peak_frequency(vod) - 440) < 5
    assert abs(len(vod) - len(audio)) < 0.6 * SAMPLE_RATE_HZ  # the same program, both ways
    # ...and ffmpeg plays the VOD playlist itself.
    assert_ffmpeg_plays(space.replay_hls_url, seconds=2)


# -- ffmpeg as a real player ---------------------------------------------------------------


def ffmpeg_cmd(url: str, seconds: float) -> list[str]:
    return ["ffmpeg", "-nostdin", "-v", "error", "-t", str(seconds), "-i", url, "-f", "null", "-"]


def assert_ffmpeg_plays(url: str, seconds: float) -> None:
    done = subprocess.run(ffmpeg_cmd(url, seconds), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", (
        f"ffmpeg on {url}: {done.returncode}\n{done.stderr}"
    )


async def first_full_segment(space: Space, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while not parse_playlist((await client.get(space.hls_url)).text).segment_uris:
            assert time.monotonic() < deadline, "no full segment listed"
            await asyncio.sleep(0.1)


async def test_ffmpeg_plays_ll_hls_and_ogg_without_errors(server: Server) -> None:
    space = await live_space(server, "ffmpeg")
    async with on_stage(Speaker(space.speaker, ToneSource(440))):
        await mic_checked(space)
        # ffmpeg 5.1 is no LL-HLS client: it ignores EXT-X-PART and gives up ("does not
        # contain any stream") on a playlist that lists parts but no full segment yet.
        await first_full_segment(space)
        procs = [
            await asyncio.create_subprocess_exec(
                *ffmpeg_cmd(url, 3), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            for url in (space.hls_url, space.ogg_url)
        ]
        results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 30)
    await space.end()
    for url, proc, (_out, err) in zip((space.hls_url, space.ogg_url), procs, results, strict=True):
        assert proc.returncode == 0 and err == b"", (
            f"ffmpeg on {url}: {proc.returncode}\n{err.decode()}"
        )


# -- a late joiner ---------------------------------------------------------------------------


async def test_late_joiner_gets_the_live_edge_within_1_s(server: Server) -> None:
    space = await live_space(server, "late joiner")
    async with on_stage(Speaker(space.speaker, ToneSource(440))):
        await mic_checked(space)
        reference = asyncio.create_task(listen_ogg(space.ogg_url, 5.0))
        await asyncio.sleep(3.0)  # the Space has been running a while
        joined_at = time.monotonic()
        late = await listen_ogg(space.ogg_url, 1.5)
        ref = await reference
    await space.end()

    pages = ogg_pages(bytes(late.data))
    assert [p.page.is_header for p in pages[:2]] == [True, True], "headers come first"
    first_media = next(p for p in pages if not p.page.is_header)
    first_media_at = arrival_of(late.arrivals, first_media.end_offset)
    # The live edge when the late listener asked: the newest granule the reference had.
    edge = max(
        p.page.granule
        for p in ogg_pages(bytes(ref.data))
        if arrival_of(ref.arrivals, p.end_offset) <= joined_at
    )
    behind_s = (edge - first_media.page.granule) / SAMPLE_RATE_HZ
    print(
        f"\nlate joiner: first media page after {(first_media_at - joined_at) * 1e3:.0f} ms, "
        f"{behind_s * 1e3:.0f} ms behind the live edge"
    )
    assert first_media_at - joined_at < 1.0
    assert -0.5 < behind_s < 1.0
    assert has_tone(decode(bytes(late.data)), 440)


# -- a speaker who sends nothing ----------------------------------------------------------------


def granule_rate(
    rec_data: bytes, arrivals: list[tuple[float, int]], skip_s: float
) -> tuple[float, float]:
    """(media seconds, wall seconds) between the first page arriving ``skip_s`` in and the last."""
    timed = [
        (arrival_of(arrivals, p.end_offset), p.page.granule)
        for p in ogg_pages(rec_data)
        if not p.page.is_header
    ]
    start = arrivals[0][0] + skip_s
    window = [(at, g) for at, g in timed if at >= start]
    (t0, g0), (t1, g1) = window[0], window[-1]
    return (g1 - g0) / SAMPLE_RATE_HZ, t1 - t0


async def test_silent_then_vanished_speaker_never_stalls_the_program(server: Server) -> None:
    space = await live_space(server, "silent speaker")
    talker = Speaker(space.speaker, ToneSource(440))
    mute = Speaker(await space.invite("mute"), ToneSource(660, start_at=float("inf")))
    async with on_stage(talker, mute):
        await mic_checked(space)
        listener = asyncio.create_task(listen_ogg(space.ogg_url, 5.0))
        await asyncio.sleep(1.5)
        mute.track.stop()  # sends nothing at all from here: no RTP, no goodbye
        await asyncio.sleep(1.5)
        await mute.pc.close()  # and then gone
        rec = await listener
    await space.end()

    media_s, wall_s = granule_rate(bytes(rec.data), rec.arrivals, skip_s=0.3)
    print(
        f"\nwhile a speaker went silent and vanished: {media_s:.2f} s of program in {wall_s:.2f} s"
    )
    assert wall_s > 3.5
    assert 0.9 < media_s / wall_s < 1.1
    # The talker is heard throughout, in every half second.
    audio = decode(bytes(rec.data))
    half = SAMPLE_RATE_HZ // 2
    chunks = [audio[i : i + half] for i in range(0, len(audio) - half + 1, half)]
    assert len(chunks) >= 8
    assert all(has_tone(c, 440) for c in chunks), [round(amplitude_at(c, 440), 3) for c in chunks]
    assert all(not has_tone(c, 660, 0.01) for c in chunks)


# -- latency ---------------------------------------------------------------------------------


async def test_latency_speaker_to_speaker_ogg_and_ll_hls(server: Server) -> None:
    space = await live_space(server, "latency")
    figures = await measure_space(
        space.speaker, await space.invite("B"), space.ogg_url, space.hls_url, bursts=7
    )
    await space.end()
    print("\n" + figures.report())
    for name, values in (
        ("speaker", figures.speaker_to_speaker_s),
        ("ogg", figures.speaker_to_ogg_s),
        ("hls", figures.speaker_to_hls_s),
    ):
        assert len(values) >= 6, f"{name}: only {len(values)} of {figures.bursts_sent} bursts found"
        assert all(v > 0 for v in values), (name, values)
    # ITU-T G.114's bound for conversation (400 ms one way). The benchmark reports the
    # real figure (about 230-260 ms here); on these noisy machines (hypervisor steal
    # measured up to 37%) this test's median once reached 305 ms, so a tighter bound
    # would only be flaky.
    assert figures.speaker_to_speaker_median_s < 0.400
    assert figures.speaker_to_ogg_median_s < 1.5
    assert figures.speaker_to_hls_median_s < 3.0


def test_audio_helpers_see_silence_as_silence() -> None:
    # Guards the guard: the detectors used above must not find tones in nothing.
    quiet = np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)
    assert not has_tone(quiet, 440)
    assert not has_tone(pcm16_to_float(np.zeros(960, dtype=np.int16)), 440)
