"""Errors that carry their wire meaning.

    TownhallError (status 500)
     ├── BadRequest (400)      malformed input: bad JSON, bad SDP, bad field
     ├── Unauthorized (401)    missing, bad or expired token
     ├── Forbidden (403)       valid token, action not allowed for the role
     ├── NotFound (404)        unknown Space, part or recording
     ├── Conflict (409)        the action is illegal in the current state
     ├── PayloadTooLarge (413) body over the configured limit
     └── Unavailable (503)     at capacity; carries retry_after_s

One place per server turns these into a JSON body ``{"error": code, "detail": msg}``.
Third-party errors (aiortc, PyAV, sqlite) are translated at the boundary with
``raise X(...) from exc``.
"""

from __future__ import annotations


class TownhallError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def to_json(self) -> dict[str, object]:
        return {"error": self.code, "detail": self.detail}


class BadRequest(TownhallError):
    status = 400
    code = "bad_request"


class Unauthorized(TownhallError):
    status = 401
    code = "unauthorized"


class Forbidden(TownhallError):
    status = 403
    code = "forbidden"


class NotFound(TownhallError):
    status = 404
    code = "not_found"


class Conflict(TownhallError):
    status = 409
    code = "conflict"


class PayloadTooLarge(TownhallError):
    status = 413
    code = "payload_too_large"


class Unavailable(TownhallError):
    status = 503
    code = "unavailable"

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
