"""HTTP handlers of the visits API; a patient's visits live on the patient's shard."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from shared import idempotency, policy
from shared.appkeys import REQUEST_SHARD, SHARD_ID
from shared.auth import Principal
from shared.cache import pack_entry, unpack_entry
from shared.cachekeys import VISIT_LIST_PARAMS, visit_field, visit_list_field, visits_group
from shared.contract import Handler, register_routes
from shared.db import db_errors, transaction
from shared.entity import encode, reply
from shared.errors import BadRequest, FieldError, Forbidden, Misdirected, NotFound, ValidationFailed
from shared.httpio import (
    decode_instant_cursor,
    encode_instant_cursor,
    etag,
    if_match_version,
    limit_param,
    merge_patch,
    parse_instant,
    read_json_object,
)
from shared.service import (
    cache,
    check_owner,
    owned_read,
    path_user_name,
    pool,
    principal,
    require_owned,
    user_request,
)
from shared.shard_users import user_role
from shared.writes import begin_write, write_tags
from visit_service import store
from visit_service.contract import OPERATIONS
from visit_service.models import (
    IMMUTABLE_FIELDS,
    MUTABLE_FIELDS,
    REQUIRED_FIELDS,
    Visit,
    VisitIn,
    VisitPage,
)


def _visit_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["visitId"]
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise NotFound(f"visit {raw[:64]} does not exist") from exc


def _timestamp(query: Any, name: str) -> dt.datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return parse_instant(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an RFC 3339 timestamp with a UTC offset") from exc


def _may_record_for_patients(caller: Principal) -> bool:
    """Whether the policy lets ``caller`` record a visit of a patient (the insert's condition;
    the policy itself answers again, with its own error, once the role is known)."""
    try:
        policy.may_write_visits(caller, "patient")
    except Forbidden:
        return False
    return True


async def create_visit(request: web.Request) -> web.Response:
    caller = principal(request)
    user_name = path_user_name(request)
    policy.may_use_users_api(caller, user_name)
    key = await idempotency.key_of(request, caller)
    if key is not None:
        # A keyed retry is answered only by the owner, which holds the key's first answer.
        await require_owned(request, user_name)
    body = await read_json_object(request)
    visit = VisitIn.model_validate_json(orjson.dumps(body))
    if visit.clinician is None:
        visit = visit.model_copy(update={"clinician": caller.sub})
    shard_id = request.app[SHARD_ID]
    request[REQUEST_SHARD] = shard_id
    actor, source, request_id = write_tags(request, caller, "visit_service")

    async def insert(conn: asyncpg.Connection, timeout: float | None) -> web.Response:
        # One round trip: the owner check, the patient's lock and role, the insert and
        # (by trigger) its audit outbox row.
        row = await store.create_visit(
            conn,
            actor=actor,
            source=source,
            request_id=request_id,
            shard_id=shard_id,
            user_name=user_name,
            may_record=_may_record_for_patients(caller),
            visit=visit,
            timeout=timeout,
        )
        if row["owner"] != shard_id:
            raise Misdirected(
                f"{user_name} belongs to shard {row['owner']}, not {shard_id}",
                owner=row["owner"],
            )
        role = row["role"]
        if role is None:
            raise NotFound(f"user {user_name} does not exist")
        policy.may_write_visits(caller, role)
        if role != "patient":
            raise ValidationFailed(
                errors=[FieldError("userName", "visits are recorded for patients only")]
            )
        # Encoded here (inside the transaction when keyed: the key keeps these very bytes).
        return reply(Visit.from_row(row), status=201)

    # The fence keeps every hop from serving the patient's old visit lists (shared/cache.py).
    async with cache(request).fence("visit", visits_group(user_name)) as fence:
        if key is None:
            # Nothing to claim or record: the statement is the whole transaction, with no
            # BEGIN and COMMIT round trips; cancelled if it runs past the fence's deadline.
            with db_errors("the shard database"):
                async with pool(request).acquire() as conn:
                    return await insert(conn, fence.remaining())
        async with transaction(pool(request)) as conn:
            if (replay := await idempotency.claim(conn, key)) is not None:
                return replay
            response = await insert(conn, None)
            await idempotency.record(conn, key, response)
            fence.check()
    return response


async def get_visit(request: web.Request) -> web.Response:
    caller, user_name = await user_request(request, check_owned=False)
    visit_id = _visit_id(request)
    db = pool(request)

    async def load(owner_check: bool) -> bytes:
        # One statement: the bucket's owner (the 421 check), the patient's role and the visit.
        row = await store.get_owned_visit(db, user_name, visit_id)
        if owner_check:
            await check_owner(request, user_name, row["owner"])
        if (role := row["role"]) is None:
            raise NotFound(f"user {user_name} does not exist")
        if row["visit_id"] is None:
            return pack_entry(role, None, b"")
        return pack_entry(role, row["version"], encode(Visit.from_row(row)))

    entry = await owned_read(
        request, user_name, "visit", visits_group(user_name), visit_field(str(visit_id)), load
    )
    role, version, body = unpack_entry(entry or b"")
    policy.may_read_visits(caller, user_name, role)
    if version is None:
        raise NotFound(f"visit {visit_id} of {user_name} does not exist")
    return web.Response(body=body, content_type="application/json", headers={"ETag": etag(version)})


async def list_visits(request: web.Request) -> web.Response:
    caller, user_name = await user_request(request, check_owned=False)
    errors = [
        FieldError(k, "is not a query parameter")
        for k in sorted(set(request.query) - set(VISIT_LIST_PARAMS))
    ]
    errors += [
        FieldError(k, "is given more than once")
        for k in VISIT_LIST_PARAMS
        if len(request.query.getall(k, [])) > 1
    ]
    if errors:
        raise ValidationFailed(errors=errors)
    limit = limit_param(request.query)
    since, until = _timestamp(request.query, "since"), _timestamp(request.query, "until")
    after = decode_instant_cursor(request.query.get("cursor"))
    db = pool(request)

    async def load(owner_check: bool) -> bytes:
        # One statement: the bucket's owner (the 421 check), the patient's role and the page.
        rows = await store.owned_visits_page(db, user_name, since, until, after, limit + 1)
        if owner_check:
            await check_owner(request, user_name, rows[0]["owner"])
        if (role := rows[0]["role"]) is None:
            raise NotFound(f"user {user_name} does not exist")
        if rows[0]["visit_id"] is None:
            rows = []
        items = [Visit.from_row(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_instant_cursor(last["started_at"], last["visit_id"])
        page = VisitPage.model_construct(items=items, nextCursor=next_cursor)
        return pack_entry(role, None, encode(page))

    page_key = visit_list_field(request.query)
    assert page_key is not None  # the query's names were checked above
    entry = await owned_read(request, user_name, "visits", visits_group(user_name), page_key, load)
    assert entry is not None
    role, _, body = unpack_entry(entry)
    policy.may_read_visits(caller, user_name, role)
    return web.Response(body=body, content_type="application/json")


async def patch_visit(request: web.Request) -> Visit:
    caller, user_name = await user_request(request)
    visit_id = _visit_id(request)
    body = await read_json_object(request)
    errors = [
        FieldError(k, "cannot be changed" if k in IMMUTABLE_FIELDS else "is not a field of a visit")
        for k in body
        if k not in MUTABLE_FIELDS
    ]
    errors += [
        FieldError(k, "cannot be removed")
        for k in sorted(REQUIRED_FIELDS)
        if k in body and body[k] is None
    ]
    if errors:
        raise ValidationFailed(errors=errors)
    expected = if_match_version(request)
    async with cache(request).fence("visit", visits_group(user_name)) as fence:
        async with transaction(pool(request)) as conn:
            await begin_write(conn, request, caller, "visit_service")
            role = await user_role(conn, user_name)
            policy.may_write_visits(caller, role)
            current = await store.lock_visit(conn, user_name, visit_id)
            state = Visit.from_row(current).client_state(VisitIn)
            visit = VisitIn.model_validate_json(orjson.dumps(merge_patch(state, body)))
            row = await store.update_visit(conn, visit_id, visit, expected, current["version"])
            fence.check()
    return Visit.from_row(row)


# The handler of each operation of visit_service/contract.py, by operation id.
HANDLERS: dict[str, Handler] = {
    "createVisit": create_visit,
    "listVisits": list_visits,
    "getVisit": get_visit,
    "patchVisit": patch_visit,
}


def setup_routes(app: web.Application) -> None:
    """Mount the visits API as the contract declares it."""
    register_routes(app, OPERATIONS, HANDLERS)
