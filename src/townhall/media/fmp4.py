"""ISO BMFF box splitting for CMAF fragments (ISO/IEC 14496-12).

The PyAV mp4 muxer, in fragmented mode, writes ``ftyp`` + ``moov`` once (the init
segment) and then one ``moof`` + ``mdat`` pair per fragment. This module finds the box
boundaries and reads the sample count from ``trun`` so the packager knows each
fragment's duration without trusting the muxer's timing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_BOX = struct.Struct(">I4s")


@dataclass(frozen=True)
class Fragment:
    data: bytes  # moof + mdat
    sample_count: int


def split_boxes(buf: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Return complete ``(type, box_bytes)`` pairs and the unconsumed tail."""
    boxes = []
    pos = 0
    while len(buf) - pos >= _BOX.size:
        size, kind = _BOX.unpack_from(buf, pos)
        if size < _BOX.size:
            raise ValueError(f"unsupported box size {size} for {kind!r}")
        if len(buf) - pos < size:
            break
        boxes.append((kind, buf[pos : pos + size]))
        pos += size
    return boxes, buf[pos:]


def child(box: bytes, kind: bytes) -> bytes | None:
    """Find a direct child box of ``box`` (a container box) by type."""
    pos = _BOX.size
    while pos + _BOX.size <= len(box):
        size, k = _BOX.unpack_from(box, pos)
        if size < _BOX.size:
            return None
        if k == kind:
            return box[pos : pos + size]
        pos += size
    return None


def trun_sample_count(moof: bytes) -> int:
    traf = child(moof, b"traf")
    trun = child(traf, b"trun") if traf else None
    if trun is None:
        raise ValueError("moof without traf/trun")
    # Full box: 8 header + 4 version/flags, then sample_count (14496-12 8.8.8).
    (count,) = struct.unpack_from(">I", trun, 12)
    return int(count)


class Fmp4Splitter:
    """Feed muxer output; get the init segment once and fragments as they close."""

    def __init__(self) -> None:
        self._tail = b""
        self._init: list[bytes] = []
        self._moof: bytes | None = None
        self.init_segment: bytes | None = None

    def feed(self, data: bytes) -> list[Fragment]:
        boxes, self._tail = split_boxes(self._tail + data)
        out = []
        for kind, box in boxes:
            if kind == b"moof":
                self._close_init()
                self._moof = box
            elif kind == b"mdat" and self._moof is not None:
                out.append(Fragment(self._moof + box, trun_sample_count(self._moof)))
                self._moof = None
            elif self.init_segment is None:
                self._init.append(box)
        return out

    def _close_init(self) -> None:
        if self.init_segment is None:
            self.init_segment = b"".join(self._init)
