"""The control API: JSON over HTTP for the people who run the room (OpenAPI at /docs).

Thin: parse and validate, check the token, call the ``SpaceService``, render JSON with
``SpaceViews``. The rules live in the room state machine and the stage; errors are
rendered in ``errors.py``. Listener actions (hands, reactions, heartbeats) are
rate-limited HTTP calls; only the people on stage hold a WebSocket (``ws.py``).
"""

# The request models are built from the configuration when the app is made (their bounds
# are settings): static typing can follow neither their fields nor the routes naming them.
# mypy: disable-error-code="valid-type,attr-defined,arg-type,maybe-unrecognized-str-typeform"

import secrets
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
from townhall.control.waiting import CountedRequests
from townhall.control.ws import install_websocket
from townhall.errors import Unauthorized
from townhall.live import COMMANDS
from townhall.metrics import TownhallCollector
from townhall.room.roles import Role
from townhall.tokens import Grant

CommandName = Literal[tuple(COMMANDS)]
# How long a cache may keep the public list of Spaces (it changes when one starts or ends).
LIST_MAX_AGE_S = 5


class GoLive(BaseModel):
    force: bool = Field(default=False, description="go live even with dead microphones")


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
    late_message: type[BaseModel]


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
            listed=(
                bool,
                Field(default=True, description="Shown on the public front page"),
            ),
            host_name=_text(name, default="Host"),
            speaker_name=_text(name, default="Speaker"),
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
        late_message=create_model(
            "LateMessage", message=_text(room.max_late_message_chars, default="", min_chars=0)
        ),
    )


