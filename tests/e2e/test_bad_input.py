"""Bad input on both ports gets a precise JSON error and never hurts a running Space.

One Space stays live through the whole module with a 440 Hz speaker (the real
``townhall speak`` CLI in its own process). The last test checks that its program and
recording are intact after everything thrown at the server here.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.harness.audio import decode, has_tone
from benchmarks.harness.server import Server, Space
from townhall.peers.listen import listen_ogg
from townhall.room.roles import Role
from townhall.tokens import TokenIssuer

pytestmark = pytest.mark.e2e

TOWNHALL = Path(sys.executable).with_name("townhall")
GOOD_SDP_HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture(scope="module")
def victim(server: Server) -> Iterator[Space]:
    """A live Space with a tone on stage for the whole module."""
    space = server.create_space_sync("under attack")
    resp = httpx.post(space.api("/start"), headers=space.host_headers(), timeout=10)
    assert resp.status_code == 200, resp.text
    speaker = subprocess.Popen(
        [str(TOWNHALL), "speak", space.speaker_link, "--tone", "440", "--seconds", "120"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # On air means the speaker passed the mic check, not only that packets flow: on a
    # loaded machine the bot's start-up can outlast every test here.
    deadline = time.monotonic() + 30
    while not speaker_is_live(space):
        assert speaker.poll() is None, speaker.stderr.read() if speaker.stderr else ""
        assert time.monotonic() < deadline, "the victim's speaker never went live"
        time.sleep(0.1)
    yield space
    speaker.terminate()
    speaker.wait(timeout=10)


def speaker_is_live(space: Space) -> bool:
    resp = httpx.get(space.api("/room"), headers=space.host_headers(), timeout=5)
    return resp.status_code == 200 and any(seat["live"] for seat in resp.json()["stage"])


def post(space: Space, path: str, token: str | None, **kw: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(space.api(path), headers=headers, timeout=10, **kw)  # type: ignore[arg-type]


def assert_json_error(resp: httpx.Response, status: int, *words: str) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body: dict[str, str] = resp.json()
    assert set(body) >= {"error", "detail"}, body
    for word in words:
        assert word.lower() in body["detail"].lower(), (word, body)
    return body


def speaker_token(space: Space) -> str:
    """A speaker link of the Space that no client holds yet: the bot on stage holds the
    Space's own, and any other client with it is refused as a second opener (409)."""
    return space.invite_sync("Prober").token


# -- the control port ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sdp", "words"),
    [
        ("hello", ("malformed SDP",)),
        (GOOD_SDP_HEAD + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n", ("m=audio",)),
        (GOOD_SDP_HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", ("SDP",)),
    ],
)
def test_malformed_sdp_is_400_saying_what(victim: Space, sdp: str, words: tuple[str, ...]) -> None:
    resp = post(victim, "/stage/offer", speaker_token(victim), json={"sdp": sdp, "type": "offer"})
    assert_json_error(resp, 400, *words)


def test_answer_type_instead_of_offer_is_400(victim: Space) -> None:
    resp = post(
        victim, "/stage/offer", speaker_token(victim), json={"sdp": "v=0\r\n", "type": "answer"}
    )
    assert_json_error(resp, 400, "type")


@pytest.mark.parametrize("authorization", [None, "Basic abc", "Bearer not-a-jwt", "Bearer a.b.c"])
def test_missing_or_bad_token_is_401(victim: Space, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    resp = httpx.post(victim.api("/end"), headers=headers, timeout=10)
    assert_json_error(resp, 401)


def test_token_signed_with_another_secret_is_401(victim: Space) -> None:
    forged = TokenIssuer("not the secret of this server, 32+ bytes long").issue(
        victim.id, Role.HOST, "Mallory"
    )
    assert_json_error(post(victim, "/end", forged), 401, "invalid token")


def server_secret(server: Server) -> str:
    with sqlite3.connect(server.data_dir / "townhall.sqlite3") as db:
        (secret,) = db.execute("SELECT value FROM settings WHERE key = 'token_secret'").fetchone()
    return str(secret)


def test_expired_token_is_401_saying_expired(server: Server, victim: Space) -> None:
    issuer = TokenIssuer(server_secret(server))
    expired = issuer.issue(victim.id, Role.HOST, "Host", now=time.time() - 2 * issuer.default_ttl_s)
    assert_json_error(post(victim, "/end", expired), 401, "expired")
    # The same secret with a fresh expiry is accepted: it was the expiry that failed.
    fresh = issuer.issue(victim.id, Role.SPEAKER, "Fresh")
    resp = post(victim, "/invite", fresh, json={"role": "speaker", "name": "x"})
    assert resp.status_code == 403, resp.text  # valid token, but a speaker cannot invite


def test_token_for_another_space_is_refused(server: Server, victim: Space) -> None:
    other = server.create_space_sync("other")
    resp = post(victim, "/end", other.host_token)
    assert resp.status_code in (401, 403), resp.text
    assert_json_error(resp, resp.status_code, "another space")


def test_unknown_space_is_404_json(server: Server, victim: Space) -> None:
    resp = httpx.get(f"{server.control_url}/api/spaces/nosuchspace", timeout=10)
    assert_json_error(resp, 404, "nosuchspace")
    resp = httpx.post(
        f"{server.control_url}/api/spaces/nosuchspace/stage/offer",
        timeout=10,
        json={"sdp": "v=0", "type": "offer"},
        headers={"Authorization": f"Bearer {victim.host_token}"},
    )
    assert_json_error(resp, 404)


def test_speaking_in_an_ended_space_is_409(server: Server) -> None:
    space = server.create_space_sync("over")
    assert post(space, "/start", space.host_token).status_code == 200
    assert post(space, "/end", space.host_token).status_code == 200
    sdp = GOOD_SDP_HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
    resp = post(space, "/stage/offer", space.speaker.token, json={"sdp": sdp, "type": "offer"})
    assert_json_error(resp, 409, "ended")


def test_oversized_body_is_413_json(victim: Space) -> None:
    huge = "v=0\r\n" + "a=x\r\n" * 40_000  # about 240 KB, over the 64 KiB limit
    resp = post(victim, "/stage/offer", speaker_token(victim), json={"sdp": huge, "type": "offer"})
    assert_json_error(resp, 413, "bytes")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/stage/offer", {"sdp": 5, "type": "offer"}, "sdp"),
        ("/stage/offer", {"sdp": ["v=0"], "type": "offer"}, "sdp"),
        ("/stage/offer", {"type": "offer"}, "sdp"),
        ("/invite", {"role": "speaker", "name": {"first": "B"}}, "name"),
        ("/invite", {"role": "emperor", "name": "B"}, "role"),
        ("/invite", [1, 2], "body"),
    ],
)
def test_wrong_json_types_are_400_naming_the_field(
    victim: Space, path: str, body: object, field: str
) -> None:
    resp = post(victim, path, victim.host_token, json=body)
    assert_json_error(resp, 400, field)


