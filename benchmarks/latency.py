"""Mouth-to-ear latency of a live Space, measured with tone bursts.

    python -m benchmarks latency --control-url http://127.0.0.1:8000 --data-dir ./townhall-data

A speaker bot (A) sends short tone bursts over WebRTC, 440 Hz first and each later one
at its own frequency, so a burst is recognised by its pitch and never confused with
another however late it arrives. The send time of each burst's
first frame is recorded at the source. Three receivers timestamp what they get:

* speaker B on the stage (WebRTC mix-minus): each decoded 20 ms frame's arrival time;
* an Ogg listener: the arrival time of the page that holds the burst's first frame;
* an LL-HLS listener: the arrival time of the part that holds it.

The burst onsets are found by FFT in each received signal. Sent onsets and found onsets
are paired by frequency, and each pair gives one latency. The figure reported is the median
over the bursts. A 0.6 s tone first passes the mic check (the server lets a speaker into
the program only after 300 ms of real signal), so the first burst is not delayed by it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.harness.audio import (
    WINDOW_SAMPLES,
    arrival_of,
    decode,
    ogg_pages,
    onsets,
    packets_on_page,
    pcm16_to_float,
    tone_windows,
)
from townhall.media.fmp4 import split_boxes, trun_sample_count
from townhall.media.mixer import FRAME_SAMPLES, SAMPLE_RATE_HZ, Pcm, silence
from townhall.peers.links import StageLink, parse_stage_link
from townhall.peers.listen import Received, listen_hls, listen_ogg
from townhall.peers.speak import HeardAudio, Speaker
from townhall.stage.audio import PcmSource

TONE_HZ = 440.0
MIC_CHECK_HZ = 300.0
# 180 Hz apart: more than three 50 Hz FFT bins of a 20 ms window, so no burst leaks
# into another's detector.
BURST_HZ = (440.0, 620.0, 800.0, 980.0, 1160.0, 1340.0, 1520.0, 1700.0, 1880.0)


class BurstSource(PcmSource):
    """A mic-check tone, then silence, then ``count`` bursts once ``first_burst_at`` is set.

    ``onsets`` holds the monotonic time at which each burst's first frame was produced,
    the moment it leaves for the network.
    """

    def __init__(
        self,
        amplitude: float = 0.3,
        count: int = 5,
        period_s: float = 1.0,
        burst_s: float = 0.4,
        warmup_s: float = 0.6,
    ) -> None:
        if count > len(BURST_HZ):
            raise ValueError(f"at most {len(BURST_HZ)} bursts")
        self.amplitude = amplitude
        self.count, self.period_s, self.burst_s, self.warmup_s = count, period_s, burst_s, warmup_s
        self.first_burst_at = math.inf
        self.onsets: list[float] = []
        self._warm_until: float | None = None
        self._n = 0

    def _sounding(self, now: float) -> float | None:
        """The frequency to play now, or None for silence."""
        if self._warm_until is None:
            self._warm_until = now + self.warmup_s
        if now < self._warm_until:
            return MIC_CHECK_HZ
        if now < self.first_burst_at:
            return None
        k, phase = divmod(now - self.first_burst_at, self.period_s)
        if k >= self.count or phase >= self.burst_s:
            return None
        if len(self.onsets) <= k:
            self.onsets.append(now)
        return BURST_HZ[int(k)]

    def next_frame(self, now: float) -> Pcm:
        freq_hz = self._sounding(now)
        if freq_hz is None:
            return silence()
        t = (np.arange(FRAME_SAMPLES) + self._n) / SAMPLE_RATE_HZ
        self._n += FRAME_SAMPLES
        return (np.sin(2 * np.pi * freq_hz * t) * self.amplitude * 32767).astype(np.int16)

    @property
    def last_onset_at(self) -> float:
        return self.first_burst_at + (self.count - 1) * self.period_s


class Silence(PcmSource):
    def next_frame(self, now: float) -> Pcm:
        return silence()


# -- finding the bursts in what arrived ------------------------------------------------


Onsets = dict[float, float]  # burst frequency -> when its first frame arrived


def heard_onsets(heard: HeardAudio, count: int) -> Onsets:
    """Arrival times of burst starts in a speaker's mix-minus (one flag per 20 ms frame)."""
    frames = list(heard.frames)
    signal = np.concatenate([pcm16_to_float(pcm) for _at, pcm in frames]) if frames else np.zeros(0)
    return {f: frames[n // FRAME_SAMPLES][0] for f, n in _sample_onsets(signal, count).items()}


def _sample_onsets(signal: np.ndarray, count: int) -> dict[float, int]:
    """Sample index of the first 20 ms window carrying each burst frequency."""
    found = {}
    for freq_hz in BURST_HZ[:count]:
        starts = onsets(tone_windows(signal, freq_hz))
        if starts:
            found[freq_hz] = starts[0] * WINDOW_SAMPLES
    return found


def ogg_onsets(rec: Received, count: int) -> Onsets:
    """Arrival times of the Ogg pages that carry each burst's first frame."""
    pages = [p for p in ogg_pages(bytes(rec.data)) if not p.page.is_header]
    ends, packet_ends = [], 0
    for p in pages:
        packet_ends += packets_on_page(p.page)
        ends.append((packet_ends, p.end_offset))
    signal = decode(bytes(rec.data))
    pre_skip = _pre_skip(bytes(rec.data))
    return {
        f: _arrival_of_packet((n + pre_skip) // FRAME_SAMPLES, ends, rec)
        for f, n in _sample_onsets(signal, count).items()
    }


def hls_onsets(rec: Received, count: int) -> Onsets:
    """Arrival times of the LL-HLS parts that carry each burst's first frame."""
    boxes, _tail = split_boxes(bytes(rec.data))
    ends, packet_ends, offset = [], 0, 0
    for kind, box in boxes:
        offset += len(box)
        if kind == b"moof":
            packet_ends += trun_sample_count(box)
        elif kind == b"mdat":
            ends.append((packet_ends, offset))
    signal = decode(bytes(rec.data))
    pre_skip = _pre_skip_mp4(bytes(rec.data))
    return {
        f: _arrival_of_packet((n + pre_skip) // FRAME_SAMPLES, ends, rec)
        for f, n in _sample_onsets(signal, count).items()
    }


def _arrival_of_packet(packet: int, ends: Sequence[tuple[int, int]], rec: Received) -> float:
    for packets_so_far, end_offset in ends:
        if packet < packets_so_far:
            return arrival_of(rec.arrivals, end_offset)
    return arrival_of(rec.arrivals, ends[-1][1]) if ends else math.nan


def _pre_skip(ogg: bytes) -> int:
    # RFC 7845 5.1: OpusHead, pre-skip is a little-endian u16 at byte 10.
    i = ogg.find(b"OpusHead")
    return int.from_bytes(ogg[i + 10 : i + 12], "little") if i >= 0 else 0


def _pre_skip_mp4(mp4: bytes) -> int:
    # Opus in ISO BMFF, dOps box: version(1) channels(1) then PreSkip, big-endian u16.
    i = mp4.find(b"dOps")
    return int.from_bytes(mp4[i + 6 : i + 8], "big") if i >= 0 else 0


def pair_latencies(sent: Sequence[float], received: Onsets) -> list[float]:
    """Burst k was sent at ``sent[k]`` at ``BURST_HZ[k]``; a burst never heard is left out."""
    return [received[f] - at for f, at in zip(BURST_HZ, sent, strict=False) if f in received]


# -- the measurement ---------------------------------------------------------------------


@dataclass
class Figures:
    speaker_to_speaker_s: list[float] = field(default_factory=list)
    speaker_to_ogg_s: list[float] = field(default_factory=list)
    speaker_to_hls_s: list[float] = field(default_factory=list)
    bursts_sent: int = 0

    @staticmethod
    def _median(values: list[float]) -> float:
        return statistics.median(values) if values else math.nan

    @property
    def speaker_to_speaker_median_s(self) -> float:
        return self._median(self.speaker_to_speaker_s)

    @property
    def speaker_to_ogg_median_s(self) -> float:
        return self._median(self.speaker_to_ogg_s)

    @property
    def speaker_to_hls_median_s(self) -> float:
        return self._median(self.speaker_to_hls_s)

    def report(self) -> str:
        def row(name: str, values: list[float], median: float) -> str:
            each = " ".join(f"{v * 1e3:.0f}" for v in values)
            return f"{name:<22} median {median * 1e3:6.0f} ms   bursts [{each}] ms"

        return "\n".join(
            [
                f"latency over {self.bursts_sent} tone bursts",
                row(
                    "speaker -> speaker",
                    self.speaker_to_speaker_s,
                    self.speaker_to_speaker_median_s,
                ),
                row("speaker -> Ogg", self.speaker_to_ogg_s, self.speaker_to_ogg_median_s),
                row("speaker -> LL-HLS", self.speaker_to_hls_s, self.speaker_to_hls_median_s),
            ]
        )


async def _post(url: str, token: str, body: dict[str, object] | None = None) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    if resp.status_code >= 300:
        raise RuntimeError(f"POST {url}: {resp.status_code} {resp.text}")
    data: dict[str, object] = resp.json()
    return data


async def _wait_on_air(hls_url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while (await client.get(hls_url)).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{hls_url} never went on air")
            await asyncio.sleep(0.05)


async def measure_space(
    speaker_a: StageLink,
    speaker_b: StageLink,
    ogg_url: str,
    hls_url: str,
    bursts: int = 5,
    period_s: float = 1.0,
) -> Figures:
    """Measure on a Space that is already live; A and B are two stage links."""
    source = BurstSource(count=bursts, period_s=period_s)
    a, b = Speaker(speaker_a, source), Speaker(speaker_b, Silence())
    await a.join()
    await b.join()
    try:
        await _wait_on_air(hls_url)
        await asyncio.sleep(source.warmup_s + 0.3)  # the mic check passes
        tail_s = 3.5
        listen_s = 1.0 + 0.2 + (bursts - 1) * period_s + tail_s
        ogg = asyncio.create_task(listen_ogg(ogg_url, listen_s))
        hls = asyncio.create_task(listen_hls(hls_url, listen_s))
        await asyncio.sleep(1.0)
        source.first_burst_at = time.monotonic() + 0.2
        ogg_rec, hls_rec = await asyncio.gather(ogg, hls)
    finally:
        await asyncio.gather(a.leave(), b.leave())
    return Figures(
        speaker_to_speaker_s=pair_latencies(source.onsets, heard_onsets(b.heard, bursts)),
        speaker_to_ogg_s=pair_latencies(source.onsets, ogg_onsets(ogg_rec, bursts)),
        speaker_to_hls_s=pair_latencies(source.onsets, hls_onsets(hls_rec, bursts)),
        bursts_sent=len(source.onsets),
    )


async def measure(control_url: str, admin_key: str, bursts: int = 5) -> Figures:
    """Create a Space, start it, measure, end it."""
    space = await _post(f"{control_url}/api/spaces", admin_key, {"title": "latency benchmark"})
    api = f"{control_url}/api/spaces/{space['id']}"
    host = str(space["host_token"])
    await _post(f"{api}/start", host)
    invited = await _post(f"{api}/invite", host, {"role": "speaker", "name": "B"})
    audience = space["audience"]
    assert isinstance(audience, dict)
    try:
        return await measure_space(
            parse_stage_link(str(space["speaker_link"])),
            parse_stage_link(str(invited["link"])),
            audience["ogg"],
            audience["hls"],
            bursts,
        )
    finally:
        await _post(f"{api}/end", host)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks latency", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--control-url", default="http://127.0.0.1:8000")
    p.add_argument("--admin-key", help="default: read from --data-dir")
    p.add_argument("--data-dir", type=Path, default=Path("./townhall-data"))
    p.add_argument("--bursts", type=int, default=7)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    key = args.admin_key
    if not key:
        from townhall.store import Store

        key = Store(args.data_dir / "townhall.sqlite3").setting("admin_key", "")
    figures = asyncio.run(measure(args.control_url, key, args.bursts))
    if args.json:
        medians = {
            "speaker_to_speaker_median_s": figures.speaker_to_speaker_median_s,
            "speaker_to_ogg_median_s": figures.speaker_to_ogg_median_s,
            "speaker_to_hls_median_s": figures.speaker_to_hls_median_s,
        }
        print(json.dumps({**asdict(figures), **medians}, indent=2))
    else:
        print(figures.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