def bearer(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    return authorization.removeprefix("Bearer ").strip()


def optional_bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
    if not authorization or not authorization.startswith("Bearer "):
        return None
    return authorization.removeprefix("Bearer ").strip()


# The key a client keeps to hold an invitation link (see ``Room.claim_link``).
HolderKey = Annotated[str | None, Header(alias="X-Townhall-Holder", max_length=128)]


def client_address(request: Request) -> str:
    """The socket's peer, or, when that peer is a configured trusted proxy
    (``control.trusted_proxies``), the client its X-Forwarded-For names: uvicorn's
    ProxyHeadersMiddleware, set up in process.py, has already put it in the scope."""
    return request.client.host if request.client else "unknown"


def install_metrics(app: FastAPI, th: Control, private: bool = True) -> None:
    """``/metrics``: it names every Space held in memory, scheduled ones included, so on
    the control port it takes the admin key; on ``control.metrics_address`` (a
    separate, private address) it is open to whoever reaches that address."""
    registry = CollectorRegistry()
    registry.register(TownhallCollector(th))

    @app.get("/metrics", include_in_schema=False)
    async def metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        if private:
            check_admin_key(th.admin_key, authorization)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def check_admin_key(admin_key: str, authorization: str | None) -> None:
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("/metrics needs 'Authorization: Bearer <admin key>'")
    if not secrets.compare_digest(given.encode(), admin_key.encode()):
        raise Unauthorized("/metrics needs the admin key; that is not it")


def create_metrics_app(th: Control) -> FastAPI:
    """``/metrics`` alone, open, for ``control.metrics_address``."""
    app = FastAPI(title="townhall metrics", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    install_metrics(app, th, private=False)
    return app


def install_health(app: FastAPI, th: Control) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, object]:
        """Every process of this server: role, name, pid, start time, restarts."""
        return th.reports.healthz()


def create_app(th: Control) -> FastAPI:
    app = FastAPI(title="townhall control API", version="0.1.0")
    install_error_handlers(app)
    install_health(app, th)
    app.include_router(
        _spaces_router(
            th.service, th.views, request_models(th.config), th.config.control.space_max_age_s
        )
    )
    install_websocket(app, th.service)
    install_pages(app, th.service, th.views)
    if not th.config.control.metrics_address:
        install_metrics(app, th)
    app.add_middleware(BodyLimit, max_bytes=th.config.control.max_body_bytes)
    app.add_middleware(CountedRequests, rooms=th.waiting)
    return app


def _spaces_router(
    service: SpaceService, views: SpaceViews, m: RequestModels, space_max_age_s: int = 5
) -> APIRouter:
    r = APIRouter(prefix="/api")
    CreateSpace, SdpOffer, Invite = m.create_space, m.sdp_offer, m.invite
    SignIn, ListenerName, Command, Reaction = m.sign_in, m.listener_name, m.command, m.reaction
    LateMessage = m.late_message

    async def grant_for(
        space_id: str, token: Annotated[str, Depends(bearer)], holder: HolderKey = None
    ) -> Grant:
        return service.authorize(space_id, token, holder)

    Auth = Annotated[Grant, Depends(grant_for)]

    @r.get("/config", include_in_schema=False)
    async def client_config() -> dict[str, str]:
        return views.client_config()

    @r.post("/spaces", status_code=201)
    async def create_space(
        body: CreateSpace, key: Annotated[str, Depends(bearer)]
    ) -> dict[str, object]:
        made = service.create_space(
            key,
            body.title,
            body.description,
            body.scheduled_at,
            body.listed,
            body.host_name,
            body.speaker_name,
        )
        return views.created(made.space, made.host_token, made.speaker_token)

    @r.get("/spaces")
    async def list_spaces(
        response: Response,
        state: Literal["live", "scheduled", "ended"] = "live",
    ) -> dict[str, object]:
        """Listed Spaces in one state (the front page); a Space created with
        ``listed: false`` is reached only by its link."""
        # The same for everyone: a cache or CDN in front may answer it for a few seconds.
        response.headers["Cache-Control"] = f"public, max-age={LIST_MAX_AGE_S}"
        spaces = service.listed_spaces(state)
        return {"state": state, "spaces": [views.summary(s) for s in spaces]}

    @r.get("/spaces/{space_id}/listeners")
    async def listeners(grant: Auth) -> dict[str, object]:
        """The listeners the room knows by name, for the host and co-hosts."""
        return {"listeners": service.listeners(grant)}

    @r.get("/spaces/{space_id}")
    async def get_space(space_id: str, response: Response) -> dict[str, object]:
        record, room = service.public_view(space_id)
        # Public and the same for everyone: a CDN may answer a crowd from one copy.
        response.headers["Cache-Control"] = f"public, max-age={space_max_age_s}"
        return {**views.describe(record), "room": room}

    @r.post("/spaces/{space_id}/late_message")
    async def late_message(body: LateMessage, grant: Auth) -> dict[str, object]:
        """The host's (or a co-host's) message to the listeners waiting for the start,
        e.g. "running ten minutes late"; an empty message takes it back."""
        outcome = service.post_late_message(grant, body.message)
        return {"late_message": outcome.room["late_message"]}

    @r.post("/spaces/{space_id}/start")
    async def start(grant: Auth, body: GoLive | None = None) -> dict[str, object]:
        """Go live. From the green room, 409 ``dead_microphones`` (with ``dead_mics``:
        id, name, reason) when someone on stage would not be heard, unless ``force``."""
        force = body is not None and body.force
        return views.describe(await service.start(grant, force=force))

    @r.post("/spaces/{space_id}/green-room")
    async def green_room(grant: Auth) -> dict[str, object]:
        """Open the stage before the start (the host): the room, as moderators see it."""
        return service.open_green_room(grant)

    @r.post("/spaces/{space_id}/end")
    async def end(grant: Auth) -> dict[str, object]:
        return views.describe(await service.end(grant))

    @r.post("/spaces/{space_id}/invite", status_code=201)
    async def invite(body: Invite, grant: Auth) -> dict[str, str]:
        token = service.invite(grant, Role(body.role), body.name)
        return {"token": token, "link": views.link(grant.space_id, "speak", token)}

    @r.post("/spaces/{space_id}/listeners", status_code=201)
    async def sign_in(
        space_id: str,
        body: SignIn,
        request: Request,
        previous: Annotated[str | None, Depends(optional_bearer)],
    ) -> dict[str, str]:
        """A listener session. A client that had one sends its token as Bearer: a session
        the room removed gets 403 instead of a fresh one."""
        return asdict(service.sign_in(space_id, body.name, client_address(request), previous))

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
    async def offer(body: SdpOffer, grant: Auth, holder: HolderKey = None) -> dict[str, str]:
        """Join the stage. With a link's token, send ``X-Townhall-Holder``, a key the client
        keeps: the first key claims the link, another key gets 409."""
        answer = await service.connect_stage(grant, body.sdp, body.type, holder)
        return {"sdp": answer.sdp, "type": answer.type}

    @r.get("/spaces/{space_id}/stage")
    async def stage_status(grant: Auth) -> dict[str, object]:
        return {"members": service.stage_status(grant)}

    _install_link_routes(r, service, views, grant_for)
    return r


def _install_link_routes(
    r: APIRouter, service: SpaceService, views: SpaceViews, grant_for: Any
) -> None:
    Auth = Annotated[Grant, Depends(grant_for)]

    @r.get("/spaces/{space_id}/links")
    async def links(grant: Auth) -> dict[str, object]:
        """The invitation links issued (host and co-hosts): person, role, claimed, revoked."""
        return {"links": [views.link_info(k) for k in service.links(grant)]}

    @r.post("/spaces/{space_id}/links/{participant_id}/reissue")
    async def reissue_link(participant_id: str, grant: Auth) -> dict[str, object]:
        """(Host) A new link for the same person; the old one stops working at once."""
        issued = service.reissue_link(grant, participant_id)
        return {
            "token": issued.token,
            "link": views.link(grant.space_id, "speak", issued.token),
            **views.link_info(issued.link),
        }

    @r.post("/spaces/{space_id}/links/{participant_id}/revoke")
    async def revoke_link(participant_id: str, grant: Auth) -> dict[str, object]:
        """(Host) Stop a link for good; its holder is signed out and cut from the stage."""
        return views.link_info(service.revoke_link(grant, participant_id))
