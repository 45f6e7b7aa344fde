"""Identity that sticks: moderation binds the person, links are single-holder and
revocable, tokens of scheduled Spaces last until they can have ended.

The Room's rules are tried on the pure Room; the routes on the real app with the fake
stage of ``test_control_app`` (which records who was connected and cut off).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
from starlette.websockets import WebSocketDisconnect

from tests.unit.test_control_app import (
    FakeStage,
    Town,
    bearer,
    error_of,
    eventually,
    fake_stages,
    host,
    open_town,
    seat,
    town_config,
)
from townhall.app import Townhall
from townhall.control.api import create_app
from townhall.errors import Conflict, Forbidden, NotFound, Unauthorized
from townhall.room.events import LinkClaimed, LinkReissued, LinkRevoked, ParticipantLeft
from townhall.room.record import LinkRecord, RoomRecord, record_from_json, record_to_json
from townhall.room.roles import Role
from townhall.room.state import LinkInUse, Room
from townhall.tokens import TokenIssuer, link_ttl_s

T = 100.0
DAY_S = 24 * 3600.0


def live_room() -> Room:
    """Host "h" on stage, speaker "s" by link (claimed by key "k1"), co-host "c" by link,
    listener "l"; live and mic-checked."""
    room = Room("sp1", "h", "Town hall")
    room.issue_link("h", "s", Role.SPEAKER, "Sam", T)
    room.issue_link("h", "c", Role.COHOST, "Cora", T)
    room.join("h", "Hana", Role.HOST, T)
    room.start("h", T)
    room.claim_link("s", "k1", T)
    room.join("s", "Sam", Role.SPEAKER, T)
    room.join("c", "Cora", Role.COHOST, T)
    room.join("l", "Lee", Role.LISTENER, T)
    for pid in ("h", "s", "c"):
        room.mic_check_passed(pid, T)
    return room


# -- moderation binds the person -------------------------------------------------------


@pytest.mark.parametrize(("pid", "role"), [("s", Role.SPEAKER), ("c", Role.COHOST)])
def test_a_demoted_person_who_rejoins_with_their_link_stays_in_the_audience(
    pid: str, role: Role
) -> None:
    room = live_room()
    room.move_to_audience("h", pid, T)
    room.leave(pid, T + 1)
    room.join(pid, "again", role, T + 2)  # their token still says speaker / co-host
    assert room.role_of(pid) is Role.LISTENER
    assert not room.may_publish(pid) and pid not in room.program()
    # And it holds across a restart of the control process (the journal).
    again = Room.restore(record_from_json(record_to_json(room.record())))
    again.leave(pid, T + 3)
    again.join(pid, "again", role, T + 4)
    assert again.role_of(pid) is Role.LISTENER


def test_an_accepted_invitation_lifts_the_demotion() -> None:
    room = live_room()
    room.move_to_audience("h", "s", T)
    room.invite("c", "s", T)
    room.accept_invitation("s", T)
    assert room.role_of("s") is Role.SPEAKER
    room.leave("s", T)
    room.join("s", "Sam", Role.SPEAKER, T)
    assert room.role_of("s") is Role.SPEAKER


def test_the_host_making_them_cohost_lifts_the_demotion() -> None:
    room = live_room()
    room.move_to_audience("h", "s", T)
    room.add_cohost("h", "s", T)
    room.leave("s", T)
    room.join("s", "Sam", Role.SPEAKER, T)
    assert room.role_of("s") is Role.SPEAKER  # what the link says, no longer capped


def test_stepping_down_yourself_binds_nothing() -> None:
    room = live_room()
    room.move_to_audience("s", "s", T)
    room.leave("s", T)
    room.join("s", "Sam", Role.SPEAKER, T)
    assert room.role_of("s") is Role.SPEAKER


def test_a_removed_person_comes_back_through_no_link_of_theirs() -> None:
    room = live_room()
    room.remove("h", "s", T)
    with pytest.raises(Forbidden, match="removed"):
        room.join("s", "Sam", Role.SPEAKER, T)
    with pytest.raises(Conflict, match="removed"):
        room.reissue_link("h", "s", T)  # a reissued link carries the same id


# -- single holder -----------------------------------------------------------------------


def test_the_first_key_claims_a_link_and_another_is_refused() -> None:
    room = live_room()
    assert room.claim_link("s", "k1", T) == []  # the holder's reconnect
    with pytest.raises(LinkInUse) as refused:
        room.claim_link("s", "k2", T)
    assert refused.value.status == 409
    assert refused.value.detail == "this link is already in use; ask the host for a new one"
    with pytest.raises(LinkInUse):
        room.claim_link("s", "", T)  # no key at all is no way around it


def test_a_client_without_a_key_uses_an_unclaimed_link_without_claiming_it() -> None:
    room = live_room()
    assert room.claim_link("c", "", T) == []
    assert room.claim_link("c", "k9", T) == [LinkClaimed(space_id="sp1", at=T, participant_id="c")]
    assert room.claim_link("h", "any", T) == []  # the host has no link to claim


# -- revoke and reissue -------------------------------------------------------------------


def test_a_revoked_link_is_refused_and_its_holder_signed_out() -> None:
    room = live_room()
    assert room.revoke_link("h", "s", T) == [
        LinkRevoked(space_id="sp1", at=T, participant_id="s", by="h"),
        ParticipantLeft(space_id="sp1", at=T, participant_id="s"),
    ]
    with pytest.raises(Unauthorized, match="this link was revoked by the host"):
        room.check_link("s", 1)
    assert room.role_of("s") is None
    assert room.revoke_link("h", "s", T) == []  # already revoked


def test_a_reissued_link_replaces_the_old_one_for_the_same_person() -> None:
    room = live_room()
    [reissued] = room.reissue_link("h", "s", T)
    assert reissued == LinkReissued(space_id="sp1", at=T, participant_id="s", by="h", generation=2)
    with pytest.raises(Unauthorized, match="replaced"):
        room.check_link("s", 1)
    room.check_link("s", 2)
    assert room.claim_link("s", "k2", T)  # the claim was cleared: the new holder takes it
    assert room.role_of("s") is Role.SPEAKER  # the person kept their seat


def test_only_the_host_manages_links_and_makes_cohost_links() -> None:
    room = live_room()
    with pytest.raises(Forbidden, match="a cohost cannot issue a cohost link"):
        room.issue_link("c", "new", Role.COHOST, "N", T)
    room.issue_link("c", "new", Role.SPEAKER, "N", T)
    with pytest.raises(Forbidden, match="a cohost cannot revoke or reissue a link"):
        room.revoke_link("c", "s", T)
    with pytest.raises(NotFound):
        room.revoke_link("h", "ghost", T)


def test_links_and_demotions_survive_the_record_and_its_json() -> None:
    room = live_room()
    room.move_to_audience("h", "c", T)
    room.revoke_link("h", "s", T)
    record = room.record()
    assert record.demoted == (("c", Role.LISTENER),)
    assert record.links == (
        LinkRecord("s", "Sam", Role.SPEAKER, 1, "", True, T),
        LinkRecord("c", "Cora", Role.COHOST, 1, "", False, T),
    )
    again = record_from_json(record_to_json(record))
    assert again == record
    assert Room.restore(again).record() == record


def test_a_journal_from_before_links_reads_with_none() -> None:
    text = record_to_json(RoomRecord("sp1", "h", "Town hall"))
    old = text.replace(',"demoted":[],"links":[]', "")
    assert "links" not in old
    assert record_from_json(old) == RoomRecord("sp1", "h", "Town hall")


def test_a_record_with_a_bad_link_is_refused() -> None:
    bad = RoomRecord("sp1", "h", "x", links=(LinkRecord("h", "Host", Role.SPEAKER),))
    with pytest.raises(ValueError, match="second link"):
        Room.restore(bad)
    listener = RoomRecord("sp1", "h", "x", links=(LinkRecord("p", "P", Role.LISTENER),))
    with pytest.raises(ValueError, match="as listener"):
        Room.restore(listener)


# -- token lifetimes -----------------------------------------------------------------------


def test_a_week_ahead_token_is_valid_after_a_day() -> None:
    issuer = TokenIssuer("a secret of at least thirty-two bytes, for HS256")
    issued_at = time.time() - 25 * 3600  # issued 25 hours ago
    week_ahead = issued_at + 7 * DAY_S
    ttl = link_ttl_s(issuer.default_ttl_s, issued_at, week_ahead, 12 * 3600)
    assert ttl == 7 * DAY_S + 12 * 3600
    token = issuer.issue("sp", Role.SPEAKER, "S", ttl_s=ttl, now=issued_at, link_generation=1)
    grant = issuer.verify(token, "sp")
    assert grant.expires_at == int(week_ahead + 12 * 3600) and grant.link_generation == 1
    # A token with the default lifetime, from the same moment, has expired.
    default = issuer.issue("sp", Role.SPEAKER, "S", now=issued_at)
    with pytest.raises(Unauthorized, match="expired"):
        issuer.verify(default, "sp")
    # Starting soon, or scheduled for within the day: the default lifetime.
    assert link_ttl_s(DAY_S, T, None, 12 * 3600) == DAY_S
    assert link_ttl_s(DAY_S, T, T + 3600, 12 * 3600) == DAY_S


# -- over HTTP ---------------------------------------------------------------------------


async def link_of(town: Town, space: dict[str, object], token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


async def offer(
    town: Town, space: dict[str, object], token: str, holder: str | None
) -> httpx.Response:
    headers = {**bearer(token), **({"X-Townhall-Holder": holder} if holder else {})}
    return await town.client.post(
        f"/api/spaces/{space['id']}/stage/offer",
        headers=headers,
        json={"sdp": "v=0 m=audio", "type": "offer"},
    )


async def test_a_cohost_cannot_make_a_cohost(town: Town) -> None:
    space = await town.create()
    await town.go_live(space)
    made = await town.post(space, "/invite", host(space), json={"role": "cohost", "name": "C"})
    cohost = made.json()["token"]
    assert (await offer(town, space, cohost, "kc")).status_code == 200
    as_cohost = {**bearer(cohost), "X-Townhall-Holder": "kc"}
    invite = f"/api/spaces/{space['id']}/invite"
    resp = await town.client.post(invite, json={"role": "cohost", "name": "X"}, headers=as_cohost)
    assert "a cohost cannot issue a cohost link" in error_of(resp, 403)
    speaker = await town.client.post(
        invite, json={"role": "speaker", "name": "S"}, headers=as_cohost
    )
    assert speaker.status_code == 201, speaker.text


async def test_demote_leave_rejoin_stays_off_stage(town: Town) -> None:
    space = await town.create()
    stage = await town.go_live(space)
    token = await town.invite(space, "Sam")
    pid = await link_of(town, space, token)
    assert (await offer(town, space, token, "k1")).status_code == 200
    await town.command(space, host(space), "move_to_audience", pid)
    await eventually(lambda: is_true(pid in stage.disconnects and pid not in stage.members))
    left = await town.client.post(
        f"/api/spaces/{space['id']}/commands",
        json={"command": "leave"},
        headers={**bearer(token), "X-Townhall-Holder": "k1"},
    )
    assert left.status_code == 200, left.text
    again = await offer(town, space, token, "k1")
    assert "only people on stage" in error_of(again, 403)
    room = await town.room(space)
    assert seat(room, pid) is None and pid not in stage.members
    live = town.th.service.held(str(space["id"]))
    assert live is not None and live.room.program() == []


async def test_a_second_opener_is_refused_and_the_holder_reconnects(town: Town) -> None:
    space = await town.create()
    stage = await town.go_live(space)
    token = await town.invite(space)
    assert (await offer(town, space, token, "first")).status_code == 200
    second = await offer(town, space, token, "second")
    assert error_of(second, 409) == (
        "link_in_use: this link is already in use; ask the host for a new one"
    )
    assert (await offer(town, space, token, None)).status_code == 409
    assert (await offer(town, space, token, "first")).status_code == 200  # a reconnect
    assert stage.connects.count(await link_of(town, space, token)) == 2


async def test_revoke_and_reissue_over_http(town: Town) -> None:
    space = await town.create()
    stage = await town.go_live(space)
    token = await town.invite(space, "Sam")
    pid = await link_of(town, space, token)
    assert (await offer(town, space, token, "k")).status_code == 200
    listed = (await town.get(space, "/links", host(space))).json()["links"]
    sam = next(k for k in listed if k["participant_id"] == pid)
    assert sam == {
        "participant_id": pid,
        "name": "Sam",
        "role": "speaker",
        "claimed": True,
        "revoked": False,
        "generation": 1,
        "issued_at": sam["issued_at"],
    }
    links = f"/api/spaces/{space['id']}/links"
    mine = {**bearer(token), "X-Townhall-Holder": "k"}
    assert "cannot" in error_of(await town.client.get(links, headers=mine), 403)
    # Anyone else with the claimed link is refused, for every call, not only the stage.
    for other in (bearer(token), {**bearer(token), "X-Townhall-Holder": "other"}):
        assert "already in use" in error_of(await town.client.get(links, headers=other), 409)
        resp = await town.client.post(
            f"/api/spaces/{space['id']}/commands", json={"command": "leave"}, headers=other
        )
        assert "already in use" in error_of(resp, 409)

    reissued = await town.post(space, f"/links/{pid}/reissue", host(space))
    assert reissued.status_code == 200, reissued.text
    new = reissued.json()
    assert new["link"].endswith(new["token"].replace(".", ".")) and new["generation"] == 2
    assert await link_of(town, space, new["token"]) == pid  # the same person
    await eventually(lambda: is_true(pid in stage.disconnects))  # the old holder is cut off
    old = await offer(town, space, token, "k")
    assert "replaced" in error_of(old, 401)
    assert (await offer(town, space, new["token"], "new holder")).status_code == 200

    revoked = await town.post(space, f"/links/{pid}/revoke", host(space))
    assert revoked.json()["revoked"] is True
    for resp in (
        await offer(town, space, new["token"], "new holder"),
        await town.get(space, "/room", new["token"]),
        await town.command(space, new["token"], "raise_hand"),
    ):
        assert error_of(resp, 401) == "unauthorized: this link was revoked by the host"
    assert seat(await town.room(space), pid) is None


async def test_only_the_host_revokes_or_reissues(town: Town) -> None:
    space = await town.create()
    await town.go_live(space)
    made = await town.post(space, "/invite", host(space), json={"role": "cohost", "name": "C"})
    cohost = made.json()["token"]
    speaker = await town.invite(space)
    pid = await link_of(town, space, speaker)
    assert (await town.get(space, "/links", cohost)).status_code == 200
    for action in ("revoke", "reissue"):
        resp = await town.post(space, f"/links/{pid}/{action}", cohost)
        assert "cannot revoke or reissue" in error_of(resp, 403)
    assert "no link" in error_of(await town.post(space, "/links/ghost/revoke", host(space)), 404)


async def test_revocation_holds_across_a_control_restart(town: Town) -> None:
    space = await town.create()
    await town.go_live(space)
    token = await town.invite(space)
    pid = await link_of(town, space, token)
    await town.post(space, f"/links/{pid}/revoke", host(space))
    # A new control process on the same store, the first one gone without a word.
    restarted = Townhall(town.th.config, stage_factory=fake_stages({}))
    with pytest.raises(Unauthorized, match="revoked by the host"):
        restarted.service.authorize(str(space["id"]), token)


async def test_a_removed_listener_cannot_sign_in_again_from_their_session(town: Town) -> None:
    space = await town.create()
    await town.go_live(space)
    token, session = await town.sign_in(space, "Troll")
    await town.command(space, token, "raise_hand")
    await town.command(space, host(space), "remove", session)
    again = await town.client.post(
        f"/api/spaces/{space['id']}/listeners", json={"name": "Troll"}, headers=bearer(token)
    )
    assert "removed" in error_of(again, 403)
    renamed = await town.post(space, "/listeners/name", token, json={"name": "Nice"})
    assert "removed" in error_of(renamed, 403)
    # A bad or foreign previous token is no session: a fresh sign-in.
    fresh = await town.client.post(
        f"/api/spaces/{space['id']}/listeners", json={"name": "New"}, headers=bearer("junk")
    )
    assert fresh.status_code == 201


async def test_a_scheduled_space_gives_tokens_until_it_can_have_ended(town: Town) -> None:
    week_ahead = time.time() + 7 * DAY_S
    resp = await town.client.post(
        "/api/spaces",
        json={"title": "Next week", "scheduled_at": week_ahead},
        headers=bearer(town.th.admin_key),
    )
    space = resp.json()
    max_run_s = town.th.config.control.max_space_duration_s
    speaker = str(space["speaker_link"]).split("#t=")[1]
    for token in (host(space), speaker, await town.invite(space)):
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        assert abs(exp - (week_ahead + max_run_s)) < 5
    # Ended (cancelled): stage actions refused, the public description still readable.
    await town.post(space, "/end", host(space))
    assert "ended" in error_of(await offer(town, space, speaker, "k"), 409)
    assert (await town.client.get(f"/api/spaces/{space['id']}")).status_code == 200


# -- sockets closed at once -----------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
@pytest.mark.parametrize(
    ("command", "code"), [("remove", 4403), ("move_to_audience", 4403), ("revoke", 4401)]
)
def test_a_moderated_persons_socket_is_closed(tmp_path: Path, command: str, code: int) -> None:
    from fastapi.testclient import TestClient

    stages: dict[str, FakeStage] = {}
    th = Townhall(town_config(tmp_path), stage_factory=fake_stages(stages))
    with TestClient(create_app(th)) as client:
        space = client.post("/api/spaces", json={"title": "ws"}, headers=bearer(th.admin_key))
        space_id, host_token = space.json()["id"], space.json()["host_token"]
        api = f"/api/spaces/{space_id}"
        client.post(f"{api}/start", headers=bearer(host_token))
        cohost = client.post(
            f"{api}/invite", json={"role": "cohost", "name": "C"}, headers=bearer(host_token)
        ).json()["token"]
        with client.websocket_connect(f"{api}/ws?token={cohost}&holder=k") as ws:
            pid = ws.receive_json()["you"]
            if command == "revoke":
                client.post(f"{api}/links/{pid}/revoke", headers=bearer(host_token))
            else:
                body = {"command": command, "target": pid}
                client.post(f"{api}/commands", json=body, headers=bearer(host_token))
            with pytest.raises(WebSocketDisconnect) as closed:
                for _ in range(10):
                    message = ws.receive_json()
                    assert message["type"] != "room", "a snapshot reached a cut-off socket"
            assert closed.value.code == code
        live = th.service.held(space_id)
        assert live is not None and all(w.participant_id != pid for w in live.watchers)


@pytest.fixture
async def town(tmp_path: Path) -> AsyncIterator[Town]:
    async for t in open_town(town_config(tmp_path)):
        yield t


async def is_true(value: bool) -> bool:
    return value
