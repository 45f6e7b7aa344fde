"""Encode the program exactly once and package it for every audience transport.

One libopus encoder (through PyAV) turns each 20 ms program frame into an Opus packet.
The same packet object is muxed into an Ogg stream (the live push stream and the
replay file) and into fragmented MP4 (the LL-HLS parts). However many people listen,
this runs once per Space: per-listener encoding is the anti-pattern that saturates a
core at about 40 listeners (aiortc's default, measured).

Synchronous and I/O-free: PCM in, Ogg pages and fMP4 fragments out.
"""

from __future__ import annotations

import fractions
import io
from dataclasses import dataclass, field

import av
import av.error

from townhall.media.fmp4 import Fmp4Splitter, Fragment
from townhall.media.mixer import FRAME_SAMPLES, SAMPLE_RATE_HZ, Pcm
from townhall.media.ogg import OggPage, OggPageSplitter

_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE_HZ)


@dataclass(frozen=True)
class EncoderConfig:
    bitrate_bps: int = 32_000
    ogg_page_duration_s: float = 0.2
    part_target_s: float = 0.5


@dataclass
class Packaged:
    """What one tick of encoding produced."""

    ogg_pages: list[OggPage] = field(default_factory=list)
    fragments: list[Fragment] = field(default_factory=list)


class _Sink(io.RawIOBase):
    """A write() target for PyAV that hands bytes on as the muxer produces them."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.pending.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        data, self.pending = b"".join(self.pending), []
        return data


class ProgramEncoder:
    """``start_samples``: the first frame's pts in media time (``media.timeline``); Ogg
    granule positions and fMP4 ``tfdt`` count on from it."""

    def __init__(self, config: EncoderConfig | None = None, start_samples: int = 0) -> None:
        self.config = config or EncoderConfig()
        self._ogg_sink, self._mp4_sink = _Sink(), _Sink()
        self._ogg = av.open(self._ogg_sink, "w", format="ogg", options=self._ogg_options())
        self._stream = self._ogg.add_stream("libopus", rate=SAMPLE_RATE_HZ, layout="mono")
        self._stream.bit_rate = self.config.bitrate_bps
        self._mp4 = av.open(self._mp4_sink, "w", format="mp4", options=self._mp4_options())
        self._mp4_stream: av.audio.stream.AudioStream | None = None
        self.ogg = OggPageSplitter()
        self.fmp4 = Fmp4Splitter()
        self._pts = start_samples
        self._closed = False

    def _ogg_options(self) -> dict[str, str]:
        return {"page_duration": str(int(self.config.ogg_page_duration_s * 1e6))}

    def _mp4_options(self) -> dict[str, str]:
        # frag_duration is what cuts audio-only fragments; frag_keyframe alone gives one.
        # frag_discont and make_non_negative keep the first tfdt at the first packet's
        # time: by default the muxer shifts a stream to start at 0, which would reset a
        # restarted stage's media time.
        return {
            "movflags": "frag_keyframe+empty_moov+default_base_moof+frag_discont",
            "frag_duration": str(int(self.config.part_target_s * 1e6)),
            "avoid_negative_ts": "make_non_negative",
        }

    def encode(self, pcm: Pcm) -> Packaged:
        frame = av.AudioFrame.from_ndarray(
            pcm.reshape(1, FRAME_SAMPLES), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE_HZ
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        self._pts += FRAME_SAMPLES
        return self._mux(self._stream.encode(frame))

    def close(self) -> Packaged:
        """Flush the encoder and both muxers; the last Ogg page carries end-of-stream."""
        if self._closed:
            return Packaged()
        self._closed = True
        out = self._mux(self._stream.encode(None))
        self._ogg.close()
        self._mp4.close()
        out.ogg_pages += self.ogg.feed(self._ogg_sink.take())
        out.fragments += self.fmp4.feed(self._mp4_sink.take())
        return out

    def _mux(self, packets: list[av.Packet]) -> Packaged:
        for packet in packets:
            self._ogg.mux(packet)
            packet.stream = self._mp4_output_stream()
            self._mp4.mux(packet)
        return Packaged(
            ogg_pages=self.ogg.feed(self._ogg_sink.take()),
            fragments=self.fmp4.feed(self._mp4_sink.take()),
        )

    def _mp4_output_stream(self) -> av.audio.stream.AudioStream:
        # Created after the first packet: only then does the encoder have the OpusHead
        # extradata that the mp4 muxer needs for its dOps box.
        if self._mp4_stream is None:
            self._mp4_stream = self._mp4.add_stream_from_template(self._stream)
        return self._mp4_stream

    @property
    def ogg_header(self) -> bytes:
        return self.ogg.header

    @property
    def init_segment(self) -> bytes | None:
        return self.fmp4.init_segment
