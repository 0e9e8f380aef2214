"""The audit API: each endpoint declared once (see shared/contract.py)."""

from __future__ import annotations

from typing import Any

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
from shared.contract import WRITE_ERRORS, Link, Operation, served_by

SERVICE = "audit"
READERS = ("admin", "auditor", "clinician")
PROVERS = ("admin", "auditor")

# The largest tree size a query takes (18 digits: within PostgreSQL's bigint).
_MAX_TREE_SIZE = 10**18 - 1
# A query string PostgreSQL text can hold: anything but NUL.
_NO_NUL = r"^[^\x00]*$"

QUERY: dict[str, dict[str, Any]] = {
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
}  # fmt: skip

_CLINICIAN_SCOPE = (
    "A clinician sees only the events of patients (entityType `user` or `visit` of a user whose "
    "role is `patient`)."
)

OPERATIONS: tuple[Operation, ...] = served_by(SERVICE, (
    Operation(
        "listAuditEvents", "GET", "/v1/audit/events", "List audit events", "audit",
        roles=READERS, success=200, response=EventPage,
        query=("entityType", "entityId", "actor", "since", "until", "limit", "cursor"),
        errors=(400, 403, 422), description=f"Oldest first. {_CLINICIAN_SCOPE}",
    ),
    Operation(
        "recordAuditEvent", "POST", "/v1/audit/events", "Record an audit event", "audit",
        roles=("admin",), success=201, response=Event, request=NewEvent, also=(200,),
        errors=(*WRITE_ERRORS, 403, 409),
        links=(Link("GetAuditEvent", "getAuditEvent", {"eventId": "$response.body#/eventId"}),),
        description="An event of any `entityType`. `actor` defaults to the caller and "
        "`occurredAt` to now. Idempotent on `eventId`: the same event again answers 200 with "
        "the stored one.",
    ),
    Operation(
        "getAuditEvent", "GET", "/v1/audit/events/{eventId}", "Read an audit event", "audit",
        roles=READERS, success=200, response=Event, errors=(403, 404),
        description=_CLINICIAN_SCOPE,
    ),
    Operation(
        "verifyAuditChain", "GET", "/v1/audit/verify", "Verify the audit chain", "audit",
        roles=PROVERS, success=200, response=ChainVerdict, errors=(403,),
        description="Re-hashes every event (chain and Merkle tree) and checks the result against "
        "every signed checkpoint kept outside the audit database: catches any alteration, "
        "removal, insertion, reordering or cut tail, even by the database's superuser.",
    ),
    Operation(
        "getLatestAuditCheckpoint", "GET", "/v1/audit/checkpoints/latest",
        "The latest signed checkpoint", "audit",
        roles=PROVERS, success=200, response=SignedCheckpoint, errors=(403, 404, 503),
        description="Ed25519 over the RFC 6962 Merkle root of the first `treeSize` events; made "
        "at least every 10 s while events arrive. 404 before the first one.",
    ),
    Operation(
        "getAuditInclusionProof", "GET", "/v1/audit/events/{eventId}/proof",
        "Prove an event is in a checkpoint's tree", "audit",
        roles=PROVERS, success=200, response=InclusionProof, query=("treeSize",),
        errors=(400, 403, 404, 422),
        description="The RFC 6962 inclusion proof of the event's leaf "
        "(`SHA-256(0x00 ‖ canonical event)`) in the tree of `treeSize` events.",
    ),
    Operation(
        "getAuditConsistencyProof", "GET", "/v1/audit/consistency",
        "Prove a newer tree extends an older one", "audit",
        roles=PROVERS, success=200, response=ConsistencyProof, query=("from", "to"),
        errors=(400, 403, 422),
        description="The RFC 6962 consistency proof between the trees of `from` and `to` events.",
    ),
))  # fmt: skip
