"""audit_service: the generic AuditStore with its own PostgreSQL database.

``create_app`` builds the application without I/O; the database is one cleanup context that
creates the database if asked, applies the migrations as the owner, then opens the pool the
requests use, logged in as the append-only role (``audit_writer``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from audit_service import store
from audit_service.checkpoints import Notary
from audit_service.routes import NOTARY, SETTINGS, setup_routes
from audit_service.settings import AuditSettings
from audit_service.verify import make_checkpoint
from shared import idempotency
from shared.admission import Limiter, admission_middleware
from shared.appkeys import PG_POOL, VERIFIER
from shared.auth import TokenVerifier
from shared.db import pool_scope
from shared.dbsetup import connect_with_retry, ensure_database, migrate
from shared.ops import setup_ops
from shared.problems import error_middleware, observe_middleware
from shared.tasks import background

log = logging.getLogger("medsvc.audit")


def create_app(settings: AuditSettings) -> web.Application:
    """Build audit_service for ``settings``."""
    app = web.Application(
        middlewares=[
            admission_middleware(Limiter({"request": settings.max_in_flight})),
            observe_middleware,
            error_middleware,
        ],
        client_max_size=settings.audit_max_batch_bytes,
    )
    app[SETTINGS] = settings
    app[VERIFIER] = TokenVerifier(settings.jwt_secret.get_secret_value())
    app[NOTARY] = Notary.load(
        settings.audit_checkpoint_log, settings.audit_signing_key_file,
        settings.audit_public_keys_file,
    )

    async def pg_context(app: web.Application) -> AsyncIterator[None]:
        owner_password = settings.pg_password.get_secret_value() if settings.pg_password else None
        if settings.audit_create_database:
            await ensure_database(settings.audit_dsn, owner_password)
        await migrate(settings.audit_dsn, owner_password, "audit", store.MIGRATIONS)
        await migrate(settings.audit_dsn, owner_password, *idempotency.migration_set())
        owner = await connect_with_retry(settings.audit_dsn, owner_password)
        try:
            await store.backfill_tree(owner)
        finally:
            await owner.close()
        writer = settings.audit_writer_password
        async with pool_scope(
            settings.writer_dsn, password=writer.get_secret_value() if writer else None,
            min_size=settings.pg_pool_min, max_size=settings.pg_pool_max, what="audit",
        ) as pool:  # fmt: skip
            app[PG_POOL] = pool
            notary = app[NOTARY]
            if notary is None or notary.key is None:
                log.warning("no audit signing key or checkpoint log configured: no checkpoints")
                yield
                return
            async with background(_sign_periodically(app, notary), "audit-checkpoints"):
                yield

    async def database_ready(app: web.Application) -> None:
        async with app[PG_POOL].acquire(timeout=2) as conn:
            await conn.execute("SELECT 1")

    async def _sign_periodically(app: web.Application, notary: Notary) -> None:
        assert notary.key is not None
        while True:
            await asyncio.sleep(settings.audit_checkpoint_interval)
            try:
                await make_checkpoint(app[PG_POOL], notary.log, notary.key)
            except Exception:  # noqa: BLE001 - keep signing; the next round retries
                log.exception("signing an audit checkpoint failed")

    app.cleanup_ctx.append(pg_context)
    setup_ops(app, [database_ready])
    setup_routes(app)
    return app
