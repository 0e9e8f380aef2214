"""Numbered ``.sql`` migrations, applied in order at start-up.

Each service keeps ``migrations/NNN_name.sql``. All pending files are applied in one
transaction under an advisory lock, so several processes starting at once apply each file
exactly once; ``schema_migrations`` records what ran, as (component, version, name).

A file that moved (to another component, or to another number) says where it was on its
first line, ``-- formerly: <component>/<NNN>_<name>``. A database that recorded it under its
old name has it already: the record is renamed, and the file is not run again.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import asyncpg

log = logging.getLogger("medsvc.migrate")

_LOCK_KEY = 0x6D656473  # 'meds': one advisory lock id for all migrations of a database
_FORMERLY = re.compile(r"-- formerly: ([\w.-]+)/(\d+)_(\w+)\n")


def former_name(path: Path) -> tuple[str, int, str] | None:
    """The (component, version, name) a moved migration file was recorded under, if any."""
    with path.open() as f:
        found = _FORMERLY.fullmatch(f.readline())
    return (found[1], int(found[2]), found[3]) if found else None


async def _renamed(
    conn: asyncpg.Connection, component: str, version: int, name: str, path: Path
) -> str | None:
    """Rename the record of a moved file applied under its former name; what it was, or None."""
    if (former := former_name(path)) is None:
        return None
    # rename_migration: the same schema change, recorded under its new name.
    status = await conn.execute(
        """UPDATE schema_migrations SET component = $4, version = $5, name = $6
           WHERE component = $1 AND version = $2 AND name = $3""",
        *former, component, version, name,
    )
    return f"{former[0]}/{former[1]:03d}_{former[2]}" if status == "UPDATE 1" else None


def migration_files(directory: Path) -> list[tuple[int, str, Path]]:
    """The ``NNN_name.sql`` files of ``directory`` as (number, name, path), in order."""
    out = []
    for path in sorted(directory.glob("*.sql")):
        num, _, name = path.stem.partition("_")
        out.append((int(num), name, path))
    return out


async def apply_migrations(conn: asyncpg.Connection, sets: list[tuple[str, Path]]) -> list[str]:
    """Apply the pending migrations of each (component, folder) in ``sets``; return what ran
    (a moved file recorded under its former name is renamed, not run)."""
    applied: list[str] = []
    renamed: list[str] = []
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
                if (was := await _renamed(conn, component, version, name, path)) is not None:
                    renamed.append(f"{was} -> {component}/{version:03d}_{name}")
                    continue
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)",
                    component, version, name,
                )
                applied.append(f"{component}/{version:03d}_{name}")
    if renamed:
        log.info("migrations renamed", extra={"action": "db.renamed", "renamed": renamed})
    if applied:
        log.info("migrated", extra={"action": "db.migrated", "applied": applied})
    return applied
