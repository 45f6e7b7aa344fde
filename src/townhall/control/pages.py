"""The web UI: static pages from the package, hls.js from the npm install."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from townhall.control.service import SpaceService

WEB = Path(__file__).resolve().parent.parent / "web"


def hls_js_path() -> Path | None:
    """hls.js comes from the npm registry (package.json), never committed as a build."""
    candidates = [os.environ.get("TOWNHALL_HLS_JS", "")]
    root = Path(__file__).resolve()
    candidates += [
        str(p / "node_modules/hls.js/dist/hls.min.js") for p in [Path.cwd(), *root.parents]
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((WEB / name).read_text(), headers={"Cache-Control": "no-cache"})


def install_pages(app: FastAPI, service: SpaceService) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return _page("index.html")

    @app.get("/s/{space_id}", include_in_schema=False)
    async def listen_page(space_id: str) -> HTMLResponse:
        service.space(space_id)  # 404 for an unknown space
        return _page("listen.html")

    @app.get("/s/{space_id}/{role_page}", include_in_schema=False)
    async def stage_page(space_id: str, role_page: str) -> HTMLResponse:
        service.space(space_id)  # 404 for an unknown space
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