def test_invalid_json_is_400(victim: Space) -> None:
    resp = httpx.post(
        victim.api("/invite"),
        content=b"{not json",
        timeout=10,
        headers={**victim.host_headers(), "Content-Type": "application/json"},
    )
    assert_json_error(resp, 400, "json")


def test_create_space_with_a_wrong_title_type_is_400(server: Server) -> None:
    resp = httpx.post(
        f"{server.control_url}/api/spaces",
        json={"title": 42},
        timeout=10,
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert_json_error(resp, 400, "title")


# -- the audience port --------------------------------------------------------------------


def raw_request(server: Server, data: bytes) -> bytes:
    port = int(server.audience_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"\x00\x01\x02\xff\r\n\r\n",
        b"GET / HTTP/9.9.9\r\n\r\n",
        b"GET /live/x.ogg HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
    ],
)
def test_malformed_http_on_the_audience_port_is_400(server: Server, garbage: bytes) -> None:
    reply = raw_request(server, garbage)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"application/json" in reply and b'"error"' in reply


def test_oversized_request_head_is_431(server: Server) -> None:
    reply = raw_request(server, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]


@pytest.mark.parametrize(
    "query",
    [
        "_HLS_msn=abc",
        "_HLS_msn=-1",
        "_HLS_part=1",
        "_HLS_msn=99999999&_HLS_part=0",
        "_HLS_msn=1&_HLS_part=x",
    ],
)
def test_bad_blocking_playlist_parameters_are_400_json(victim: Space, query: str) -> None:
    resp = httpx.get(f"{victim.hls_url}?{query}", timeout=10)
    assert_json_error(resp, 400, "_HLS_")


@pytest.mark.parametrize(
    "path",
    [
        "/nothing",
        "/live/",
        "/live/nosuch.ogg",
        "/live/nosuch/index.m3u8",
        "/replay/nosuch.ogg",
        "/live/../../etc/passwd",
    ],
)
def test_unknown_audience_paths_are_404_json(server: Server, path: str) -> None:
    resp = httpx.get(f"{server.audience_url}{path}", timeout=10)
    assert_json_error(resp, 404)


def test_post_on_the_audience_port_is_refused(server: Server) -> None:
    resp = httpx.post(f"{server.audience_url}/healthz", content=b"x", timeout=10)
    assert resp.status_code in (400, 405), resp.text
    assert resp.json()["error"]


# -- and the Space is still fine ---------------------------------------------------------------


async def test_the_victim_space_program_and_recording_are_intact(victim: Space) -> None:
    live = await listen_ogg(victim.ogg_url, 2.5)
    assert has_tone(decode(bytes(live.data)), 440)
    ended = post(victim, "/end", victim.host_token)
    assert ended.status_code == 200, ended.text
    replay = httpx.get(victim.replay_ogg_url, timeout=10)
    assert replay.status_code == 200, replay.text
    audio = decode(replay.content)
    assert len(audio) > 3 * 48_000
    assert has_tone(audio, 440)
