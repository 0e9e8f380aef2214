"""The public operations of the API: the one table the OpenAPI document and the route test read.

One :class:`Operation` a public endpoint: its id, method and path, the pydantic models of its
request and response bodies (the ones the services validate with), the roles that may call it,
the error statuses it can answer and the links a client can follow from its response.
:func:`shared.openapi.build_document` turns the table into the document; the unit tests hold
the routes the code registers to it. A later endpoint (audit, studies, ops) is one more row,
plus its query parameters in :data:`QUERY` when it has new ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from shared.types import USER_NAME_PATTERN
from user_service.models import User, UserIn, UserPage, UserPatch
from visit_service.models import Visit, VisitIn, VisitPage, VisitPatch

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

PATH_PARAMS: dict[str, dict[str, Any]] = {
    "userName": {
        "description": "The user's immutable userName (the shard key).",
        "schema": {"type": "string", "pattern": USER_NAME_PATTERN},
    },
    "visitId": {
        "description": "The visit's server-generated id.",
        "schema": {"type": "string", "format": "uuid"},
    },
}

QUERY: dict[str, dict[str, Any]] = {
    "limit": {
        "description": "Page size.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    },
    "cursor": {
        "description": "Opaque position: the previous page's `nextCursor`.",
        "schema": {"type": "string"},
    },
    "familyName": {
        "description": "Case-insensitive prefix of the family name.",
        "schema": {"type": "string", "maxLength": 100, "pattern": r"^[^\x00]*$"},
    },
    "since": {
        "description": "Only visits that started at or after this instant (RFC 3339, offset).",
        "schema": {"type": "string", "format": "date-time"},
    },
    "until": {
        "description": "Only visits that started before this instant (RFC 3339, offset).",
        "schema": {"type": "string", "format": "date-time"},
    },
}


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from an operation's success response to another operation."""

    name: str
    operation_id: str
    # parameter name -> runtime expression, e.g. {"userName": "$response.body#/userName"}
    parameters: dict[str, str]


@dataclass(frozen=True)
class Operation:
    """One public endpoint."""

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
    description: str = ""
    # Served without a token.
    public: bool = False
    # The success body's schema when it is no model (the document itself).
    response_schema: dict[str, Any] | None = None
    path_params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_params", tuple(re.findall(r"{(\w+)}", self.path)))


def _to_user(name: str, operation_id: str) -> Link:
    return Link(name, operation_id, {"userName": "$response.body#/userName"})


def _to_visit(name: str, operation_id: str) -> Link:
    expressions = {"userName": "$response.body#/userName", "visitId": "$response.body#/visitId"}
    return Link(name, operation_id, expressions)


_WRITE = (400, 413, 415, 422)
_PATCH = (
    "A JSON merge patch (RFC 7396): the fields sent replace the stored ones, `null` removes an "
    "optional one. Optional `If-Match`."
)
_USER, _VISIT = "/v1/users/{userName}", "/v1/users/{userName}/visits/{visitId}"

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "createUser", "POST", "/v1/users", "Create a user", "users",
        roles=("admin", "clinician"), success=201, response=User, request=UserIn,
        errors=(*_WRITE, 403, 409),
        links=(
            _to_user("GetUser", "getUser"), _to_user("PatchUser", "patchUser"),
            _to_user("CreateVisit", "createVisit"), _to_user("ListVisits", "listVisits"),
        ),
        description="Only an admin may create users with a role other than `patient`.",
    ),
    Operation(
        "searchUsers", "GET", "/v1/users", "Search users by family name", "users",
        roles=("admin", "clinician"), success=200, response=UserPage,
        query=("familyName", "limit", "cursor"), errors=(400, 403, 422),
        description="Across all shards, in (familyName, givenName, userName) order.",
    ),
    Operation(
        "getUser", "GET", _USER, "Read a user", "users",
        roles=("admin", "clinician", "patient"), success=200, response=User, errors=(403, 404),
    ),
    Operation(
        "patchUser", "PATCH", _USER, "Update a user", "users",
        roles=("admin", "clinician", "patient"), success=200, response=User, request=UserPatch,
        errors=(*_WRITE, 403, 404, 412),
        description=f"{_PATCH} `userName` and `role` cannot change; a patient may change only "
        "their own `email`, `phone` and `address`.",
    ),
    Operation(
        "createVisit", "POST", "/v1/users/{userName}/visits", "Record a visit", "visits",
        roles=("admin", "clinician"), success=201, response=Visit, request=VisitIn,
        errors=(*_WRITE, 403, 404),
        links=(_to_visit("GetVisit", "getVisit"), _to_visit("PatchVisit", "patchVisit")),
        description="For a user whose role is `patient` (422 otherwise); `clinician` defaults to "
        "the caller.",
    ),
    Operation(
        "listVisits", "GET", "/v1/users/{userName}/visits", "List a patient's visits", "visits",
        roles=("admin", "clinician", "patient"), success=200, response=VisitPage,
        query=("since", "until", "limit", "cursor"), errors=(400, 403, 404, 422),
        description="Newest `startedAt` first.",
    ),
    Operation(
        "getVisit", "GET", _VISIT, "Read a visit", "visits",
        roles=("admin", "clinician", "patient"), success=200, response=Visit, errors=(403, 404),
    ),
    Operation(
        "patchVisit", "PATCH", _VISIT, "Update a visit", "visits",
        roles=("admin", "clinician"), success=200, response=Visit, request=VisitPatch,
        errors=(*_WRITE, 403, 404, 412), description=_PATCH,
    ),
    Operation(
        "getOpenApiDocument", "GET", "/v1/openapi.json", "This document", "meta",
        roles=(), success=200, response=None, public=True,
        response_schema={"type": "object", "required": ["openapi", "info", "paths"]},
        description="Served without a token; a browsable reference is at `/docs`.",
    ),
)  # fmt: skip
