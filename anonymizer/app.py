"""The anonymizer's processes: the studies API (``serve``) and the scheduler (``schedule``).

``create_app`` builds the application without I/O. The registry database is one cleanup
context (create the database if asked, migrate, open the pool, and the shard pools beside
it); background work (runs started through the API, the scheduler loop, the metrics refresh)
are tasks that are cancelled and awaited on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from anonymizer import metrics, store
from anonymizer.extract import Extractor
from anonymizer.routes import EXTRACTOR, RUN_TASKS, setup_routes
from anonymizer.scheduler import run_forever
from anonymizer.settings import AnonymizerSettings
from anonymizer.shards import ShardPools
from shared import idempotency
from shared.admission import Limiter, admission_middleware
from shared.appkeys import VERIFIER
from shared.auth import TokenVerifier
from shared.db import pool_scope
from shared.dbsetup import ensure_database, migrate
from shared.ops import setup_ops
from shared.problems import error_middleware, observe_middleware
from shared.shardmap import MapWatcher, ShardMap
from shared.tasks import background_context

log = logging.getLogger("medsvc.anonymizer")


@contextlib.asynccontextmanager
async def extractor_scope(
    settings: AnonymizerSettings, shard_map: ShardMap
) -> AsyncIterator[Extractor]:
    """The registry (created and migrated when needed) and the shard pools, for a block."""
    password = settings.pg_password.get_secret_value() if settings.pg_password else None
    if settings.anonymizer_create_database:
        await ensure_database(settings.anonymizer_dsn, password)
    await migrate(settings.anonymizer_dsn, password, "anonymizer", store.MIGRATIONS)
    await migrate(settings.anonymizer_dsn, password, *idempotency.migration_set())
    shard_password = (
        settings.anonymizer_shard_password.get_secret_value()
        if settings.anonymizer_shard_password
        else password
    )
    # The map is watched: a shard added or buckets moved are read without a restart.
    watcher = MapWatcher(settings.shard_map, shard_map)
    shard_pools = ShardPools(
        watcher,
        shard_password,
        settings.anonymizer_shard_pool_max,
        user=settings.anonymizer_shard_user,
    )
    try:
        async with pool_scope(
            settings.anonymizer_dsn, password=password, min_size=settings.pg_pool_min,
            max_size=settings.pg_pool_max, what="anonymizer",
        ) as pool:  # fmt: skip
            yield Extractor(pool, shard_pools, settings.master_key, settings.anonymizer_batch_rows)
    finally:
        await shard_pools.close()


async def refresh_last_success(ex: Extractor, interval: float) -> None:
    """Keep the per-study last-success gauge current, whichever process ran the study."""
    while True:
        try:
            for row in await store.last_successes(ex.registry):
                metrics.LAST_SUCCESS.labels(row["study_id"]).set(row["finished_at"].timestamp())
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning(
                "metrics refresh failed",
                extra={"action": "metrics.refresh_failed", "error": type(exc).__name__},
            )
        await asyncio.sleep(interval)


def create_app(
    settings: AnonymizerSettings, shard_map: ShardMap, *, role: str = "api"
) -> web.Application:
    """The studies API (``role="api"``) or the scheduler (``role="scheduler"``)."""
    admission = admission_middleware(Limiter({"request": settings.max_in_flight}))
    app = web.Application(middlewares=[admission, observe_middleware, error_middleware])
    app[VERIFIER] = TokenVerifier(settings.jwt_secret.get_secret_value())
    app[RUN_TASKS] = set()

    async def registry_context(app: web.Application) -> AsyncIterator[None]:
        async with extractor_scope(settings, shard_map) as ex:
            app[EXTRACTOR] = ex
            try:
                yield
            finally:
                # Runs still going when the process stops: cancelled, marked failed.
                running = app[RUN_TASKS]
                tasks = list(running)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def database_ready(app: web.Application) -> None:
        async with app[EXTRACTOR].registry.acquire(timeout=2) as conn:
            await conn.execute("SELECT 1")

    app.cleanup_ctx.append(registry_context)
    app.cleanup_ctx.append(background_context(
        "last-success-metrics",
        lambda app: refresh_last_success(app[EXTRACTOR], settings.anonymizer_metrics_interval),
    ))  # fmt: skip
    if role == "scheduler":
        app.cleanup_ctx.append(
            background_context(
                "scheduler",
                lambda app: run_forever(app[EXTRACTOR], settings.anonymizer_schedule_interval),
            )
        )
    setup_ops(app, [database_ready])
    if role == "api":
        setup_routes(app)
    return app
