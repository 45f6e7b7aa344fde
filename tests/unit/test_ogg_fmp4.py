"""The program encoder's two packagings, checked by parsing and by decoding with PyAV.

Ogg/Opus (RFC 7845) for the push stream and the replay; fragmented MP4 (ISO/IEC
14496-12) for LL-HLS parts. Both come from the same Opus packets, encoded once.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
import pytest

from benchmarks.harness.audio import decode, packets_on_page, peak_frequency
from townhall.media.fmp4 import Fmp4Splitter, Fragment, split_boxes
from townhall.media.mixer import FRAME_SAMPLES, SAMPLE_RATE_HZ, Pcm
from townhall.media.ogg import OggPage, OggPageSplitter, parse_pages
from townhall.media.program import EncoderConfig, ProgramEncoder

SECONDS = 2.0
FRAMES = int(SECONDS * SAMPLE_RATE_HZ / FRAME_SAMPLES)  # 100


def sine(freq_hz: float, index: int) -> Pcm:
    t = (np.arange(FRAME_SAMPLES) + index * FRAME_SAMPLES) / SAMPLE_RATE_HZ
    return (np.sin(2 * np.pi * freq_hz * t) * 0.3 * 32767).astype(np.int16)


@dataclass
class Encoded:
    header_pages: list[OggPage]
    media_pages: list[OggPage]
    pages_before_close: int
    init_segment: bytes
    fragments: list[Fragment]

    @property
    def ogg(self) -> bytes:
        return b"".join(p.data for p in self.header_pages + self.media_pages)

    @property
    def fmp4(self) -> bytes:
        return self.init_segment + b"".join(f.data for f in self.fragments)


@pytest.fixture(scope="module")
def encoded() -> Encoded:
    enc = ProgramEncoder(EncoderConfig(ogg_page_duration_s=0.2, part_target_s=0.5))
    pages: list[OggPage] = []
    fragments: list[Fragment] = []
    for i in range(FRAMES):
        out = enc.encode(sine(440, i))
        pages += out.ogg_pages
        fragments += out.fragments
    before_close = len(pages)
    out = enc.close()
    pages += out.ogg_pages
    fragments += out.fragments
    assert enc.init_segment is not None
    return Encoded(list(enc.ogg.header_pages), pages, before_close, enc.init_segment, fragments)


# -- Ogg ------------------------------------------------------------------------------


def test_header_pages_are_opushead_then_opustags(encoded: Encoded) -> None:
    head, tags = encoded.header_pages
    assert head.data[28:36] == b"OpusHead" and head.sequence == 0 and head.granule == 0
    assert tags.data[28:36] == b"OpusTags" and tags.sequence == 1 and tags.granule == 0
    assert head.data[5] & 0x02, "the first page must carry beginning-of-stream"
    # Parsing the whole stream from byte 0 yields exactly these two first.
    pages, tail = parse_pages(encoded.ogg)
    assert tail == b""
    assert [p.is_header for p in pages[:3]] == [True, True, False]


def test_media_pages_stream_out_while_encoding(encoded: Encoded) -> None:
    # Live means pages leave as they fill (0.2 s each), not at close().
    assert encoded.pages_before_close >= FRAMES // 10 - 1


def test_granules_increase_and_sequences_are_contiguous(encoded: Encoded) -> None:
    granules = [p.granule for p in encoded.media_pages]
    assert all(b > a for a, b in itertools.pairwise(granules)), granules
    sequences = [p.sequence for p in encoded.header_pages + encoded.media_pages]
    assert sequences == list(range(len(sequences)))
    # A 0.2 s page holds ten 20 ms packets: the granule advances 9600 per page.
    assert granules[1] - granules[0] == 9600
    assert all(packets_on_page(p) == 10 for p in encoded.media_pages[:-2])


def test_only_the_last_page_after_close_has_eos(encoded: Encoded) -> None:
    assert [p.is_last for p in encoded.media_pages] == [False] * (len(encoded.media_pages) - 1) + [
        True
    ]
    # RFC 7845 4.5: the final granule trims the padding: 2 s of audio plus the pre-skip.
    pre_skip = int.from_bytes(encoded.header_pages[0].data[28 + 10 : 28 + 12], "little")
    assert encoded.media_pages[-1].granule == FRAMES * FRAME_SAMPLES + pre_skip


def test_ogg_decodes_to_the_tone(encoded: Encoded) -> None:
    audio = decode(encoded.ogg)
    assert abs(len(audio) / SAMPLE_RATE_HZ - SECONDS) < 0.03
    assert abs(peak_frequency(audio) - 440) < 5


def test_parse_pages_fed_byte_by_byte_matches_whole_parse(encoded: Encoded) -> None:
    splitter = OggPageSplitter()
    media: list[OggPage] = []
    for i in range(len(encoded.ogg)):
        media += splitter.feed(encoded.ogg[i : i + 1])
    assert [p.data for p in media] == [p.data for p in encoded.media_pages]
    assert splitter.header == b"".join(p.data for p in encoded.header_pages)


def test_parse_pages_handles_arbitrary_slicing(encoded: Encoded) -> None:
    rng = random.Random(7)
    data, pos, tail = encoded.ogg, 0, b""
    pages: list[OggPage] = []
    while pos < len(data):
        step = rng.choice([1, 2, 26, 27, 28, 100, 1000, 5000])
        got, tail = parse_pages(tail + data[pos : pos + step])
        pages += got
        pos += step
    assert tail == b""
    assert b"".join(p.data for p in pages) == data


def test_parse_pages_refuses_lost_sync(encoded: Encoded) -> None:
    with pytest.raises(ValueError, match="lost Ogg sync"):
        parse_pages(encoded.ogg[1:])


# -- fragmented MP4 ---------------------------------------------------------------------


def test_init_segment_is_ftyp_and_moov(encoded: Encoded) -> None:
    boxes, tail = split_boxes(encoded.init_segment)
    assert tail == b""
    assert [kind for kind, _ in boxes] == [b"ftyp", b"moov"]


def test_half_second_parts_hold_25_packets_of_960_samples(encoded: Encoded) -> None:
    full = encoded.fragments[:-1]
    assert len(full) == FRAMES // 25
    assert [f.sample_count for f in full] == [25] * len(full)
    assert all(f.sample_count * FRAME_SAMPLES == 25 * 960 for f in full)
    # The encoder flush adds at most one packet; nothing is lost or duplicated.
    assert sum(f.sample_count for f in encoded.fragments) in (FRAMES, FRAMES + 1)


def test_each_fragment_is_moof_then_mdat(encoded: Encoded) -> None:
    for frag in encoded.fragments:
        boxes, tail = split_boxes(frag.data)
        assert tail == b"" and [kind for kind, _ in boxes] == [b"moof", b"mdat"]


def test_init_plus_fragments_decode_to_the_tone(encoded: Encoded) -> None:
    audio = decode(encoded.fmp4)
    assert abs(len(audio) / SAMPLE_RATE_HZ - SECONDS) < 0.05
    assert abs(peak_frequency(audio) - 440) < 5


def test_init_plus_one_late_fragment_decodes_alone(encoded: Encoded) -> None:
    # An LL-HLS client joining late fetches the init segment and a part from the middle.
    audio = decode(encoded.init_segment + encoded.fragments[2].data)
    assert abs(len(audio) - 25 * FRAME_SAMPLES) <= FRAME_SAMPLES
    assert abs(peak_frequency(audio) - 440) < 5


def test_fmp4_splitter_fed_byte_by_byte(encoded: Encoded) -> None:
    splitter = Fmp4Splitter()
    fragments: list[Fragment] = []
    for i in range(len(encoded.fmp4)):
        fragments += splitter.feed(encoded.fmp4[i : i + 1])
    assert splitter.init_segment == encoded.init_segment
    assert fragments == encoded.fragments
