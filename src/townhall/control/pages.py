"""The web UI: static pages from the package, hls.js from the npm install.

Pages that name a Space are answered in HTML whatever happens: an unknown Space or
page gets a human 404 page, never the API's JSON. The listen page carries the Space's
Open Graph tags in its HTML (link previews in chat apps read no JavaScript).
"""

from __future__ import annotations

import html
import os
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from townhall.control.service import SpaceService
from townhall.control.views import SpaceViews, is_cancelled
from townhall.errors import NotFound
from townhall.store import SpaceRecord

WEB = Path(__file__).resolve().parent.parent / "web"
STAGE_PAGES = {"host": "stage.html", "speak": "stage.html", "replay": "replay.html"}
# Characters of a description a link preview carries (previews cut longer ones anyway).
PREVIEW_DESCRIPTION_CHARS = 200


def hls_js_path() -> Path | None:
    """hls.js comes from the npm registry (package.json), never committed as a build."""
    return _npm_file("TOWNHALL_HLS_JS", "hls.js/dist/hls.min.js")


def _npm_file(env: str, relative: str) -> Path | None:
    candidates = [os.environ.get(env, "")]
    root = Path(__file__).resolve()
    candidates += [str(p / "node_modules" / relative) for p in [Path.cwd(), *root.parents]]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _page(name: str, head: str = "") -> HTMLResponse:
    text = (WEB / name).read_text()
    if head:
        text = text.replace("<!--head-->", head, 1)
    return HTMLResponse(text, headers={"Cache-Control": "no-cache"})


def error_page(status: int, title: str, message: str) -> HTMLResponse:
    """A human error page: what went wrong and where to go from here."""
    text = (WEB / "error.html").read_text()
    text = text.replace("{{title}}", html.escape(title)).replace(
        "{{message}}", html.escape(message)
    )
    return HTMLResponse(text, status_code=status, headers={"Cache-Control": "no-cache"})


def _unknown_space() -> HTMLResponse:
    return error_page(
        404,
        "This Space does not exist",
        "Nothing is found at this address. Check the link you were given: it may be "
        "cut short or mistyped.",
    )


def preview_head(space: SpaceRecord, views: SpaceViews) -> str:
    """The page title, description and Open Graph / Twitter card tags of a Space."""
    when = ""
    if is_cancelled(space):
        when = "Cancelled. "
    elif space.state == "live":
        when = "Live now. "
    elif space.state == "ended":
        when = "Ended; the replay is available. "
    elif space.scheduled_at:
        start = datetime.fromtimestamp(space.scheduled_at, UTC)
        when = f"Starts {start:%a %d %b %Y, %H:%M} UTC. "
    about = space.description[:PREVIEW_DESCRIPTION_CHARS]
    description = f"{when}A live audio Space hosted by {space.host_name}. {about}".strip()
    url = f"{views.control_url}/s/{space.id}"
    tags = {
        "og:type": "website",
        "og:site_name": "townhall",
        "og:title": space.title,
        "og:description": description,
        "og:url": url,
    }
    e = html.escape
    out = [f"<title>{e(space.title)} · townhall</title>"]
    out.append(f'<meta name="description" content="{e(description)}">')
    out += [f'<meta property="{k}" content="{e(v)}">' for k, v in tags.items()]
    out.append('<meta name="twitter:card" content="summary">')
    out.append(f'<meta name="twitter:title" content="{e(space.title)}">')
    out.append(f'<meta name="twitter:description" content="{e(description)}">')
    out.append(f'<link rel="canonical" href="{e(url)}">')
    return "\n  ".join(out)


def install_pages(app: FastAPI, service: SpaceService, views: SpaceViews) -> None:
    def space_or_none(space_id: str) -> SpaceRecord | None:
        try:
            return service.space(space_id)
        except NotFound:
            return None

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return _page("index.html")

    @app.get("/s/{space_id}", include_in_schema=False)
    async def listen_page(space_id: str) -> HTMLResponse:
        space = space_or_none(space_id)
        if space is None:
            return _unknown_space()
        return _page("listen.html", preview_head(space, views))

    @app.get("/s/{space_id}/{role_page}", include_in_schema=False)
    async def stage_page(space_id: str, role_page: str) -> HTMLResponse:
        space = space_or_none(space_id)
        if space is None:
            return _unknown_space()
        if role_page not in STAGE_PAGES:
            return error_page(404, "No such page", f"This Space has no page called {role_page!r}.")
        head = preview_head(space, views) if role_page == "replay" else ""
        return _page(STAGE_PAGES[role_page], head)

    @app.get("/spaces/{space_id}.ics", include_in_schema=False)
    async def calendar(space_id: str) -> Response:
        space = space_or_none(space_id)
        if space is None:
            return _unknown_space()
        text = views.calendar(space)
        if text is None:
            return error_page(
                404,
                "No start time",
                "This Space has no scheduled start, so there is nothing to add to a calendar.",
            )
        return Response(
            text.encode(),
            media_type="text/calendar; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="townhall-{space.id}.ics"',
                "Cache-Control": "no-cache",
            },
        )

    # The files there at start-up: a request names one of them or gets 404, so no name
    # a client makes up ever reaches the filesystem.
    shipped = {p.name for p in WEB.iterdir() if p.is_file()}

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name == "hls.min.js" and (path := hls_js_path()) is not None:
            return FileResponse(path, media_type="text/javascript")
        if name not in shipped:
            detail = f"no static file {name[:80]!r}"
            return JSONResponse({"error": "not_found", "detail": detail}, 404)  # type: ignore[return-value]
        return FileResponse(WEB / name)
