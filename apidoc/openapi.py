"""The OpenAPI 3.1 document of the public API, built from the models the services validate with.

:func:`build_document` turns the operations the services declare in their contracts
(gathered by :mod:`apidoc.operations`) into the document the gateway serves at
``/v1/openapi.json``. Schemas come from pydantic (``model_json_schema``) and are never written
out by hand; their ``$defs`` become
``components/schemas``. Errors are RFC 9457 problem documents (:class:`Problem`), as
:func:`shared.problems.problem` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from apidoc.operations import OPERATIONS, PATH_PARAMS, QUERY, Operation
from shared.httpio import IF_MATCH_PATTERN

OPENAPI_VERSION = "3.1.0"
PROBLEM_JSON = "application/problem+json"
MERGE_PATCH_JSON = "application/merge-patch+json"
REF = "#/components/schemas/{model}"


class InvalidField(BaseModel):
    """One field a validation failure names."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(
        description="JSON path of the field, e.g. `address.postalCode`; `body` for the whole body"
    )
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document: the body of every error response."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        description="URI reference naming the problem type; `about:blank` when the status "
        "says it all"
    )
    title: str
    status: int = Field(ge=100, le=599)
    detail: str
    errors: list[InvalidField] = Field(
        default_factory=list,
        description="the failing fields; present on validation failures (422) only",
    )


# Error statuses: (components/responses name, description, extra headers).
ERRORS: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: ("BadRequest", "Malformed JSON, query parameter or cursor.", ()),
    401: ("Unauthorized", "No bearer token, or one that is not valid or has expired.", ()),
    403: ("Forbidden", "The caller's role may not do this.", ()),
    404: ("NotFound", "No such resource.", ()),
    409: (
        "Conflict",
        "The resource already exists (or is busy: a run in progress; a request with the same "
        "`Idempotency-Key` still in progress).",
        (),
    ),
    412: (
        "PreconditionFailed",
        "`If-Match` names a version other than the current one; nothing changed.",
        (),
    ),
    413: ("PayloadTooLarge", "The request body is larger than 1 MiB.", ()),
    415: ("UnsupportedMediaType", "The request body is not JSON.", ()),
    422: (
        "UnprocessableContent",
        "The body or the query is well-formed but not valid; `errors` says why.",
        (),
    ),
    429: ("TooManyRequests", "Rate limited; retry after `Retry-After` seconds.", ("Retry-After",)),
    503: (
        "ServiceUnavailable",
        "The shard or service owning the data is unavailable.",
        ("Retry-After",),
    ),
}
# Every /v1 operation behind a token may be answered with these.
COMMON_ERRORS = (401, 429, 503)

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id: the one the client sent, or a new one. Quote it "
        "when reporting a problem.",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    },
    "ETag": {
        "description": 'The version as an entity tag, `"<version>"`; send it back in `If-Match`.',
        "required": True,
        "schema": {"type": "string", "pattern": r'^"[0-9]+"$'},
    },
    "Location": {
        "description": "The path of the created resource.",
        "required": True,
        "schema": {"type": "string", "format": "uri-reference"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the first attempt's answer, replayed for a retry "
        "with the same `Idempotency-Key` (nothing was changed by the retry).",
        "required": False,
        "schema": {"type": "string", "enum": ["true"]},
    },
}

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retry safe: the same key, from the same caller, to the same path, "
    "within 24 hours, gets the first attempt's status and body (with `Idempotent-Replayed: "
    "true`) and changes nothing; with another body it is 422; while the first attempt is "
    "still running, 409. Without a key no hop ever retries a POST.",
    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
}

IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'Update only if the current version is this one (`"<version>"`, the `ETag`); '
    "else 412 and nothing changes. `*` matches any version. Any other form (a list of tags, a "
    "tag without its quotes) is malformed: 400.",
    "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
}


