"""Helpers every hosted service's handlers use: the caller, the pool, the shard check."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from shared import policy
from shared.appkeys import CACHE, PG_POOL, REQUEST_SHARD, SHARD_ID, VERIFIER
from shared.auth import Principal
from shared.cache import ReadCache
from shared.cachekeys import user_group, visits_group
from shared.db import db_errors
from shared.errors import Misdirected, NotFound
from shared.types import USER_NAME_PATTERN

_USER_NAME = re.compile(USER_NAME_PATTERN)


__all__ = [
    "Misdirected", "cache", "check_owner", "owned_read", "path_user_name", "pool",
    "principal", "require_owned", "user_request",
]


def principal(request: web.Request) -> Principal:
    """The authenticated caller (401 when the token is missing or bad)."""
    return request.app[VERIFIER].from_request(request)


def pool(request: web.Request) -> asyncpg.Pool:
    return request.app[PG_POOL]


def cache(request: web.Request) -> ReadCache:
    return request.app[CACHE]


def path_user_name(request: web.Request) -> str:
    """The ``{userName}`` of the path; 404 when it cannot name a user."""
    user_name = request.match_info["userName"]
    if not _USER_NAME.fullmatch(user_name):
        raise NotFound(f"user {user_name[:64]} does not exist")
    return user_name


async def require_owned(request: web.Request, user_name: str) -> None:
    """Refuse a userName whose bucket this shard's database does not own (421), so a caller
    with a stale map never reads an old copy. The database, not this process's map, decides:
    a move flips ownership there. Writes are checked again inside their transaction (the
    trigger medsvc_check_owner), where a fence makes them wait."""
    with db_errors("the shard database"):
        # bucket_owner: one primary-key lookup.
        owner = await request.app[PG_POOL].fetchval("SELECT medsvc_owner($1)", user_name)
    await check_owner(request, user_name, owner)


async def check_owner(request: web.Request, user_name: str, owner: int | None) -> None:
    """421 unless ``owner``, as this shard's database read it, is this shard
    (:func:`require_owned`, or a read that asked its query for ``medsvc_owner``)."""
    shard_id = request.app[SHARD_ID]
    request[REQUEST_SHARD] = shard_id
    if owner != shard_id:
        # Whatever this shard's Redis still holds of the user is from before the bucket left
        # (a move killed between its flip and its switch leaves it there, and a gateway on the
        # old map would serve it after the new owner's writes): forget it. Nothing refills
        # it: a fill needs this check to pass.
        await cache(request).drop([user_group(user_name), visits_group(user_name)])
        raise Misdirected(f"{user_name} belongs to shard {owner}, not {shard_id}", owner=owner)


async def user_request(
    request: web.Request, *, check_owned: bool = True
) -> tuple[Principal, str]:
    """The caller and the path's userName of a request on one user's resources.

    What every such handler checks first, in this order: a valid token (401), a path that can
    name a user (404), a role that may use the users API for that user at all (403), and a
    shard whose database owns the user's bucket (421; ``check_owned=False``: the handler
    makes that check itself, through :func:`owned_read`). The finer rule, which needs the
    stored user's role, is the handler's.
    """
    caller = principal(request)
    user_name = path_user_name(request)
    policy.may_use_users_api(caller, user_name)
    if check_owned:
        await require_owned(request, user_name)
    return caller, user_name


# A read's load: its argument says whether the load must make the 421 check (check_owner)
# with the owner its own query read (medsvc_owner), saving that round trip.
OwnedLoader = Callable[[bool], Awaitable[bytes | None]]


async def owned_read(
    request: web.Request, user_name: str, entity: str, group: str, field: str, load: OwnedLoader
) -> bytes | None:
    """The read cache's value of a resource of ``user_name`` (:meth:`ReadCache.get`), after
    the 421 check of :func:`require_owned`.

    Through the cache, the check comes first: a cached value is served only where the
    database owns the user; and the load that fills the cache, under its lease, checks again
    with the owner its own query reads, so that a read checked just before a bucket move's
    flip cannot fill this shard's Redis after the move's invalidation (a gateway on the old
    map would serve that row after the new owner's writes).
    Without the cache (turned off, or Redis down), ``load(True)`` reads the owner in the same
    query as the resource and checks it before using the row: one round trip, not two.
    """
    read_cache = cache(request)
    if read_cache.bypassed(entity):
        return await load(True)
    await require_owned(request, user_name)
    return await read_cache.get(entity, group, field, lambda: load(True))
