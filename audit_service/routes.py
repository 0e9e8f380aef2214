"""HTTP handlers of the audit API and of the internal ingest endpoint the outbox relays call.

Who may do what (API.md, "Audit"):

* ``GET /v1/audit/events`` — admin and auditor: every event. Clinician: only events about a
  patient, i.e. entityType ``user`` or ``visit`` whose userName (the entityId, or its part
  before ``/`` for a visit) the audit store knows to be a patient: the user's ``create`` event,
  shipped from the shard's outbox (never one posted to ``/v1/audit/events``), says
  ``"role": "patient"``. A role never changes, so that event settles it; until it has
  arrived, the clinician sees nothing of that user.
* ``GET /v1/audit/verify``, ``GET /v1/audit/checkpoints/latest``,
  ``GET /v1/audit/events/{eventId}/proof`` and ``GET /v1/audit/consistency`` — admin and auditor.
* ``POST /internal/checkpoints`` — admin: sign a checkpoint now (on demand; not routed by the
  gateway).
* ``POST /v1/audit/events`` — admin (services call it with a token signed by the shared secret).
* ``POST /internal/events/batch`` — the shards' outbox relays, with an admin token. Not routed
  by the gateway.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Awaitable
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping
from pydantic import BaseModel

from audit_service import store
from audit_service.checkpoints import CheckpointLog, Notary
from audit_service.contract import OPERATIONS
from audit_service.metrics import APPEND_SECONDS, CHAIN_LAST_SEQ, EVENTS_APPENDED, EVENTS_DUPLICATE
from audit_service.models import (
    FILTER_MAX_LENGTH,
    NAME_PATTERN,
    ChainVerdict,
    ConsistencyProof,
    EventBatch,
    EventIn,
    InclusionProof,
    NewEvent,
    SignedCheckpoint,
)
from audit_service.settings import AuditSettings
from audit_service.verify import make_checkpoint, verify_database
from shared import idempotency, policy
from shared.appkeys import PG_POOL
from shared.auth import Principal
from shared.contract import Handler, register_routes
from shared.db import db_errors, transaction
from shared.entity import reply
from shared.errors import (
    BadRequest,
    FieldError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.httpio import (
    JSON_TYPES,
    MAX_BODY,
    decode_cursor,
    encode_cursor,
    limit_param,
    parse_instant,
)
from shared.service import principal

SETTINGS = web.AppKey("audit_settings", AuditSettings)
NOTARY: web.AppKey[Notary | None] = web.AppKey("audit_notary")
LOG_MEMO = web.AppKey("audit_log_memo", dict)
_QUERY = frozenset({"entityType", "entityId", "actor", "since", "until", "limit", "cursor"})
_NAME = re.compile(NAME_PATTERN)
# The namespace of the eventIds given to keyed POSTs that name none.
_KEYED_EVENTS = uuid.UUID("5f0c8a52-6a5e-4d0e-9d43-2b4f3c1d7e90")


# -- plumbing ---------------------------------------------------------------------------------


async def _read_json(request: web.Request, limit: int) -> bytes:
    """The raw JSON body: 415 unless JSON, 413 over ``limit`` bytes (declared or streamed)."""
    if request.content_type not in JSON_TYPES:
        raise UnsupportedMediaType("the request body must be application/json")
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    return bytes(data)


def _event_json(e: store.Stored) -> bytes:
    """The API form of a stored event: its canonical body plus ``hash`` and ``prevHash``."""
    return f'{e.body[:-1]},"hash":"{e.hash}","prevHash":"{e.prev_hash}"}}'.encode()


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def _pending(ev: EventIn | NewEvent, *, actor: str, source: str) -> store.Pending:
    try:
        occurred = (ev.occurredAt or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    except OverflowError as exc:
        raise ValidationFailed(errors=[FieldError("occurredAt", "is out of range in UTC")]) from exc
    return store.Pending(
        event_id=ev.eventId or uuid.uuid4(), entity_type=ev.entityType, entity_id=ev.entityId,
        action=ev.action, actor=actor, occurred_at=occurred, source=source,
        request_id=getattr(ev, "requestId", None), changes=list(ev.changes), before=ev.before,
        after=ev.after,
    )  # fmt: skip


def _checked(events: list[store.Pending]) -> list[store.Pending]:
    """Refuse an event whose body cannot be canonicalised (e.g. an integer over 64 bits)."""
    for i, ev in enumerate(events):
        try:
            ev.body(0)
        except (TypeError, ValueError) as exc:
            raise ValidationFailed(
                errors=[FieldError(f"events.{i}", f"cannot be encoded: {exc}")]
            ) from exc
    return events


def _timestamp(query: MultiMapping[str], name: str) -> dt.datetime | None:
    """``since``/``until`` as a UTC instant; 400 unless RFC 3339 with an offset."""
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return parse_instant(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an RFC 3339 timestamp with a UTC offset") from exc


def after_seq(raw: str | None) -> int | None:
    """The seq a page ``cursor`` names; 400 unless it is one this server wrote."""
    cursor = decode_cursor(raw, 1)
    if cursor is None:
        return None
    # ASCII digits ("²" is a digit to isdigit(), not to int()) that fit PostgreSQL's bigint.
    if not (cursor[0].isascii() and cursor[0].isdigit() and len(cursor[0]) <= 18):
        raise BadRequest("cursor is not valid")
    return int(cursor[0])


# -- handlers ---------------------------------------------------------------------------------


async def list_events(request: web.Request) -> web.Response:
    """``GET /v1/audit/events``: events oldest first, filtered, keyset-paginated by seq."""
    patients_only = policy.audit_patients_only(principal(request))
    q = request.query
    unknown = set(q) - _QUERY
    if unknown:
        raise ValidationFailed(
            errors=[FieldError(k, "is not a query parameter") for k in sorted(unknown)]
        )
    if "entityType" in q and not _NAME.fullmatch(q["entityType"]):
        raise BadRequest("entityType must be an entity type such as user or visit")
    for name in ("entityId", "actor"):
        # PostgreSQL text cannot hold a NUL, so no stored event has one.
        value = q.get(name, "")
        if "\x00" in value or len(value) > FILTER_MAX_LENGTH:
            raise BadRequest(f"{name} must be at most {FILTER_MAX_LENGTH} characters, without NUL")
    entity_type = q.get("entityType")
    if patients_only and entity_type not in (None, "user", "visit"):
        raise Forbidden("a clinician may read only the audit events of patients and their visits")
    limit = limit_param(q)
    f = store.EventFilter(
        entity_type=entity_type, entity_id=q.get("entityId"), actor=q.get("actor"),
        since=_timestamp(q, "since"), until=_timestamp(q, "until"),
        after_seq=after_seq(q.get("cursor")), patients_only=patients_only,
    )  # fmt: skip
    rows = await store.events_page(request.app[PG_POOL], f, limit + 1)
    items = [store.Stored(r["seq"], r["body"], r["prev_hash"], r["hash"]) for r in rows[:limit]]
    next_cursor = encode_cursor([str(items[-1].seq)]) if len(rows) > limit else None
    body = b'{"items":[' + b",".join(_event_json(e) for e in items) + b'],"nextCursor":'
    return _json(body + orjson.dumps(next_cursor) + b"}")


async def get_event(request: web.Request) -> web.Response:
    """``GET /v1/audit/events/{eventId}``: one event, with the same access rules as the list."""
    patients_only = policy.audit_patients_only(principal(request))
    try:
        event_id = uuid.UUID(request.match_info["eventId"])
    except ValueError as exc:
        raise NotFound("no such audit event") from exc
    row = await store.event_by_id(request.app[PG_POOL], event_id)
    if row is None:
        raise NotFound("no such audit event")
    if patients_only and not (row["entity_type"] in ("user", "visit") and row["of_patient"]):
        raise Forbidden("a clinician may read only the audit events of patients and their visits")
    return _json(_event_json(store.Stored(row["seq"], row["body"], row["prev_hash"], row["hash"])))


async def record_event(request: web.Request) -> web.Response:
    """``POST /v1/audit/events``: record an event of any entity type (201; 200 if known)."""
    caller = principal(request)
    policy.may_record_audit(caller)
    raw = await _read_json(request, MAX_BODY)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}") from exc
    if not isinstance(parsed, dict):
        raise ValidationFailed(errors=[FieldError("body", "must be a JSON object")])
    new = NewEvent.model_validate_json(raw)
    key = await idempotency.key_of(request, caller, raw)
    if key is None:
        return await _append(request, new, caller)
    if new.eventId is None:
        # A retry with this key names the same event, so even one whose first answer was never
        # kept (the process died after the append) stores nothing twice.
        new = new.model_copy(
            update={"eventId": uuid.uuid5(_KEYED_EVENTS, f"{caller.sub}\0{key.key}")}
        )
    async with transaction(request.app[PG_POOL], "the audit database") as conn:
        if (replay := await idempotency.claim(conn, key)) is not None:
            return replay
        response = await _append(request, new, caller)
        await idempotency.record(conn, key, response)
    return response


async def _append(request: web.Request, new: NewEvent, caller: Principal) -> web.Response:
    pending = _checked([_pending(new, actor=new.actor or caller.sub, source=f"api/{caller.sub}")])[
        0
    ]
    started = time.perf_counter()
    stored, created = await store.append_one(request.app[PG_POOL], pending)
    APPEND_SECONDS.labels("api").observe(time.perf_counter() - started)
    (EVENTS_APPENDED if created else EVENTS_DUPLICATE).labels("api").inc()
    CHAIN_LAST_SEQ.set(stored.seq)
    headers = {"Location": f"/v1/audit/events/{pending.event_id}"}
    return _json(_event_json(stored), status=201 if created else 200, headers=headers)


async def verify(request: web.Request) -> ChainVerdict:
    """``GET /v1/audit/verify``: the whole log against the signed checkpoints (verify.py)."""
    policy.may_prove_audit(principal(request))
    notary = request.app[NOTARY]
    # What an earlier call found of the checkpoint log (an append-only file, outside the
    # database): its unchanged prefix is not re-checked. Every event is, on every call.
    memo = request.app[LOG_MEMO]
    checkpoints, checked = notary.log.read_checked(memo) if notary else ([], 0)
    keyring = notary.keyring if notary else {}
    with db_errors("the audit database"):
        async with request.app[PG_POOL].acquire() as conn:
            verdict = await verify_database(conn, checkpoints, keyring, checked,
                                            lambda: CheckpointLog.remember(memo))  # fmt: skip
    return verdict.model()


def _notary(request: web.Request) -> Notary:
    notary = request.app[NOTARY]
    if notary is None:
        raise Unavailable("audit checkpoints are not configured on this server", retry_after=60)
    return notary


async def latest_checkpoint(request: web.Request) -> SignedCheckpoint:
    """``GET /v1/audit/checkpoints/latest``: the newest signed checkpoint."""
    policy.may_prove_audit(principal(request))
    last = _notary(request).log.last()
    if last is None:
        raise NotFound("no audit checkpoint has been signed yet")
    return last.public()


async def sign_checkpoint(request: web.Request) -> web.Response:
    """``POST /internal/checkpoints``: sign one now if the log grew; answer the newest."""
    policy.may_record_audit(principal(request))
    notary = _notary(request)
    if notary.key is None:
        raise Unavailable("this server has no audit signing key", retry_after=60)
    await make_checkpoint(request.app[PG_POOL], notary.log, notary.key)
    last = notary.log.last()
    if last is None:
        raise NotFound("no audit checkpoint has been signed yet (the log is empty)")
    return reply(last.public())


def _size_param(query: MultiMapping[str], name: str, *, required: bool) -> int | None:
    """A tree size from the query: ASCII digits, at least 1, within bigint; 400 otherwise."""
    raw = query.get(name)
    if raw is None:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18) or int(raw) < 1:
        raise BadRequest(f"{name} must be a tree size (a whole number of events, at least 1)")
    return int(raw)


def _only(query: MultiMapping[str], allowed: frozenset[str]) -> None:
    unknown = set(query) - allowed
    if unknown:
        raise ValidationFailed(
            errors=[FieldError(k, "is not a query parameter") for k in sorted(unknown)]
        )


async def inclusion_proof(request: web.Request) -> InclusionProof:
    """``GET /v1/audit/events/{eventId}/proof?treeSize=N``: the RFC 6962 audit path of the
    event in the tree of N events (default: the latest checkpoint's, else the current tree)."""
    policy.may_prove_audit(principal(request))
    _only(request.query, frozenset({"treeSize"}))
    tree_size = _size_param(request.query, "treeSize", required=False)
    try:
        event_id = uuid.UUID(request.match_info["eventId"])
    except ValueError as exc:
        raise NotFound("no such audit event") from exc
    pool = request.app[PG_POOL]
    row = await store.event_by_id(pool, event_id)
    if row is None:
        raise NotFound("no such audit event")
    current = (await store.tree_head(pool)).size
    if tree_size is None:
        notary = request.app[NOTARY]
        last = notary.log.last() if notary else None
        tree_size = last.tree_size if last and last.tree_size >= row["seq"] else current
    if not row["seq"] <= tree_size <= current:
        raise BadRequest(
            f"treeSize must be between the event's seq ({row['seq']}) and the tree size ({current})"
        )
    path = await _proof(store.inclusion_proof(pool, row["seq"], tree_size))
    return InclusionProof.model_construct(
        leafIndex=row["seq"] - 1, treeSize=tree_size, auditPath=[h.hex() for h in path]
    )


async def consistency_proof(request: web.Request) -> BaseModel:
    """``GET /v1/audit/consistency?from=M&to=N``: the RFC 6962 consistency proof."""
    policy.may_prove_audit(principal(request))
    _only(request.query, frozenset({"from", "to"}))
    old = _size_param(request.query, "from", required=True)
    new = _size_param(request.query, "to", required=True)
    assert old is not None and new is not None
    pool = request.app[PG_POOL]
    current = (await store.tree_head(pool)).size
    if not old <= new <= current:
        raise BadRequest(f"need 1 <= from <= to <= the tree size ({current})")
    proof = await _proof(store.consistency_proof(pool, old, new))
    fields: dict[str, Any] = {"from": old, "to": new, "proof": [h.hex() for h in proof]}
    return ConsistencyProof.model_construct(**fields)


async def _proof(pending: Awaitable[list[bytes]]) -> list[bytes]:
    try:
        return await pending
    except LookupError as exc:  # a stored node is missing: the database was tampered with
        raise Unavailable(f"cannot build the proof: {exc}", retry_after=60) from exc


async def ingest_batch(request: web.Request) -> web.Response:
    """``POST /internal/events/batch``: a relay's batch, appended in order, idempotently."""
    policy.may_record_audit(principal(request))
    raw = await _read_json(request, request.app[SETTINGS].audit_max_batch_bytes)
    batch = EventBatch.model_validate_json(raw)
    events = _checked([_pending(ev, actor=ev.actor, source=ev.source) for ev in batch.events])
    started = time.perf_counter()
    stored, duplicates = await store.append_events(
        request.app[PG_POOL], events, trusted_source=True
    )
    APPEND_SECONDS.labels("internal").observe(time.perf_counter() - started)
    EVENTS_APPENDED.labels("internal").inc(len(stored))
    EVENTS_DUPLICATE.labels("internal").inc(duplicates)
    if stored:
        CHAIN_LAST_SEQ.set(stored[-1].seq)
    return _json(orjson.dumps({"appended": len(stored), "duplicates": duplicates}))


# The handler of each operation of audit_service/contract.py, by operation id.
HANDLERS: dict[str, Handler] = {
    "listAuditEvents": list_events,
    "recordAuditEvent": record_event,
    "getAuditEvent": get_event,
    "verifyAuditChain": verify,
    "getLatestAuditCheckpoint": latest_checkpoint,
    "getAuditInclusionProof": inclusion_proof,
    "getAuditConsistencyProof": consistency_proof,
}


def setup_routes(app: web.Application) -> None:
    """Mount the audit API as the contract declares it, and the internal endpoints."""
    app[LOG_MEMO] = {}
    register_routes(app, OPERATIONS, HANDLERS)
    app.router.add_post("/internal/checkpoints", sign_checkpoint)
    app.router.add_post("/internal/events/batch", ingest_batch)
