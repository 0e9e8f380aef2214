"""What an endpoint is, declared once: the vocabulary of the services' ``contract.py`` modules.

Each service lists its public endpoints as :class:`Operation` rows in ``<service>/contract.py``:
method, path, request and response models, the roles that may call it, whether the gateway may
answer it from its cache, its error statuses and query parameters. Everything else is derived
from those rows: the service's routes (:func:`register_routes`, one loop, handlers bound by
operation id), the OpenAPI document (``python -m apidoc``, which gathers every contract) and,
through the committed document's ``x-roles`` / ``x-service`` / ``x-cacheable`` extensions, the
gateway's routing table and coarse role check. Nothing here imports a service.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from shared.entity import reply
from shared.types import USER_NAME_PATTERN

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
# A handler answers with a response, or with a model (or None, for a 204) that the route
# layer encodes (:func:`register_routes`, shared/entity.py).
Handler = Callable[[web.Request], Awaitable[web.StreamResponse | BaseModel | None]]
RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PATH_PARAMS: dict[str, dict[str, Any]] = {
    "userName": {
        "description": "The user's immutable userName (the shard key).",
        "schema": {"type": "string", "pattern": USER_NAME_PATTERN},
    },
    "visitId": {
        "description": "The visit's server-generated id.",
        "schema": {"type": "string", "format": "uuid"},
    },
    "studyId": {
        "description": "The study's id (the same pattern as a userName).",
        "schema": {"type": "string", "pattern": USER_NAME_PATTERN},
    },
    "runId": {
        "description": "The run's server-generated id.",
        "schema": {"type": "string", "format": "uuid"},
    },
    "eventId": {
        "description": "The audit event's id.",
        "schema": {"type": "string", "format": "uuid"},
    },
}

# Query parameters more than one service takes; a service adds its own in its contract's QUERY.
COMMON_QUERY: dict[str, dict[str, Any]] = {
    "limit": {
        "description": "Page size.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    },
    "cursor": {
        "description": "Opaque position: the previous page's `nextCursor`.",
        # The form of every cursor the server writes (unpadded base64url, shared/httpio.py).
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    },
    "since": {
        "description": "Only what happened at or after this instant (RFC 3339, offset): a visit's "
        "`startedAt`, an audit event's `occurredAt`.",
        "schema": {"type": "string", "format": "date-time"},
    },
    "until": {
        "description": "Only what happened before this instant (RFC 3339, offset): a visit's "
        "`startedAt`, an audit event's `occurredAt`.",
        "schema": {"type": "string", "format": "date-time"},
    },
}

# The client errors any endpoint with a JSON body may answer.
WRITE_ERRORS = (400, 413, 415, 422)
PATCH_DESCRIPTION = (
    "A JSON merge patch (RFC 7396): the fields sent replace the stored ones, `null` removes an "
    "optional one. Optional `If-Match`."
)


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from an operation's success response to another operation."""

    name: str
    operation_id: str
    # parameter name -> runtime expression, e.g. {"userName": "$response.body#/userName"}
    parameters: dict[str, str]


@dataclass(frozen=True)
class Operation:
    """One public endpoint, as its service declares it."""

    operation_id: str
    method: Method
    path: str
    summary: str
    tag: str
    roles: tuple[str, ...]
    success: int
    response: type[BaseModel] | None
    request: type[BaseModel] | None = None
    query: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()
    links: tuple[Link, ...] = ()
    # Other success statuses, answered with the same body and headers (an idempotent repeat).
    also: tuple[int, ...] = ()
    # The success body's media type.
    media_type: str = "application/json"
    description: str = ""
    # Served without a token.
    public: bool = False
    # The success body's schema when it is no model (the document itself).
    response_schema: dict[str, Any] | None = None
    # The gateway may answer it from the owning shard's cache (gateway/fastpath.py).
    cacheable: bool = False
    # The service (cluster) that serves it: set by :func:`served_by` in the service's contract.
    service: str = ""
    path_params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_params", tuple(re.findall(r"{(\w+)}", self.path)))


def served_by(service: str, operations: Iterable[Operation]) -> tuple[Operation, ...]:
    """The operations, marked as served by ``service`` (the cluster the gateway sends them to)."""
    return tuple(replace(op, service=service) for op in operations)


def register_routes(
    app: web.Application, operations: Iterable[Operation], handlers: Mapping[str, Handler]
) -> None:
    """Add one route per operation, to the handler its operation id names.

    A handler without an operation, or an operation without a handler, is a programming error
    caught when the app is built (the unit tests build every app).
    """
    operations = tuple(operations)
    declared = {op.operation_id for op in operations}
    if declared != set(handlers):
        raise ValueError(f"handlers do not match the contract: {sorted(declared ^ set(handlers))}")
    for op in operations:
        # add_route adds no HEAD for a GET: HEAD is not part of the API.
        app.router.add_route(op.method, op.path, answering(op, handlers[op.operation_id]))


def answering(op: Operation, handler: Handler) -> RouteHandler:
    """``handler`` as a route: a model it returns is encoded once, with the operation's
    success status (201 adds the entity's Location); None is that status without a body."""

    async def route(request: web.Request) -> web.StreamResponse:
        result = await handler(request)
        if isinstance(result, web.StreamResponse):
            return result
        if result is None:
            return web.Response(status=op.success)
        return reply(result, op.success)

    route.__name__ = route.__qualname__ = handler.__name__
    route.__doc__ = handler.__doc__
    return route
