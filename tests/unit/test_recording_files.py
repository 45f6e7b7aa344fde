"""The replay's playlist reads back as written; an Ogg file's last stream and whole
length are found from its page headers."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_recorder import tone
from townhall.media.program import ProgramEncoder
from townhall.recording import vod
from townhall.recording.oggfile import page_serial, read_state
from townhall.recording.recorder import seal_after_crash


def test_a_playlist_reads_back_with_its_gaps_and_init_changes() -> None:
    segments = [
        vod.VodSegment("s0.m4s", 2.0),
        vod.VodSegment("s1.m4s", 1.25),
        vod.VodSegment("s2.m4s", 2.0, discontinuity=True),
        vod.VodSegment("s3.m4s", 2.0, discontinuity=True, map_uri="init1.mp4"),
    ]
    live = vod.render(segments, 2.0, ended=False)
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in live and not vod.is_sealed(live)
    assert vod.parse(live) == segments
    lines = live.splitlines()
    assert lines[lines.index("s1.m4s") + 1] == "#EXT-X-DISCONTINUITY"
    assert lines[lines.index("s2.m4s") + 1 : lines.index("s2.m4s") + 3] == [
        "#EXT-X-DISCONTINUITY",
        '#EXT-X-MAP:URI="init1.mp4"',
    ]
    sealed = vod.seal(live)
    assert vod.is_sealed(sealed) and "#EXT-X-PLAYLIST-TYPE:VOD" in sealed
    assert sealed == vod.render(segments, 2.0, ended=True) == vod.seal(sealed)
    torn = live + "#EXTINF:2.000,\n"  # the writer died between the lines
    assert vod.parse(torn) == segments


def ogg_stream(seconds: float) -> tuple[bytes, bytes]:
    encoder = ProgramEncoder()
    pages = b""
    for i in range(int(seconds * 50)):
        pages += b"".join(p.data for p in encoder.encode(tone(i)).ogg_pages)
    return encoder.ogg_header, pages


def test_the_last_stream_and_the_last_whole_page_are_found(tmp_path: Path) -> None:
    first_header, first_pages = ogg_stream(2)
    second_header, second_pages = ogg_stream(2)
    path = tmp_path / "sp.ogg"
    path.write_bytes(first_header + first_pages)
    state = read_state(path)
    assert state.whole_bytes == path.stat().st_size
    assert state.header == first_header and state.serial == page_serial(first_pages)
    whole = first_header + first_pages + second_header + second_pages
    path.write_bytes(whole + second_pages[:100])  # a torn page at the end
    state = read_state(path)
    assert state.whole_bytes == len(whole)
    assert state.header == second_header and state.serial == page_serial(second_pages)
    assert state.serial != page_serial(first_pages)
    empty = tmp_path / "empty.ogg"
    empty.write_bytes(b"")
    assert read_state(empty).whole_bytes == 0 and read_state(empty).serial is None


def test_seal_after_crash_leaves_a_vod(tmp_path: Path) -> None:
    (tmp_path / "sp").mkdir()
    (tmp_path / "sp" / "vod.m3u8").write_text(vod.render([vod.VodSegment("s0.m4s", 2)], 2, False))
    seal_after_crash(tmp_path, "sp")
    assert vod.parse((tmp_path / "sp" / "vod.m3u8").read_text())[0].uri == "s0.m4s"
    assert vod.is_sealed((tmp_path / "sp" / "vod.m3u8").read_text())
