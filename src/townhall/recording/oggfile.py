"""What an existing Ogg recording holds, read page header by page header (RFC 3533).

A recorder that starts while a Space is live appends to the Space's file instead of
truncating it. It needs to know where the last whole page ends (a killed writer can
leave half a page, which is cut off) and which logical stream the file ends with (its
header pages and serial number): a stage that was not restarted continues that stream,
and one that was starts a new one, chained after it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from townhall.media.ogg import CAPTURE, parse_pages

_HEADER = struct.Struct("<4sBBqIIIB")  # RFC 3533 section 6: 27 bytes before the lacing
_BOS = 0x02
# The header pages (OpusHead, OpusTags) of our encoder are far smaller than this.
_MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class OggFileState:
    whole_bytes: int  # the file's length up to the end of its last whole page
    header: bytes  # the header pages of the last logical stream; b"" if none
    serial: int | None  # that stream's serial number


def page_serial(data: bytes) -> int | None:
    """The serial number of the first page in ``data``."""
    if len(data) < _HEADER.size or data[:4] != CAPTURE:
        return None
    return int(_HEADER.unpack_from(data)[4])


def read_state(path: Path) -> OggFileState:
    """Walk the page headers (the bodies are skipped, not read)."""
    last_bos: int | None = None
    pos = 0
    with path.open("rb") as f:
        size = f.seek(0, 2)
        while pos + _HEADER.size <= size:
            f.seek(pos)
            head = f.read(_HEADER.size)
            capture, _v, flags, _g, _serial, _seq, _crc, nseg = _HEADER.unpack(head)
            if capture != CAPTURE:
                break  # not a page: what follows is torn
            lacing = f.read(nseg)
            end = pos + _HEADER.size + nseg + sum(lacing)
            if len(lacing) < nseg or end > size:
                break
            if flags & _BOS:
                last_bos = pos
            pos = end
        if last_bos is None:
            return OggFileState(pos, b"", None)
        f.seek(last_bos)
        pages, _ = parse_pages(f.read(min(_MAX_HEADER_BYTES, pos - last_bos)))
    header = b""
    for page in pages:
        if not page.is_header:
            break
        header += page.data
    return OggFileState(pos, header, page_serial(header))
