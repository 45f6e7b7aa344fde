"""Replays served from the recordings directory: byte ranges, by sendfile.

Players need HTTP Range (RFC 9110 section 14) to show a recording's length and to seek:
a request for ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` gets 206 with its
Content-Range, an unsatisfiable one 416 with ``Content-Range: bytes */length``, and
anything else (no Range, another unit, several ranges, a malformed one) the whole file,
as the RFC allows a server to. The body goes from the file to the socket with
sendfile(2), at most ``max_replay_connections`` at a time per process; past that a
download gets 503 and Retry-After.

A recording grows while its Space is live: a request is answered from the file's length
when it arrives. Once the Space ended (its playlist holds ENDLIST) the files never change
again and are cacheable for good.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from townhall.audience.http import FileReply, Reply, Request, response_bytes
from townhall.errors import NotFound, Unavailable

IMMUTABLE = "public, max-age=31536000, immutable"
CONTENT_TYPES = {
    ".ogg": "audio/ogg",
    ".m3u8": "application/vnd.apple.mpegurl",
    # The replay is audio only (RFC 6381: audio/mp4 for audio-only MP4).
    ".mp4": "audio/mp4",
    ".m4s": "audio/mp4",
}
# While live: the Ogg file and the playlist grow (revalidate); a segment, once listed,
# does not change, but a recorder that resumes may rewrite one not yet listed.
LIVE_CACHE = {".ogg": "no-cache", ".m3u8": "no-cache"}
LIVE_CACHE_OTHER = "public, max-age=60"

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_ENDLIST = b"#EXT-X-ENDLIST"


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as Content-Range writes it

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class RangeNotSatisfiable(ValueError):
    """The Range names no byte of the file: 416."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range ``header`` asks of a ``size``-byte file; None: the whole file."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None  # another unit, several ranges, or malformed: ignored (RFC 9110 14.2)
    first, last = m.group(1), m.group(2)
    if not first:  # a suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, min(end, size - 1))


class ReplayFiles:
    """Answers ``/replay/...`` from ``root``; counts the files being sent."""

    def __init__(
        self,
        root: Path,
        max_connections: int,
        stall_timeout_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.root = root
        self.max_connections = max_connections
        self.stall_timeout_s = stall_timeout_s
        self.rng = rng or random.Random()
        self.sending = 0  # files being sent by this process right now

    def path(self, space_id: str, rest: str) -> Path:
        if rest == ".ogg":
            return self.root / f"{space_id}.ogg"
        if rest == "/index.m3u8":
            return self.root / space_id / "vod.m3u8"
        return self.root / space_id / rest.lstrip("/")

    def reply(self, space_id: str, rest: str, req: Request) -> Reply:
        path = self.path(space_id, rest)
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"no replay for space {space_id!r} (yet)") from exc
        try:
            size = os.fstat(f.fileno()).st_size
            head, body = self._head(path, space_id, size, req.headers.get("range"))
            if body is None or req.method == "HEAD":
                f.close()
                return head
            if self.sending >= self.max_connections:
                raise Unavailable("too many replay downloads; retry", 1.0 + self.rng.random())
        except BaseException:
            f.close()
            raise
        self.sending += 1
        return FileReply(head, f, body.start, body.length, self._sent, self.stall_timeout_s)

    def _sent(self) -> None:
        self.sending -= 1

    def _head(
        self, path: Path, space_id: str, size: int, range_header: str | None
    ) -> tuple[bytes, ByteRange | None]:
        """The response head, and the bytes its body holds (None: no body)."""
        ctype = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        if self._sealed(space_id):
            cache = IMMUTABLE
        else:
            cache = LIVE_CACHE.get(path.suffix, LIVE_CACHE_OTHER)
        ranges = (("Accept-Ranges", "bytes"),)
        try:
            wanted = parse_range(range_header, size)
        except RangeNotSatisfiable:
            extra = (*ranges, ("Content-Range", f"bytes */{size}"))
            return response_bytes(416, b"", ctype, cache, extra), None
        if wanted is None:
            head = response_bytes(200, b"", ctype, cache, ranges, content_length=size)
            return head, ByteRange(0, size - 1) if size else None
        extra = (*ranges, ("Content-Range", f"bytes {wanted.start}-{wanted.end}/{size}"))
        head = response_bytes(206, b"", ctype, cache, extra, content_length=wanted.length)
        return head, wanted

    def _sealed(self, space_id: str) -> bool:
        """The Space ended: its playlist ends with ENDLIST (read from its tail only)."""
        try:
            with (self.root / space_id / "vod.m3u8").open("rb") as f:
                f.seek(max(0, f.seek(0, 2) - 32))
                return f.read().rstrip().endswith(_ENDLIST)
        except OSError:
            return False
