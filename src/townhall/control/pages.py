"""The web UI: static pages from the package, hls.js from the npm install."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastapi import FastAPI, Header, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from townhall.app import Townhall
from townhall.errors import Conflict, Forbidden, Unauthorized

WEB = Path(__file__).resolve().parent.parent / "web"


def hls_js_path() -> Path | None:
    """hls.js comes from the npm registry (package.json), never committed as a build."""
    candidates = [os.environ.get("TOWNHALL_HLS_JS", "")]
    root = Path(__file__).resolve()
    candidates += [
        str(p / "node_modules/hls.js/dist/hls.min.js") for p in [Path.cwd(), *root.parents]
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


class ListenerName(BaseModel):
    name: str = Field(min_length=1, max_length=50)


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((WEB / name).read_text(), headers={"Cache-Control": "no-cache"})


def install_pages(app: FastAPI, th: Townhall) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return _page("index.html")

    @app.get("/s/{space_id}", include_in_schema=False)
    async def listen_page(space_id: str) -> HTMLResponse:
        th.store.space(space_id)
        return _page("listen.html")

    @app.get("/s/{space_id}/{role_page}", include_in_schema=False)
    async def stage_page(space_id: str, role_page: str) -> HTMLResponse:
        th.store.space(space_id)
        if role_page not in ("host", "speak"):
            return JSONResponse({"error": "not_found", "detail": f"no page {role_page!r}"}, 404)  # type: ignore[return-value]
        return _page("stage.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name == "hls.min.js" and (path := hls_js_path()) is not None:
            return FileResponse(path, media_type="text/javascript")
        path = WEB / name
        if "/" in name or not path.is_file():
            return JSONResponse({"error": "not_found", "detail": f"no static file {name!r}"}, 404)  # type: ignore[return-value]
        return FileResponse(path)

    @app.get("/api/config", include_in_schema=False)
    async def client_config() -> dict[str, str]:
        return {"audience_url": th.config.audience_url}

    @app.post("/api/spaces/{space_id}/listeners/name")
    def rename_listener(
        space_id: str,
        body: ListenerName,
        request: Request,
        authorization: str | None = Header(default=None),
    ) -> dict[str, str]:
        """Give a listener session a name, keeping its id: one person stays one count.

        The web page signs a listener in (for heartbeats) when they press Play, and asks
        for a name only when they raise a hand. Until they have joined the room (a hand,
        a reaction), the name is only in the token, so a re-issued token is the rename.
        """
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("send 'Authorization: Bearer <token>'")
        space = th.store.space(space_id)
        grant = th.issuer.verify(authorization.removeprefix("Bearer ").strip(), space.id)
        if grant.role != "listener":
            raise Forbidden("only a listener session can be renamed here")
        address = request.client.host if request.client else "unknown"
        th.signin_limiter.take(address, time.monotonic(), "sign-ins from this address")
        if th.space(space.id).room.role_of(grant.participant_id) is not None:
            raise Conflict("this session already joined the room under its name")
        token = th.issuer.issue(
            space.id, "listener", body.name, participant_id=grant.participant_id
        )
        return {"token": token, "session_id": grant.participant_id}
