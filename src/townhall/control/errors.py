"""The one place the control API turns errors into JSON responses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from townhall.errors import TownhallError


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TownhallError)
    async def townhall_error(_req: Request, err: TownhallError) -> JSONResponse:
        headers = {}
        retry = getattr(err, "retry_after_s", None)
        if retry is not None:
            headers["Retry-After"] = str(max(1, round(retry)))
        return JSONResponse(err.to_json(), status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_req: Request, err: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return JSONResponse({"error": "bad_request", "detail": detail}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req: Request, err: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if err.status_code == 404 else "http_error"
        return JSONResponse({"error": code, "detail": str(err.detail)}, status_code=err.status_code)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = JSONResponse(
            {"error": "payload_too_large", "detail": f"request body over {self.max_bytes} bytes"},
            status_code=413,
        )
        await body({"type": "http"}, _empty_receive, send)


class _TooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b""}
