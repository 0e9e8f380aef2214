"""Typed application keys for the resources an FE server hands to the services it hosts."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from shared.auth import TokenVerifier
from shared.cache import ReadCache
from shared.settings import FESettings
from shared.shardmap import ShardMap

PG_POOL = web.AppKey("pg_pool", asyncpg.Pool)
VERIFIER = web.AppKey("verifier", TokenVerifier)
SHARD_MAP = web.AppKey("shard_map", ShardMap)
SHARD_ID = web.AppKey("shard_id", int)
# The shard a request was served for (the access line and the problem logs name it).
REQUEST_SHARD = web.RequestKey("shard", int)
CACHE = web.AppKey("cache", ReadCache)
FE_SETTINGS = web.AppKey("fe_settings", FESettings)
# The readiness checks of GET /readyz (shared/ops.py), each an async function of the app.
READINESS = web.AppKey("readiness_checks", list)
