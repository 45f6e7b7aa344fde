"""The control API: JSON over HTTP for the people who run the room (OpenAPI at /docs).

Thin: parse and validate, check the token, call the ``SpaceService``, render JSON with
``SpaceViews``. The rules live in the room state machine and the stage; errors are
rendered in ``errors.py``. Listener actions (hands, reactions, heartbeats) are
rate-limited HTTP calls; only the people on stage hold a WebSocket (``ws.py``).
"""

# The request models are built from the configuration when the app is made (their bounds
# are settings): static typing can follow neither their fields nor the routes naming them.
# mypy: disable-error-code="valid-type,attr-defined,arg-type,maybe-unrecognized-str-typeform"

from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field, create_model

from townhall.app import Control
from townhall.config import ServerConfig
from townhall.control.errors import BodyLimit, install_error_handlers
from townhall.control.pages import install_pages
from townhall.control.service import SpaceService
from townhall.control.views import SpaceViews
from townhall.control.ws import install_websocket
from townhall.errors import Unauthorized
from townhall.live import COMMANDS
from townhall.metrics import TownhallCollector
from townhall.room.roles import Role
from townhall.tokens import Grant

CommandName = Literal[tuple(COMMANDS)]


@dataclass(frozen=True)
class RequestModels:
    """The request bodies, built from the configuration: the bounds the rules enforce are
    the ones the API validates and the OpenAPI schema shows."""

    create_space: type[BaseModel]
    sdp_offer: type[BaseModel]
    invite: type[BaseModel]
    sign_in: type[BaseModel]
    listener_name: type[BaseModel]
    command: type[BaseModel]
    reaction: type[BaseModel]


def _text(max_chars: int, default: str | None = None, min_chars: int = 1) -> Any:
    if default is None:
        return (str, Field(min_length=min_chars, max_length=max_chars))
    return (str, Field(default=default, min_length=min_chars, max_length=max_chars))


def request_models(config: ServerConfig) -> RequestModels:
    room, control = config.room, config.control
    name = room.max_name_chars
    return RequestModels(
        create_space=create_model(
            "CreateSpace",
            title=_text(room.max_title_chars),
            description=_text(room.max_description_chars, default="", min_chars=0),
            scheduled_at=(
                float | None,
                Field(default=None, description="Unix time of the planned start"),
            ),
        ),
        sdp_offer=create_model(
            "SdpOffer", sdp=_text(config.stage.max_offer_bytes), type=(Literal["offer"], ...)
        ),
        invite=create_model(
            "Invite",
            role=(Literal["speaker", "cohost"], "speaker"),
            name=_text(name, default="Speaker"),
        ),
        sign_in=create_model("SignIn", name=_text(name, default="Listener")),
        listener_name=create_model("ListenerName", name=_text(name)),
        command=create_model(
            "Command",
            command=(CommandName, ...),
            target=(str | None, Field(default=None, max_length=control.max_target_chars)),
        ),
        reaction=create_model("Reaction", emoji=_text(control.max_emoji_chars)),
    )


def bearer(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    return authorization.removeprefix("Bearer ").strip()


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def install_metrics(app: FastAPI, th: Control) -> None:
    registry = CollectorRegistry()
    registry.register(TownhallCollector(th))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def install_health(app: FastAPI, th: Control) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, object]:
        """Every process of this server: role, name, pid, start time, restarts."""
        return th.reports.healthz()


def create_app(th: Control) -> FastAPI:
    app = FastAPI(title="townhall control API", version="0.1.0")
    install_error_handlers(app)
    install_health(app, th)
    app.include_router(_spaces_router(th.service, th.views, request_models(th.config)))
    install_websocket(app, th.service)
    install_pages(app, th.service)
    install_metrics(app, th)
    app.add_middleware(BodyLimit, max_bytes=th.config.control.max_body_bytes)
    return app


def _spaces_router(service: SpaceService, views: SpaceViews, m: RequestModels) -> APIRouter:
    r = APIRouter(prefix="/api")
    CreateSpace, SdpOffer, Invite = m.create_space, m.sdp_offer, m.invite
    SignIn, ListenerName, Command, Reaction = m.sign_in, m.listener_name, m.command, m.reaction

    async def grant_for(space_id: str, token: Annotated[str, Depends(bearer)]) -> Grant:
        return service.authorize(space_id, token)

    Auth = Annotated[Grant, Depends(grant_for)]

    @r.get("/config", include_in_schema=False)
    async def client_config() -> dict[str, str]:
        return views.client_config()

    @r.post("/spaces", status_code=201)
    async def create_space(
        body: CreateSpace, key: Annotated[str, Depends(bearer)]
    ) -> dict[str, object]:
        made = service.create_space(key, body.title, body.description, body.scheduled_at)
        return views.created(made.space, made.host_token, made.speaker_token)

    @r.get("/spaces/{space_id}")
    async def get_space(space_id: str) -> dict[str, object]:
        record, room = service.public_view(space_id)
        return {**views.describe(record), "room": room}

    @r.post("/spaces/{space_id}/start")
    async def start(grant: Auth) -> dict[str, object]:
        return views.describe(await service.start(grant))

    @r.post("/spaces/{space_id}/end")
    async def end(grant: Auth) -> dict[str, object]:
        return views.describe(await service.end(grant))

    @r.post("/spaces/{space_id}/invite", status_code=201)
    async def invite(body: Invite, grant: Auth) -> dict[str, str]:
        token = service.invite(grant, Role(body.role), body.name)
        return {"token": token, "link": views.link(grant.space_id, "speak", token)}

    @r.post("/spaces/{space_id}/listeners", status_code=201)
    async def sign_in(space_id: str, body: SignIn, request: Request) -> dict[str, str]:
        return asdict(service.sign_in(space_id, body.name, client_address(request)))

    @r.post("/spaces/{space_id}/listeners/name")
    async def rename_listener(body: ListenerName, grant: Auth, request: Request) -> dict[str, str]:
        """Give a listener session a name, keeping its id: one person stays one count.

        The web page signs a listener in (for heartbeats) when they press Play, and asks
        for a name only when they raise a hand.
        """
        return asdict(service.rename_listener(grant, body.name, client_address(request)))

    @r.post("/spaces/{space_id}/heartbeat")
    async def heartbeat(grant: Auth, request: Request) -> dict[str, int]:
        return asdict(service.heartbeat(grant, client_address(request)))

    @r.get("/spaces/{space_id}/room")
    async def room(grant: Auth) -> dict[str, object]:
        return service.room(grant)

    @r.post("/spaces/{space_id}/commands")
    async def command(body: Command, grant: Auth, request: Request) -> dict[str, object]:
        outcome = service.command(grant, body.command, body.target, client_address(request))
        return {"events": [type(e).__name__ for e in outcome.events], "room": outcome.room}

    @r.post("/spaces/{space_id}/reactions")
    async def react(body: Reaction, grant: Auth, request: Request) -> dict[str, object]:
        outcome = service.react(grant, body.emoji, client_address(request))
        return {"reaction_tallies": outcome.room["reaction_tallies"]}

    @r.post("/spaces/{space_id}/stage/offer")
    async def offer(body: SdpOffer, grant: Auth) -> dict[str, str]:
        answer = await service.connect_stage(grant, body.sdp, body.type)
        return {"sdp": answer.sdp, "type": answer.type}

    @r.get("/spaces/{space_id}/stage")
    async def stage_status(grant: Auth) -> dict[str, object]:
        return {"members": service.stage_status(grant)}

    return r
