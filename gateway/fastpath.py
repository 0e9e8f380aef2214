"""Cached reads answered by the gateway itself, from the owning shard's Redis.

A Python hop costs about as much CPU as serving the request (DESIGN.md), so a read whose
answer is already cached skips the FE server: the gateway looks the entry up (a plain HGET,
no lease, no fill), applies the same access rule the FE server would with the role stored in
the entry, and returns the cached bytes. Anything else — a miss, a query the FE server has
not validated and cached, Redis unavailable — goes on to the FE cluster, which loads, fills
and invalidates. Freshness is unchanged: a write invalidates the shared Redis before it
answers, so the gateway can no more serve an old value than an FE server can.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway.appkeys import CACHES
from shared import policy
from shared.auth import Principal
from shared.cache import ReadCache, unpack_entry
from shared.cachekeys import USER_FIELD, user_group, visit_field, visit_list_field, visits_group
from shared.errors import NotFound
from shared.httpio import etag


def _lookup(user_name: str, tail: str, request: web.Request) -> tuple[str, str, str] | None:
    """(entity, group, field) of the entry answering this GET, or None when none could."""
    # The query string is parsed only when there is one.
    query = request.query if request.query_string else {}
    if tail == "":
        return ("user", user_group(user_name), USER_FIELD) if not query else None
    if tail == "visits":
        field = visit_list_field(query)
        return ("visits", visits_group(user_name), field) if field else None
    head, _, visit_id = tail.partition("/")
    if head == "visits" and visit_id and "/" not in visit_id and not query:
        try:
            canonical = str(uuid.UUID(visit_id))
        except ValueError:
            return None
        if canonical == visit_id:
            return ("visit", visits_group(user_name), visit_field(canonical))
    return None


async def cached_response(
    request: web.Request, principal: Principal, shard_id: int, user_name: str, tail: str
) -> web.Response | None:
    """The cached answer to a GET, or None to pass the request on to the FE cluster."""
    cache: ReadCache | None = request.app[CACHES].get(shard_id)
    where = _lookup(user_name, tail, request)
    if cache is None or where is None:
        return None
    entity, group, field = where
    entry = await cache.peek(entity, group, field)
    if entry is None:
        return None
    role, version, body = unpack_entry(entry)
    if entity == "user":
        policy.may_read_user(principal, user_name, role)
    else:
        policy.may_read_visits(principal, user_name, role)
        if entity == "visit" and version is None:
            raise NotFound(f"visit {field[2:]} of {user_name} does not exist")
    headers = {"ETag": etag(version)} if version is not None else None
    return web.Response(body=body, content_type="application/json", headers=headers)
