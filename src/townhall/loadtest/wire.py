"""The little protocol knowledge a listener needs, kept pure and testable.

* the target: an audience URL split into host, port and path, and the LL-HLS
  playlist URL derived from the Ogg one (``/live/{id}.ogg`` -> ``/live/{id}/index.m3u8``);
* the request bytes of a minimal HTTP/1.1 GET (RFC 9112 section 3);
* where an fMP4 part sits on the media clock: ``tfdt`` baseMediaDecodeTime in the
  ``mdhd`` timescale (ISO/IEC 14496-12 8.8.12 and 8.4.2);
* the loopback rule that keeps the load generator pointed at our own machine.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from townhall.media.fmp4 import child, split_boxes


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        return self.host if self.port == 80 else f"{self.host}:{self.port}"

    def with_path(self, path: str) -> Target:
        return Target(self.host, self.port, path)


def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"need an http:// audience URL, got {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.hostname, parts.port or 80, path)


def with_query(path: str, **params: object) -> str:
    """``path`` with ``params`` added to its query string (``?`` or ``&`` as needed)."""
    extra = urlencode({k: str(v) for k, v in params.items()})
    return f"{path}{'&' if '?' in path else '?'}{extra}"


def playlist_url(ogg_url: str) -> str:
    if not ogg_url.endswith(".ogg"):
        raise ValueError(f"an audience URL ends in .ogg, got {ogg_url!r}")
    return ogg_url.removesuffix(".ogg") + "/index.m3u8"


def events_url(ogg_url: str) -> str:
    """The room events (SSE) of the Space whose Ogg URL is given."""
    base, _, name = playlist_url(ogg_url).removesuffix("/index.m3u8").rpartition("/live/")
    return f"{base}/events/{name}"


def get_request(target: Target, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
        "User-Agent: townhall-loadtest\r\nAccept: */*\r\n\r\n"
    ).encode("latin-1")


def all_loopback(addresses: Iterable[str]) -> bool:
    """True when there is at least one address and every one is 127.0.0.0/8 or ::1."""
    found = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
    return bool(found) and all(a.is_loopback for a in found)


def decode_time(part: bytes) -> int | None:
    """baseMediaDecodeTime of the first fragment in ``part``, or None if absent."""
    boxes, _ = split_boxes(part)
    moof = next((box for kind, box in boxes if kind == b"moof"), None)
    traf = child(moof, b"traf") if moof else None
    tfdt = child(traf, b"tfdt") if traf else None
    if tfdt is None or len(tfdt) < 16:
        return None
    if tfdt[8] == 1:  # version 1: a 64-bit time
        return int(struct.unpack_from(">Q", tfdt, 12)[0])
    return int(struct.unpack_from(">I", tfdt, 12)[0])


def timescale(init_segment: bytes) -> int | None:
    """The media timescale from moov/trak/mdia/mdhd, or None if absent."""
    boxes, _ = split_boxes(init_segment)
    box: bytes | None = next((b for kind, b in boxes if kind == b"moov"), None)
    for kind in (b"trak", b"mdia", b"mdhd"):
        box = child(box, kind) if box else None
    if box is None or len(box) < 24:
        return None
    offset = 28 if box[8] == 1 else 20  # after version/flags and two times (8 or 4 bytes)
    return int(struct.unpack_from(">I", box, offset)[0])
