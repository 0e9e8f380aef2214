"""Numbered ``.sql`` migrations, applied in order at start-up.

Each service keeps ``migrations/NNN_name.sql``. All pending files are applied in one
transaction under an advisory lock, so several processes starting at once apply each file
exactly once; ``schema_migrations`` records what ran.
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

log = logging.getLogger("medsvc.migrate")

_LOCK_KEY = 0x6D656473  # 'meds': one advisory lock id for all migrations of a database


def migration_files(directory: Path) -> list[tuple[int, str, Path]]:
    """The ``NNN_name.sql`` files of ``directory`` as (number, name, path), in order."""
    out = []
    for path in sorted(directory.glob("*.sql")):
        num, _, name = path.stem.partition("_")
        out.append((int(num), name, path))
    return out


async def apply_migrations(conn: asyncpg.Connection, sets: list[tuple[str, Path]]) -> list[str]:
    """Apply the pending migrations of each (component, folder) in ``sets``; return what ran."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   component text NOT NULL, version int NOT NULL, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (component, version))"""
        )
        for component, folder in sets:
            done = {
                r["version"]
                for r in await conn.fetch(
                    "SELECT version FROM schema_migrations WHERE component = $1", component
                )
            }
            for version, name, path in migration_files(folder):
                if version in done:
                    continue
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)",
                    component, version, name,
                )
                applied.append(f"{component}/{version:03d}_{name}")
    if applied:
        log.info("migrated", extra={"action": "db.migrated", "applied": applied})
    return applied
