"""HTTP handlers of the users API on one shard (the gateway merges searches across shards)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from shared import idempotency, policy
from shared.cache import pack_entry, unpack_entry
from shared.cachekeys import USER_FIELD, user_group
from shared.contract import Handler
from shared.db import transaction
from shared.entity import encode, reply
from shared.errors import BadRequest, FieldError, NotFound, ValidationFailed
from shared.httpio import (
    decode_cursor,
    encode_cursor,
    etag,
    if_match_version,
    limit_param,
    merge_patch,
    read_json_object,
)
from shared.service import (
    cache,
    check_owner,
    owned_read,
    pool,
    principal,
    require_owned,
    user_request,
)
from shared.writes import begin_write
from user_service import store
from user_service.models import IMMUTABLE_FIELDS, MUTABLE_FIELDS, User, UserIn, UserPage


async def create_user(request: web.Request) -> web.Response:
    caller = principal(request)
    body = await read_json_object(request)
    user = UserIn.model_validate_json(orjson.dumps(body))
    await require_owned(request, user.userName)
    policy.may_create_user(caller, user.role)
    key = await idempotency.key_of(request, caller)
    async with transaction(pool(request)) as conn:
        if (replay := await idempotency.claim(conn, key)) is not None:
            return replay
        await begin_write(conn, request, caller, "user_service")
        row = await store.insert_user(conn, user)
        # Encoded here, inside the transaction: the key keeps these very bytes.
        response = reply(User.from_row(row), status=201)
        await idempotency.record(conn, key, response)
    return response


async def get_user(request: web.Request) -> web.Response:
    caller, user_name = await user_request(request, check_owned=False)
    db = pool(request)

    async def load(owner_check: bool) -> bytes | None:
        if owner_check:
            row = await store.get_owned_user(db, user_name)
            await check_owner(request, user_name, row["owner"])
            if row["user_name"] is None:
                return None
        elif (row := await store.get_user(db, user_name)) is None:
            return None
        return pack_entry(row["role"], row["version"], encode(User.from_row(row)))

    entry = await owned_read(request, user_name, "user", user_group(user_name), USER_FIELD, load)
    if entry is None:
        raise NotFound(f"user {user_name} does not exist")
    role, version, body = unpack_entry(entry)
    policy.may_read_user(caller, user_name, role)
    # The cached bytes are served as they are: encoded once, when the cache was filled.
    return web.Response(
        body=body, content_type="application/json", headers={"ETag": etag(version or 0)}
    )


def _check_patch_fields(body: dict[str, Any]) -> None:
    errors = [
        FieldError(k, "cannot be changed" if k in IMMUTABLE_FIELDS else "is not a field of a user")
        for k in body
        if k not in MUTABLE_FIELDS
    ]
    if errors:
        raise ValidationFailed(errors=errors)


async def patch_user(request: web.Request) -> User:
    caller, user_name = await user_request(request)
    body = await read_json_object(request)
    _check_patch_fields(body)
    expected = if_match_version(request)
    # The fence keeps every hop from serving the old user from the cache (shared/cache.py).
    async with cache(request).fence("user", user_group(user_name)) as fence:
        async with transaction(pool(request)) as conn:
            await begin_write(conn, request, caller, "user_service")
            current = await store.lock_user(conn, user_name)
            policy.may_update_user(caller, user_name, current["role"], set(body))
            state = User.from_row(current).client_state(UserIn)
            user = UserIn.model_validate_json(orjson.dumps(merge_patch(state, body)))
            row = await store.update_user(conn, user, expected, current["version"])
            fence.check()
    return User.from_row(row)


async def search_users(request: web.Request) -> UserPage:
    """This shard's page of a search; the gateway merges the shards' pages."""
    caller = principal(request)
    policy.may_search_users(caller)
    unknown = set(request.query) - {"familyName", "limit", "cursor"}
    if unknown:
        raise ValidationFailed(
            errors=[FieldError(k, "is not a query parameter") for k in sorted(unknown)]
        )
    limit = limit_param(request.query)
    after = decode_cursor(request.query.get("cursor"), 3)
    prefix = request.query.get("familyName", "")
    if "\x00" in prefix or len(prefix) > 100:
        raise BadRequest("familyName must be at most 100 characters, without NUL")
    rows = await store.search_users(
        pool(request), prefix, after, limit + 1, patients_only=not caller.has("admin")
    )
    items = [User.from_row(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor([last.familyName, last.givenName, last.userName])
    return UserPage.model_construct(items=items, nextCursor=next_cursor)


# The handler of each operation of user_service/contract.py, by operation id.
HANDLERS: dict[str, Handler] = {
    "createUser": create_user,
    "searchUsers": search_users,
    "getUser": get_user,
    "patchUser": patch_user,
}
