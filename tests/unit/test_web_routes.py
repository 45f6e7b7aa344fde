"""The routes behind the web pages, in memory: the public list, the moderators' list of
listeners, dismissed hands, cancelled Spaces, iCalendar files, Open Graph tags and the
human error pages (the real app, a fake stage, as in test_control_app)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.test_control_app import Town, bearer, host, open_town, town_config
from townhall.control.views import fold_ical_line, ical_text


@pytest.fixture
async def town(tmp_path: Path) -> AsyncIterator[Town]:
    async for t in open_town(town_config(tmp_path)):
        yield t


async def create(town: Town, **body: object) -> dict[str, object]:
    resp = await town.client.post(
        "/api/spaces", json={"title": "Town hall", **body}, headers=bearer(town.th.admin_key)
    )
    assert resp.status_code == 201, resp.text
    out: dict[str, object] = resp.json()
    return out


async def listed(town: Town, state: str) -> list[str]:
    resp = await town.client.get(f"/api/spaces?state={state}")
    assert resp.status_code == 200, resp.text
    return [s["id"] for s in resp.json()["spaces"]]


# -- the public list ---------------------------------------------------------------


async def test_the_public_list_shows_listed_spaces_by_state(town: Town) -> None:
    soon = await create(town, title="Soon", scheduled_at=2_000_000_000.0)
    later = await create(town, title="Later", scheduled_at=2_100_000_000.0)
    hidden = await create(town, title="Unlisted", listed=False)
    live = await create(town, title="On air", host_name="Ana Ruiz")
    cancelled = await create(town, title="Called off")
    await town.go_live(live)
    await town.post(cancelled, "/end", host(cancelled))

    assert await listed(town, "scheduled") == [soon["id"], later["id"]]
    assert await listed(town, "live") == [live["id"]]
    assert hidden["id"] not in await listed(town, "scheduled")
    assert await listed(town, "ended") == []  # a cancelled Space has nothing to replay
    await town.post(live, "/end", host(live))
    assert await listed(town, "ended") == [live["id"]]
    first = (await town.client.get("/api/spaces?state=ended")).json()["spaces"][0]
    assert first["host_name"] == "Ana Ruiz"
    assert first["replay_link"].endswith(f"/s/{live['id']}/replay")
    assert "ogg" not in str(first)  # the list carries no stream URLs
    assert (await town.client.get("/api/spaces?state=everything")).status_code == 400
    resp = await town.client.get("/api/spaces?state=live")
    assert resp.headers["cache-control"] == "public, max-age=5"


async def test_a_cancelled_space_says_so_and_offers_no_replay(town: Town) -> None:
    space = await create(town)
    ended = (await town.post(space, "/end", host(space))).json()
    assert ended["cancelled"] is True and ended["replay"] is None
    assert ended["replay_link"] is None
    aired = await create(town)
    await town.go_live(aired)
    done = (await town.post(aired, "/end", host(aired))).json()
    assert done["cancelled"] is False and done["replay"]["ogg"].endswith(".ogg")


async def test_the_host_is_named_as_given(town: Town) -> None:
    space = await create(town, host_name="Mayor Ana Ruiz")
    assert space["host_name"] == "Mayor Ana Ruiz"
    await town.go_live(space)
    stage = (await town.room(space))["stage"]
    assert isinstance(stage, list)
    assert [s["name"] for s in stage] == ["Mayor Ana Ruiz"]


# -- moderators: the listeners, dismissed hands ------------------------------------------


async def test_moderators_see_named_listeners_and_can_remove_them(town: Town) -> None:
    space = await create(town)
    await town.go_live(space)
    token, pid = await town.sign_in(space, "Troll")
    assert (await town.command(space, token, "raise_hand")).status_code == 200
    resp = await town.get(space, "/listeners", host(space))
    assert resp.json() == {"listeners": [{"id": pid, "name": "Troll", "hand_raised": True}]}
    # A listener may not read the list.
    assert (await town.get(space, "/listeners", token)).status_code == 403
    assert (await town.command(space, host(space), "remove", pid)).status_code == 200
    assert (await town.get(space, "/listeners", host(space))).json() == {"listeners": []}
    # Removed is blocked: the same person cannot come back.
    assert (await town.command(space, token, "raise_hand")).status_code == 403


async def test_a_dismissed_hand_is_lowered_for_the_listener_to_see(town: Town) -> None:
    space = await create(town)
    await town.go_live(space)
    token, pid = await town.sign_in(space, "Asker")
    await town.command(space, token, "raise_hand")
    other, _ = await town.sign_in(space, "Other")
    await town.command(space, other, "raise_hand")
    assert (await town.command(space, other, "dismiss_hand", pid)).status_code == 403
    resp = await town.command(space, host(space), "dismiss_hand", pid)
    assert resp.json()["events"] == ["HandLowered"]
    room = await town.room(space, token)
    # The listener sees their own hand in `you` (the queue is the moderators').
    assert room["you"]["hand_raised"] is False  # type: ignore[index]
    hosts_view = await town.room(space, host(space))
    assert pid not in [h["id"] for h in hosts_view["hand_queue"]]  # type: ignore[union-attr]


# -- calendar, previews, error pages ----------------------------------------------------


def unfold(text: str) -> list[str]:
    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")  # every line break is CRLF
    lines = text[:-2].split("\r\n")
    assert all(len(line.encode()) <= 75 for line in lines), lines
    out: list[str] = []
    for line in lines:
        if line.startswith(" "):
            out[-1] += line[1:]
        else:
            out.append(line)
    return out


def unescape(value: str) -> str:
    return re.sub(r"\\([\\;,nN])", lambda m: "\n" if m[1] in "nN" else m[1], value)


async def test_the_calendar_file_is_rfc_5545(town: Town) -> None:
    title = "Budget; Q&A, part 2 \\ the sequel — ünïcode " + "é" * 40
    space = await create(
        town,
        title=title,
        description="Line one\nLine two",
        scheduled_at=1_900_000_000.0,
        host_name='Ana "the Mayor" Ruiz',
    )
    resp = await town.client.get(f"/spaces/{space['id']}.ics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/calendar")
    lines = unfold(resp.text)
    assert lines[0] == "BEGIN:VCALENDAR" and lines[-1] == "END:VCALENDAR"
    props = dict(line.split(":", 1) for line in lines)
    assert props["VERSION"] == "2.0" and props["PRODID"]
    assert props["DTSTART"] == "20300317T174640Z"
    assert re.fullmatch(r"\d{8}T\d{6}Z", props["DTSTAMP"])
    assert props["UID"] == f"{space['id']}@townhall"
    assert unescape(props["SUMMARY"]) == title
    assert unescape(props["DESCRIPTION"]).startswith("Line one\nLine two\n\nListen: http")
    assert props["STATUS"] == "CONFIRMED"
    organizer = next(line for line in lines if line.startswith("ORGANIZER"))
    assert organizer.startswith('ORGANIZER;CN="Ana the Mayor Ruiz":')
    unscheduled = await create(town)
    assert (await town.client.get(f"/spaces/{unscheduled['id']}.ics")).status_code == 404
    assert (await town.client.get("/spaces/nope.ics")).status_code == 404


def test_ical_text_escapes_and_folds() -> None:
    assert ical_text("a,b;c\\d\r\ne\nf") == "a\\,b\\;c\\\\d\\ne\\nf"
    folded = fold_ical_line("SUMMARY:" + "é" * 60)
    parts = folded.split("\r\n ")
    assert all(len(p.encode()) <= 75 for p in parts)
    assert "".join(parts) == "SUMMARY:" + "é" * 60  # no character split


async def test_the_listen_page_carries_its_open_graph_tags(town: Town) -> None:
    space = await create(
        town,
        title='Budget <night> & "more"',
        description="Bring questions.",
        host_name="Ana",
        scheduled_at=1_900_000_000.0,
    )
    page = (await town.client.get(f"/s/{space['id']}")).text
    assert (
        '<meta property="og:title" content="Budget &lt;night&gt; &amp; &quot;more&quot;">' in page
    )
    assert '<meta property="og:url" content="http://127.0.0.1:8000/s/' in page
    description = re.search(r'property="og:description" content="([^"]*)"', page)
    assert description is not None
    assert "Starts Sun 17 Mar 2030, 17:46 UTC" in description[1]
    assert "hosted by Ana" in description[1] and "Bring questions." in description[1]
    assert "<title>Budget &lt;night&gt;" in page
    assert "<!--head-->" not in page


@pytest.mark.parametrize("path", ["/s/nope", "/s/nope/host", "/s/nope/replay"])
async def test_an_unknown_space_gets_a_human_page(town: Town, path: str) -> None:
    resp = await town.client.get(path)
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("text/html")
    assert "This Space does not exist" in resp.text and "{{" not in resp.text


async def test_an_unknown_page_of_a_space_gets_a_human_page(town: Town) -> None:
    space = await create(town)
    resp = await town.client.get(f"/s/{space['id']}/<script>")
    assert resp.status_code == 404 and resp.headers["content-type"].startswith("text/html")
    assert "<script>" not in resp.text.split("<body", 1)[1]
    assert (await town.client.get(f"/s/{space['id']}/replay")).status_code == 200


async def test_a_store_from_before_the_new_columns_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from townhall.store import Store

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE spaces (id TEXT PRIMARY KEY, title TEXT NOT NULL, description TEXT"
        " NOT NULL DEFAULT '', state TEXT NOT NULL, host_id TEXT NOT NULL, scheduled_at"
        " REAL, created_at REAL NOT NULL, started_at REAL, ended_at REAL);"
        "INSERT INTO spaces VALUES ('old', 'Old', '', 'ended', 'h', NULL, 1, 2, 3);"
    )
    db.commit()
    db.close()
    record = Store(path).space("old")
    assert record.listed is True and record.host_name == "Host"
