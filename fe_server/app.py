"""The FE server: one process serving one shard and hosting one or more services.

``create_app`` builds the aiohttp application without doing I/O; the shard's PostgreSQL pool
is a cleanup context that opens it, applies the hosted services' migrations, and closes it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from fe_server import outbox
from fe_server.outbox import RelayConfig, relay_context
from shared.admission import Limiter, admission_middleware
from shared.appkeys import CACHE, FE_SETTINGS, PG_POOL, SHARD_ID, SHARD_MAP, VERIFIER
from shared.auth import TokenVerifier
from shared.cache import ReadCache
from shared.db import pool_scope
from shared.hosting import HostedService
from shared.httpio import MAX_BODY
from shared.idempotency import migration_set as idempotency_migration_set
from shared.migrate import apply_migrations
from shared.ops import setup_ops
from shared.ownership import seed_ownership
from shared.problems import error_middleware, observe_middleware
from shared.settings import FESettings, redis_credentials
from shared.shardmap import MapWatcher, ShardMap
from shared.tasks import background_context
from user_service import app as user_app
from visit_service import app as visit_app

log = logging.getLogger("medsvc.fe")


# The services an FE server can host, by the name its settings use.
SERVICES: dict[str, HostedService] = {"user": user_app.SERVICE, "visit": visit_app.SERVICE}


def hosted_service(name: str) -> HostedService:
    """The service called ``name`` (ValueError for an unknown one)."""
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; known: {sorted(SERVICES)}")
    return SERVICES[name]


def migration_sets(names: list[str]) -> list[tuple[str, Path]]:
    """The migration folders of the shard database: the audit outbox (which the services' audit
    triggers write to), then ``names`` and what they require, dependencies first, then the
    answers kept for Idempotency-Key retries."""
    ordered: list[HostedService] = []

    def visit(name: str) -> None:
        svc = hosted_service(name)
        for dep in svc.requires:
            visit(dep)
        if svc not in ordered:
            ordered.append(svc)

    for name in names:
        visit(name)
    services = [(svc.name, svc.migrations) for svc in ordered]
    return [outbox.MIGRATIONS, *services, idempotency_migration_set()]


def create_app(settings: FESettings, shard_map: ShardMap) -> web.Application:
    """Build the FE server for ``settings.shard`` hosting ``settings.service_list``."""
    shard = shard_map.shard(settings.shard)
    services = [hosted_service(n) for n in settings.service_list]
    # Admission first: a request past the bound is refused before any other work.
    admission = admission_middleware(Limiter({"request": settings.max_in_flight}))
    app = web.Application(
        middlewares=[admission, observe_middleware, error_middleware], client_max_size=MAX_BODY
    )
    app[SHARD_MAP] = shard_map
    app[SHARD_ID] = shard.id
    app[VERIFIER] = TokenVerifier(settings.jwt_secret.get_secret_value())
    app[FE_SETTINGS] = settings
    # The map is watched (the version gauge, and a restart on the newest map), but an FE
    # server does not route: its database says which users it serves.
    watcher = MapWatcher(settings.shard_map, shard_map)

    async def pg_context(app: web.Application) -> AsyncIterator[None]:
        password = settings.pg_password.get_secret_value() if settings.pg_password else None
        async with pool_scope(
            shard.postgres,
            password=password,
            min_size=settings.pg_pool_min,
            max_size=settings.pg_pool_max,
            what=f"shard-{shard.id}",
            # Handlers keep no session state (settings are transaction-local): no reset query.
            reset_sessions=False,
        ) as pool:
            async with pool.acquire() as conn:
                await apply_migrations(conn, migration_sets(settings.service_list))
                # The map this process started with seeds a new database's bucket ownership.
                await seed_ownership(conn, shard.id, watcher.current)
            app[PG_POOL] = pool
            yield

    async def cache_context(app: web.Application) -> AsyncIterator[None]:
        cache = ReadCache(shard.redis if settings.cache else None, shard.id, ttl=settings.cache_ttl,
                          **redis_credentials(settings))
        try:
            await cache.ping()
            log.info(
                "cache connected",
                extra={"action": "cache.connected", "shard": shard.id, "enabled": cache.enabled},
            )
        except Exception as exc:  # noqa: BLE001 - a dead cache degrades reads, it does not stop us
            log.warning(
                "cache unreachable at start",
                extra={"action": "cache.unreachable", "error": type(exc).__name__},
            )
            cache.breaker.trip()
        app[CACHE] = cache
        try:
            yield
        finally:
            await cache.close()

    async def database_ready(app: web.Application) -> None:
        async with app[PG_POOL].acquire(timeout=2) as conn:
            await conn.execute("SELECT 1")

    app.cleanup_ctx.append(pg_context)
    app.cleanup_ctx.append(cache_context)
    if settings.audit_url_list:
        # After pg_context: the outbox table exists once the migrations ran.
        password = settings.pg_password.get_secret_value() if settings.pg_password else None
        relay = RelayConfig(shard_id=shard.id, dsn=shard.postgres, password=password)
        app.cleanup_ctx.append(
            relay_context(relay, settings.audit_url_list, settings.jwt_secret.get_secret_value())
        )
    app.cleanup_ctx.append(background_context("shard-map-watch", lambda app: watcher.run()))
    setup_ops(app, [database_ready])
    for svc in services:
        svc.setup_routes(app)
    return app
