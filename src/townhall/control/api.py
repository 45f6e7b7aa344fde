"""The control API: JSON over HTTP for the people who run the room (OpenAPI at /docs).

Thin: parse and validate, check the token, call ``Townhall``, return JSON. The rules
live in the room state machine and the stage; errors are rendered in ``errors.py``.
"""


from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Header
from pydantic import BaseModel, Field

from townhall.app import Townhall
from townhall.control.errors import BodyLimit, install_error_handlers
from townhall.control.pages import install_pages
from townhall.errors import Unauthorized
from townhall.tokens import Grant


class CreateSpace(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    scheduled_at: float | None = Field(default=None, description="Unix time of the planned start")


class SdpOffer(BaseModel):
    sdp: str = Field(min_length=1, max_length=64 * 1024)
    type: Literal["offer"]


class Invite(BaseModel):
    role: Literal["speaker", "cohost"] = "speaker"
    name: str = Field(default="Speaker", min_length=1, max_length=80)


def bearer(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    return authorization.removeprefix("Bearer ").strip()


def create_app(th: Townhall) -> FastAPI:
    app = FastAPI(title="townhall control API", version="0.1.0")
    install_error_handlers(app)
    app.include_router(_spaces_router(th))
    install_pages(app, th)
    app.add_middleware(BodyLimit, max_bytes=th.config.max_body_bytes)
    return app


def _spaces_router(th: Townhall) -> APIRouter:
    r = APIRouter(prefix="/api")

    def grant_for(space_id: str, token: Annotated[str, Depends(bearer)]) -> Grant:
        th.store.space(space_id)  # 404 for an unknown space before any token question
        return th.issuer.verify(token, space_id)

    Auth = Annotated[Grant, Depends(grant_for)]

    @r.post("/spaces", status_code=201)
    def create_space(body: CreateSpace, key: Annotated[str, Depends(bearer)]) -> dict[str, object]:
        th.check_admin(key)
        return th.create_space(body.title, body.description, body.scheduled_at)

    @r.get("/spaces/{space_id}")
    def get_space(space_id: str) -> dict[str, object]:
        return th.describe(th.store.space(space_id))

    @r.post("/spaces/{space_id}/start")
    async def start(grant: Auth) -> dict[str, object]:
        return th.describe(th.start_space(grant))

    @r.post("/spaces/{space_id}/end")
    async def end(grant: Auth) -> dict[str, object]:
        return th.describe(await th.end_space(grant))

    @r.post("/spaces/{space_id}/invite", status_code=201)
    def invite(body: Invite, grant: Auth) -> dict[str, str]:
        th.require_moderator(grant)
        token = th.issuer.issue(grant.space_id, body.role, body.name)
        return {"token": token, "link": th.link(grant.space_id, "speak", token)}

    @r.post("/spaces/{space_id}/stage/offer")
    async def offer(body: SdpOffer, grant: Auth) -> dict[str, str]:
        th.require_stage_role(grant)
        answer = await th.live_stage(grant.space_id).connect(
            grant.participant_id, grant.name, body.sdp, body.type
        )
        return {"sdp": answer.sdp, "type": answer.type}

    @r.get("/spaces/{space_id}/stage")
    def stage_status(grant: Auth) -> dict[str, object]:
        th.require_stage_role(grant)
        return {"members": th.live_stage(grant.space_id).status()}

    return r
