"""Helpers every hosted service's handlers use: the caller, the pool, the shard check."""

from __future__ import annotations

import re

import asyncpg
from aiohttp import web

from shared.appkeys import CACHE, PG_POOL, SHARD_ID, SHARD_MAP, VERIFIER
from shared.auth import Principal
from shared.cache import ReadCache
from shared.errors import NotFound, ServiceError
from shared.types import USER_NAME_PATTERN

_USER_NAME = re.compile(USER_NAME_PATTERN)


class Misdirected(ServiceError):
    """The request reached a shard that does not own its userName (stale shard map)."""

    status, title = 421, "Misdirected Request"


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


def require_owned(request: web.Request, user_name: str) -> None:
    """Refuse a userName this shard does not own, so a stale map can never split a user."""
    owner = request.app[SHARD_MAP].shard_id_for(user_name)
    request["shard"] = request.app[SHARD_ID]
    if owner != request.app[SHARD_ID]:
        raise Misdirected(f"{user_name} belongs to shard {owner}, not {request.app[SHARD_ID]}")
