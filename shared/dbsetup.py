"""Start-up of a service's own database: connect with bounded retries, create it when
missing, apply its migrations. Used by audit_service and the anonymizer."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.db import mask_dsn
from shared.migrate import apply_migrations

log = logging.getLogger("medsvc.db")

_UNREACHABLE = (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError,
                asyncpg.ConnectionDoesNotExistError)  # fmt: skip
_CREATE_DB_LOCK = 0x6D656473_63726462  # 'medscrdb': serialises CREATE DATABASE at start-up


def dsn_with(dsn: str, *, user: str | None = None, database: str | None = None) -> str:
    """``dsn`` with another user (password dropped) and/or another database."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if user is not None:
        host = netloc.rpartition("@")[2]
        netloc = f"{user}@{host}"
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


async def connect_with_retry(
    dsn: str, password: str | None, attempts: int = 30
) -> asyncpg.Connection:
    """One connection, retried a bounded number of times with one warning per try."""
    for attempt in range(1, attempts + 1):
        try:
            return await asyncpg.connect(dsn, password=password, timeout=5)
        except _UNREACHABLE as exc:
            if attempt == attempts:
                raise
            log.warning("connect failed; retrying", extra={
                "action": "db.connect_retry", "dsn": mask_dsn(dsn), "error": type(exc).__name__,
                "attempt": attempt})  # fmt: skip
            await asyncio.sleep(min(0.2 * attempt, 2.0))
    raise AssertionError("unreachable")


async def ensure_database(dsn: str, password: str | None) -> None:
    """Create the database ``dsn`` names if it does not exist (needs CREATEDB)."""
    try:
        conn = await connect_with_retry(dsn, password)
    except asyncpg.InvalidCatalogNameError:
        name = dsn.rsplit("/", 1)[1].split("?", 1)[0]
        admin = await connect_with_retry(dsn_with(dsn, database="postgres"), password)
        try:
            # Several processes start at once: one creates, the others wait and find it.
            await admin.execute("SELECT pg_advisory_lock($1)", _CREATE_DB_LOCK)
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await admin.execute('CREATE DATABASE "{}"'.format(name.replace('"', '""')))
                log.info("database created", extra={"action": "db.created", "dsn": mask_dsn(dsn)})
        finally:
            await admin.close()  # frees the lock
    else:
        await conn.close()


async def migrate(dsn: str, password: str | None, component: str, folder: Path) -> list[str]:
    """Apply ``component``'s migrations in ``folder`` to the database ``dsn`` names."""
    conn = await connect_with_retry(dsn, password)
    try:
        return await apply_migrations(conn, [(component, folder)])
    finally:
        await conn.close()
