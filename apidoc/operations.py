"""The public operations of the API: the one table the OpenAPI document and the route test read.

One :class:`Operation` a public endpoint: its id, method and path, the pydantic models of its
request and response bodies (the ones the services validate with), the roles that may call it,
the error statuses it can answer and the links a client can follow from its response.
:func:`apidoc.openapi.build_document` turns the table into the document; the unit tests hold
the routes the code registers to it. A later endpoint (audit, studies, ops) is one more row,
plus its query parameters in :data:`QUERY` when it has new ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from anonymizer.models import Record, Run, RunPage, Study, StudyIn, StudyPage
from audit_service.models import (
    FILTER_MAX_LENGTH,
    NAME_PATTERN,
    ChainVerdict,
    ConsistencyProof,
    Event,
    EventPage,
    InclusionProof,
    NewEvent,
    SignedCheckpoint,
)
from shared.types import USER_NAME_PATTERN
from user_service.models import Consent, User, UserIn, UserPage, UserPatch
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

# The largest tree size a query takes (18 digits: within PostgreSQL's bigint).
_MAX_TREE_SIZE = 10**18 - 1
# A query string PostgreSQL text can hold: anything but NUL.
_NO_NUL = r"^[^\x00]*$"

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
        "description": "Only what happened at or after this instant (RFC 3339, offset): a visit's "
        "`startedAt`, an audit event's `occurredAt`.",
        "schema": {"type": "string", "format": "date-time"},
    },
    "until": {
        "description": "Only what happened before this instant (RFC 3339, offset): a visit's "
        "`startedAt`, an audit event's `occurredAt`.",
        "schema": {"type": "string", "format": "date-time"},
    },
    "entityType": {
        "description": "Only events about this type of entity (`user`, `visit`, ...).",
        "schema": {"type": "string", "pattern": NAME_PATTERN},
    },
    "entityId": {
        "description": "Only events about this entity (a userName; `{userName}/{visitId}` for a "
        "visit).",
        "schema": {"type": "string", "maxLength": FILTER_MAX_LENGTH, "pattern": _NO_NUL},
    },
    "actor": {
        "description": "Only events caused by this caller (a token's `sub`).",
        "schema": {"type": "string", "maxLength": FILTER_MAX_LENGTH, "pattern": _NO_NUL},
    },
    "treeSize": {
        "description": "The tree (a checkpoint's `treeSize`) to prove the event in; default: the "
        "latest checkpoint's, or the current tree when the event is newer.",
        "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_TREE_SIZE},
    },
    "from": {
        "description": "The older tree size (a checkpoint the client holds).",
        "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_TREE_SIZE}, "required": True,
    },
    "to": {
        "description": "The newer tree size.",
        "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_TREE_SIZE}, "required": True,
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
    # Other success statuses, answered with the same body and headers (an idempotent repeat).
    also: tuple[int, ...] = ()
    # The success body's media type.
    media_type: str = "application/json"
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


def _to_study(name: str, operation_id: str) -> Link:
    return Link(name, operation_id, {"studyId": "$response.body#/studyId"})


def _to_run(name: str, operation_id: str) -> Link:
    expressions = {"studyId": "$response.body#/studyId", "runId": "$response.body#/runId"}
    return Link(name, operation_id, expressions)


_WRITE = (400, 413, 415, 422)
_PATCH = (
    "A JSON merge patch (RFC 7396): the fields sent replace the stored ones, `null` removes an "
    "optional one. Optional `If-Match`."
)
_USER, _VISIT = "/v1/users/{userName}", "/v1/users/{userName}/visits/{visitId}"
_CONSENT = "/v1/users/{userName}/studies/{studyId}"
_STUDY, _RUNS = "/v1/studies/{studyId}", "/v1/studies/{studyId}/runs"
_RUN = "/v1/studies/{studyId}/runs/{runId}"
_RESEARCH = ("admin", "researcher")
_AUDIT_READERS = ("admin", "auditor", "clinician")
_CLINICIAN_SCOPE = (
    "A clinician sees only the events of patients (entityType `user` or `visit` of a user whose "
    "role is `patient`)."
)

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
        "giveConsent", "PUT", _CONSENT, "Take part in a study", "studies",
        roles=("admin", "clinician", "patient"), success=200, response=Consent,
        errors=(403, 404, 422),
        description="The patient consents to the study (idempotent: a consent in force is "
        "answered as it is). No body. For a user whose role is `patient` (422 otherwise); a "
        "patient only for themself.",
    ),
    Operation(
        "withdrawConsent", "DELETE", _CONSENT, "Withdraw from a study", "studies",
        roles=("admin", "clinician", "patient"), success=204, response=None,
        errors=(403, 404, 422),
        description="Idempotent. From then on nothing of the patient's is extracted for the "
        "study, and its next run emits a `withdrawal` record for them.",
    ),
    Operation(
        "createStudy", "POST", "/v1/studies", "Register a study", "studies",
        roles=_RESEARCH, success=201, response=Study, request=StudyIn,
        errors=(*_WRITE, 403, 409),
        links=(
            _to_study("GetStudy", "getStudy"), _to_study("StartRun", "startRun"),
            _to_study("ListRuns", "listRuns"),
        ),
        description="`schedule`: a five-field cron expression (UTC); none means manual runs only.",
    ),
    Operation(
        "listStudies", "GET", "/v1/studies", "List studies", "studies",
        roles=_RESEARCH, success=200, response=StudyPage, query=("limit", "cursor"),
        errors=(400, 403, 422), description="In studyId order.",
    ),
    Operation(
        "getStudy", "GET", _STUDY, "Read a study", "studies",
        roles=_RESEARCH, success=200, response=Study, errors=(403, 404),
        description="With its participant count (consents in force now) and its last run.",
    ),
    Operation(
        "startRun", "POST", _RUNS, "Start an extraction run", "studies",
        roles=_RESEARCH, success=202, response=Run, errors=(403, 404, 409, 422),
        links=(_to_run("GetRun", "getRun"), _to_run("GetRunRecords", "getRunRecords")),
        description="No body. The run goes on in the background: poll its `Location` until "
        "`status` is `succeeded` or `failed`. 409 while a run of the study is in progress.",
    ),
    Operation(
        "listRuns", "GET", _RUNS, "List a study's runs", "studies",
        roles=_RESEARCH, success=200, response=RunPage, query=("limit", "cursor"),
        errors=(400, 403, 404, 422), description="Newest first.",
    ),
    Operation(
        "getRun", "GET", _RUN, "Read a run", "studies",
        roles=_RESEARCH, success=200, response=Run, errors=(403, 404),
    ),
    Operation(
        "getRunRecords", "GET", f"{_RUN}/records", "Download a run's records", "studies",
        roles=_RESEARCH, success=200, response=Record, media_type="application/x-ndjson",
        errors=(403, 404, 409),
        description="NDJSON: one de-identified record (the schema) a line. 409 until the run "
        "has succeeded. Streamed, of any size: every download is the same bytes, whose SHA-256 "
        "and size are the run manifest's `recordsSha256` and `recordsBytes` (also sent as "
        "`ETag` and `Content-Length`).",
    ),
    Operation(
        "listAuditEvents", "GET", "/v1/audit/events", "List audit events", "audit",
        roles=_AUDIT_READERS, success=200, response=EventPage,
        query=("entityType", "entityId", "actor", "since", "until", "limit", "cursor"),
        errors=(400, 403, 422), description=f"Oldest first. {_CLINICIAN_SCOPE}",
    ),
    Operation(
        "recordAuditEvent", "POST", "/v1/audit/events", "Record an audit event", "audit",
        roles=("admin",), success=201, response=Event, request=NewEvent, also=(200,),
        errors=(*_WRITE, 403, 409),
        links=(Link("GetAuditEvent", "getAuditEvent", {"eventId": "$response.body#/eventId"}),),
        description="An event of any `entityType`. `actor` defaults to the caller and "
        "`occurredAt` to now. Idempotent on `eventId`: the same event again answers 200 with "
        "the stored one.",
    ),
    Operation(
        "getAuditEvent", "GET", "/v1/audit/events/{eventId}", "Read an audit event", "audit",
        roles=_AUDIT_READERS, success=200, response=Event, errors=(403, 404),
        description=_CLINICIAN_SCOPE,
    ),
    Operation(
        "verifyAuditChain", "GET", "/v1/audit/verify", "Verify the audit chain", "audit",
        roles=("admin", "auditor"), success=200, response=ChainVerdict, errors=(403,),
        description="Re-hashes every event (chain and Merkle tree) and checks the result against "
        "every signed checkpoint kept outside the audit database: catches any alteration, "
        "removal, insertion, reordering or cut tail, even by the database's superuser.",
    ),
    Operation(
        "getLatestAuditCheckpoint", "GET", "/v1/audit/checkpoints/latest",
        "The latest signed checkpoint", "audit",
        roles=("admin", "auditor"), success=200, response=SignedCheckpoint, errors=(403, 404, 503),
        description="Ed25519 over the RFC 6962 Merkle root of the first `treeSize` events; made "
        "at least every 10 s while events arrive. 404 before the first one.",
    ),
    Operation(
        "getAuditInclusionProof", "GET", "/v1/audit/events/{eventId}/proof",
        "Prove an event is in a checkpoint's tree", "audit",
        roles=("admin", "auditor"), success=200, response=InclusionProof, query=("treeSize",),
        errors=(400, 403, 404, 422),
        description="The RFC 6962 inclusion proof of the event's leaf "
        "(`SHA-256(0x00 ‖ canonical event)`) in the tree of `treeSize` events.",
    ),
    Operation(
        "getAuditConsistencyProof", "GET", "/v1/audit/consistency",
        "Prove a newer tree extends an older one", "audit",
        roles=("admin", "auditor"), success=200, response=ConsistencyProof, query=("from", "to"),
        errors=(400, 403, 422),
        description="The RFC 6962 consistency proof between the trees of `from` and `to` events.",
    ),
    Operation(
        "getOpenApiDocument", "GET", "/v1/openapi.json", "This document", "meta",
        roles=(), success=200, response=None, public=True,
        response_schema={"type": "object", "required": ["openapi", "info", "paths"]},
        description="Served without a token; a browsable reference is at `/docs`.",
    ),
)  # fmt: skip
