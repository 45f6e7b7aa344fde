"""The control API: JSON over HTTP for the people who run the room (OpenAPI at /docs).

Thin: parse and validate, check the token, call ``Townhall``, return JSON. The rules
live in the room state machine and the stage; errors are rendered in ``errors.py``.
Listener actions (hands, reactions, heartbeats) are rate-limited HTTP calls; only the
people on stage hold a WebSocket (``ws.py``).
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from townhall.app import COMMANDS, Townhall
from townhall.control.errors import BodyLimit, install_error_handlers
from townhall.control.pages import install_pages
from townhall.control.ws import install_websocket
from townhall.errors import Unauthorized
from townhall.metrics import TownhallCollector
from townhall.tokens import Grant

CommandName = Literal[tuple(COMMANDS)]  # type: ignore[valid-type]


class CreateSpace(BaseModel):
    title: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=1000)
    scheduled_at: float | None = Field(default=None, description="Unix time of the planned start")


class SdpOffer(BaseModel):
    sdp: str = Field(min_length=1, max_length=64 * 1024)
    type: Literal["offer"]


class Invite(BaseModel):
    role: Literal["speaker", "cohost"] = "speaker"
    name: str = Field(default="Speaker", min_length=1, max_length=50)


class SignIn(BaseModel):
    name: str = Field(default="Listener", min_length=1, max_length=50)


class Command(BaseModel):
    command: CommandName  # type: ignore[valid-type]
    target: str | None = Field(default=None, max_length=64)


class Reaction(BaseModel):
    emoji: str = Field(min_length=1, max_length=8)


def bearer(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    return authorization.removeprefix("Bearer ").strip()


def install_metrics(app: FastAPI, th: Townhall) -> None:
    registry = CollectorRegistry()
    registry.register(TownhallCollector(th))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def create_app(th: Townhall) -> FastAPI:
    app = FastAPI(title="townhall control API", version="0.1.0")
    install_error_handlers(app)
    app.include_router(_spaces_router(th))
    install_websocket(app, th)
    install_pages(app, th)
    install_metrics(app, th)
    app.add_middleware(BodyLimit, max_bytes=th.config.control.max_body_bytes)
    return app


def _spaces_router(th: Townhall) -> APIRouter:
    r = APIRouter(prefix="/api")

    async def grant_for(space_id: str, token: Annotated[str, Depends(bearer)]) -> Grant:
        th.store.space(space_id)  # 404 for an unknown space before any token question
        return th.issuer.verify(token, space_id)

    Auth = Annotated[Grant, Depends(grant_for)]

    @r.post("/spaces", status_code=201)
    async def create_space(
        body: CreateSpace, key: Annotated[str, Depends(bearer)]
    ) -> dict[str, object]:
        th.check_admin(key)
        return th.create_space(body.title, body.description, body.scheduled_at)

    @r.get("/spaces/{space_id}")
    async def get_space(space_id: str) -> dict[str, object]:
        return {
            **th.describe(th.store.space(space_id)),
            "room": th.space(space_id).public_snapshot(),
        }

    @r.post("/spaces/{space_id}/start")
    async def start(grant: Auth) -> dict[str, object]:
        return th.describe(await th.start_space(grant))

    @r.post("/spaces/{space_id}/end")
    async def end(grant: Auth) -> dict[str, object]:
        return th.describe(await th.end_space(grant))

    @r.post("/spaces/{space_id}/invite", status_code=201)
    async def invite(body: Invite, grant: Auth) -> dict[str, str]:
        th.require_moderator(grant)
        token = th.issuer.issue(grant.space_id, body.role, body.name)
        return {"token": token, "link": th.link(grant.space_id, "speak", token)}

    @r.post("/spaces/{space_id}/listeners", status_code=201)
    async def sign_in(space_id: str, body: SignIn, request: Request) -> dict[str, str]:
        address = request.client.host if request.client else "unknown"
        return th.sign_in_listener(th.store.space(space_id).id, body.name, address)

    @r.post("/spaces/{space_id}/heartbeat")
    async def heartbeat(grant: Auth) -> dict[str, int]:
        return th.heartbeat(grant)

    @r.get("/spaces/{space_id}/room")
    async def room(grant: Auth) -> dict[str, object]:
        return th.join(grant).snapshot()

    @r.post("/spaces/{space_id}/commands")
    async def command(body: Command, grant: Auth) -> dict[str, object]:
        events = th.command(grant, body.command, body.target)
        return {
            "events": [type(e).__name__ for e in events],
            "room": th.space(grant.space_id).snapshot(),
        }

    @r.post("/spaces/{space_id}/reactions")
    async def react(body: Reaction, grant: Auth) -> dict[str, object]:
        th.react(grant, body.emoji)
        return {"reaction_tallies": th.space(grant.space_id).room.reaction_tallies()}

    @r.post("/spaces/{space_id}/stage/offer")
    async def offer(body: SdpOffer, grant: Auth) -> dict[str, str]:
        sdp, kind = await th.connect_stage(grant, body.sdp, body.type)
        return {"sdp": sdp, "type": kind}

    @r.get("/spaces/{space_id}/stage")
    async def stage_status(grant: Auth) -> dict[str, object]:
        return {"members": th.require_moderator(grant).stage_status()}

    return r
