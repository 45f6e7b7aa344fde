"""Ogg page splitting for the live stream (RFC 3533, RFC 7845).

The PyAV Ogg muxer writes whole pages. A listener who joins late must first get the
two header pages (OpusHead, OpusTags, RFC 7845 section 3) and then pages from the live
edge, as Icecast does; players resynchronise on the next page. This module only finds
page boundaries and remembers the header pages: it never rebuilds a page.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CAPTURE = b"OggS"
_HEADER = struct.Struct("<4sBBqIIIB")  # RFC 3533 section 6: 27 bytes before the lacing


@dataclass(frozen=True)
class OggPage:
    data: bytes
    granule: int
    sequence: int
    is_header: bool
    is_last: bool


def parse_pages(buf: bytes) -> tuple[list[OggPage], bytes]:
    """Split ``buf`` into complete pages; return them and the unconsumed tail."""
    pages: list[OggPage] = []
    pos = 0
    while len(buf) - pos >= _HEADER.size:
        capture, _ver, flags, granule, _serial, seq, _crc, nseg = _HEADER.unpack_from(buf, pos)
        if capture != CAPTURE:
            raise ValueError(f"lost Ogg sync at byte {pos}")
        lacing_end = pos + _HEADER.size + nseg
        if len(buf) < lacing_end:
            break
        end = lacing_end + sum(buf[pos + _HEADER.size : lacing_end])
        if len(buf) < end:
            break
        body_head = buf[lacing_end : lacing_end + 8]
        is_header = body_head in (b"OpusHead", b"OpusTags")
        pages.append(OggPage(buf[pos:end], granule, seq, is_header, bool(flags & 0x04)))
        pos = end
    return pages, buf[pos:]


class OggPageSplitter:
    """Feed muxer output in any slicing; get whole pages out."""

    def __init__(self) -> None:
        self._tail = b""
        self.header_pages: list[OggPage] = []

    def feed(self, data: bytes) -> list[OggPage]:
        pages, self._tail = parse_pages(self._tail + data)
        media: list[OggPage] = []
        for page in pages:
            (self.header_pages if page.is_header else media).append(page)
        return media

    @property
    def header(self) -> bytes:
        return b"".join(p.data for p in self.header_pages)
