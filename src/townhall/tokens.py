"""Signed, expiring grants (JWT, HS256 via PyJWT).

A token carries the Space, the role, the participant id, a display name and the
expiry, so any node (an edge included) can verify it without a database lookup. A token
of an invitation link also carries the link's generation (``gen``): the room refuses a
generation the host revoked or replaced (``Room.check_link``), which the signature alone
cannot tell.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

from townhall.errors import Forbidden, Unauthorized
from townhall.room.roles import Role

_ROLES = {role.value: role for role in Role}


@dataclass(frozen=True)
class Grant:
    space_id: str
    role: Role
    participant_id: str
    name: str
    expires_at: float
    # The generation of the invitation link this token belongs to; None: not a link.
    link_generation: int | None = None


def link_ttl_s(
    default_ttl_s: float, now: float, scheduled_at: float | None, max_space_duration_s: float
) -> float:
    """How long a host or link token lives: the default, or until a Space scheduled
    later can have ended (its start plus the longest a Space may run), if that is later."""
    if scheduled_at is None:
        return default_ttl_s
    return max(default_ttl_s, scheduled_at + max_space_duration_s - now)


@dataclass(frozen=True)
class TokenIssuer:
    secret: str
    default_ttl_s: float = 24 * 3600

    def issue(
        self,
        space_id: str,
        role: Role,
        name: str,
        participant_id: str | None = None,
        ttl_s: float | None = None,
        now: float | None = None,
        link_generation: int | None = None,
    ) -> str:
        now = time.time() if now is None else now
        claims: dict[str, object] = {
            "space": space_id,
            "role": role.value,
            "sub": participant_id or secrets.token_urlsafe(9),
            "name": name,
            "exp": int(now + (ttl_s or self.default_ttl_s)),
        }
        if link_generation is not None:
            claims["gen"] = link_generation
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str, space_id: str) -> Grant:
        try:
            claims = jwt.decode(
                token, self.secret, algorithms=["HS256"], options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the token has expired") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"invalid token: it carries no {exc.claim!r} (expiry)") from exc
        except jwt.PyJWTError as exc:
            # The library's words (padding, segments) mean nothing to the person holding it.
            raise Unauthorized(
                "invalid token: this link or key is not valid; check it was copied whole"
            ) from exc
        if claims.get("space") != space_id:
            raise Forbidden("the token is for another space")
        raw_role = claims.get("role")
        role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise Unauthorized("the token carries no valid role")
        gen = claims.get("gen")
        return Grant(
            space_id,
            role,
            str(claims["sub"]),
            str(claims.get("name", "")),
            claims["exp"],
            gen if isinstance(gen, int) and not isinstance(gen, bool) else None,
        )