class _Schemas:
    """Collects model schemas into ``components/schemas``; one name, one schema."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(
        self, model: type[BaseModel], mode: Literal["validation", "serialization"]
    ) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        for name, sub in schema.pop("$defs", {}).items():
            self._add(name, sub)
        self._add(model.__name__, schema)
        return {"$ref": REF.format(model=model.__name__)}

    def _add(self, name: str, schema: dict[str, Any]) -> None:
        for prop in schema.get("properties", {}).values():
            # pydantic writes `default: null` for an optional field even where null is not
            # allowed (a patch field that cannot be removed); a generator would send it.
            if "default" in prop and prop["default"] is None and not _admits_null(prop):
                del prop["default"]
        known = self.components.setdefault(name, schema)
        if known != schema:
            raise ValueError(f"two different schemas are both called {name}")


def _admits_null(schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    if kinds == "null" or isinstance(kinds, list) and "null" in kinds:
        return True
    return any(_admits_null(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []))


def _headers(*names: str) -> dict[str, Any]:
    return {n: {"$ref": f"#/components/headers/{n}"} for n in ("X-Request-ID", *names)}


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"$ref": f"#/components/parameters/{p}"} for p in op.path_params
    ]
    params += [{"$ref": f"#/components/parameters/{q}"} for q in op.query]
    if op.method == "PATCH":
        params.append({"$ref": "#/components/parameters/If-Match"})
    if op.method == "POST":
        params.append({"$ref": "#/components/parameters/Idempotency-Key"})
    return params


_DESCRIPTIONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content"}


def _success(op: Operation, schemas: _Schemas) -> dict[str, Any]:
    single = op.response is not None and op.response.__name__ in {"User", "Visit"}
    names = ("ETag",) if single else ()
    if op.success in (201, 202) and op.response is not None:
        names = (*names, "Location")
    if op.method == "POST":
        names = (*names, "Idempotent-Replayed")
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS[op.success],
        "headers": _headers(*names),
    }
    if op.success != 204:
        if op.response is not None:
            body = schemas.ref(op.response, "serialization")
        else:
            body = op.response_schema or {}
        response["content"] = {op.media_type: {"schema": body}}
    if op.links:
        response["links"] = {
            link.name: {"operationId": link.operation_id, "parameters": dict(link.parameters)}
            for link in op.links
        }
    return response


def _operation(op: Operation, schemas: _Schemas) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
    }
    description = op.description
    if op.roles:
        description = f"Roles: {', '.join(op.roles)}. {description}".strip()
        doc["x-roles"] = list(op.roles)
    # What the gateway builds its routing table from (gateway/api.py): it imports no service.
    doc["x-service"] = op.service
    doc["x-cacheable"] = op.cacheable
    if description:
        doc["description"] = description
    if params := _parameters(op):
        doc["parameters"] = params
    if op.request is not None:
        body = schemas.ref(op.request, "validation")
        types = (
            ["application/json", MERGE_PATCH_JSON] if op.method == "PATCH" else ["application/json"]
        )
        doc["requestBody"] = {"required": True, "content": {t: {"schema": body} for t in types}}
    success = _success(op, schemas)
    responses: dict[str, Any] = {str(op.success): success}
    for status in op.also:
        responses[str(status)] = {**success, "description": _DESCRIPTIONS[status]}
    statuses = set(op.errors) if op.public else set(op.errors) | set(COMMON_ERRORS)
    if op.method == "POST":
        statuses |= {400, 409, 422}  # a malformed, busy or reused Idempotency-Key
    for status in sorted(statuses):
        responses[str(status)] = {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
    doc["responses"] = responses
    if op.public:
        doc["security"] = []
    return doc


def _components(schemas: _Schemas) -> dict[str, Any]:
    problem = schemas.ref(Problem, "serialization")
    responses = {
        name: {
            "description": description,
            "headers": _headers(*extra),
            "content": {PROBLEM_JSON: {"schema": problem}},
        }
        for name, description, extra in ERRORS.values()
    }
    parameters: dict[str, Any] = {
        name: {"name": name, "in": "path", "required": True, **spec}
        for name, spec in PATH_PARAMS.items()
    }
    parameters.update(
        {
            name: {"name": name, "in": "query", "required": False, **spec}
            for name, spec in QUERY.items()
        }
    )
    parameters["If-Match"] = IF_MATCH
    parameters["Idempotency-Key"] = IDEMPOTENCY_KEY
    return {
        "schemas": schemas.components,
        "responses": responses,
        "parameters": parameters,
        "headers": HEADERS,
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "HS256 JWT with `sub` (the caller's userName), `roles` and `exp`.",
            }
        },
    }


def build_document(
    operations: Sequence[Operation] = OPERATIONS, version: str = "1.0.0"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``operations`` (a plain JSON-ready dict)."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        methods = paths.setdefault(op.path, {})
        if op.method.lower() in methods:
            raise ValueError(f"{op.method} {op.path} is listed twice")
        methods[op.method.lower()] = _operation(op, schemas)
    components = _components(schemas)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "MedicalService API",
            "version": version,
            "description": (
                "Patients, staff and their medical visits, sharded by userName; their audit "
                "trail; research studies and their de-identified extracts. Every `/v1` request "
                "carries `Authorization: Bearer <JWT>`; errors are RFC 9457 problem documents."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in operations)],
        "paths": paths,
        "components": components,
    }
