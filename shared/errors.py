"""The project's exception tree; each error knows its HTTP status and problem title.

    ServiceError (500)
    ├── BadRequest (400)            malformed JSON, query or cursor
    ├── Unauthorized (401)          no token, bad signature, expired
    ├── Forbidden (403)             the role may not do this
    ├── NotFound (404)
    ├── Conflict (409)              already exists, run already in progress
    ├── PreconditionFailed (412)    If-Match version mismatch
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    ├── ValidationFailed (422)      carries field errors
    └── Unavailable (503)           the shard or service owning the data is down

Driver errors (asyncpg, redis, aiohttp client) are translated into these at the store or
client boundary, keeping the cause (``raise Unavailable(...) from exc``). One middleware
(:mod:`shared.problems`) turns them into RFC 9457 problem responses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One validation failure: the JSON field path and a human-readable message."""

    field: str
    message: str


class ServiceError(Exception):
    """Root of every error the API answers deliberately."""

    status = 500
    title = "Internal Server Error"
    # RFC 9457 extension members of the problem document (none by default).
    extensions: dict[str, object] | None = None

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title


class BadRequest(ServiceError):
    status, title = 400, "Bad Request"


class Unauthorized(ServiceError):
    status, title = 401, "Unauthorized"


class Forbidden(ServiceError):
    status, title = 403, "Forbidden"


class NotFound(ServiceError):
    status, title = 404, "Not Found"


class MethodNotAllowed(ServiceError):
    status, title = 405, "Method Not Allowed"

    def __init__(self, detail: str | None = None, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.allowed = allowed


class Conflict(ServiceError):
    status, title = 409, "Conflict"


class PreconditionFailed(ServiceError):
    status, title = 412, "Precondition Failed"


class PayloadTooLarge(ServiceError):
    status, title = 413, "Payload Too Large"


class UnsupportedMediaType(ServiceError):
    status, title = 415, "Unsupported Media Type"


class ValidationFailed(ServiceError):
    status, title = 422, "Unprocessable Content"

    def __init__(self, detail: str | None = None, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail or "the request body or parameters are not valid")
        self.errors = errors or []


class Misdirected(ServiceError):
    """The request reached a shard that does not own its userName: the caller's shard map is
    stale (a move flipped the owner). The gateway reloads its map and sends it again."""

    status, title = 421, "Misdirected Request"

    def __init__(self, detail: str | None = None, owner: int | None = None) -> None:
        super().__init__(detail)
        # The shard this shard's database names as the owner: a gateway whose map lags
        # behind (a ConfigMap not yet refreshed) may follow it.
        if owner is not None:
            self.extensions = {"owner": owner}


class Unavailable(ServiceError):
    status, title = 503, "Service Unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 2) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
