"""Schema migrations: applied in order on an empty database, once, however many processes start."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from fe_server.app import migration_sets
from shared.migrate import apply_migrations, migration_files


async def fresh_database(stack) -> str:
    name = "mig_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(stack.central_postgres.dsn_for("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return stack.central_postgres.dsn_for(name)


async def test_stairway_every_migration_applies_in_order_on_an_empty_database(stack) -> None:
    dsn = await fresh_database(stack)
    sets = migration_sets(["user", "visit"])
    conn = await asyncpg.connect(dsn)
    try:
        applied = await apply_migrations(conn, sets)
        expected = [f"{c}/{v:03d}_{n}" for c, folder in sets for v, n, _ in migration_files(folder)]
        assert applied == expected
        assert await apply_migrations(conn, sets) == []  # nothing twice
        assert await conn.fetchval("SELECT count(*) FROM users") == 0
        assert await conn.fetchval("SELECT count(*) FROM visits") == 0
    finally:
        await conn.close()


async def test_processes_starting_at_once_apply_each_migration_once(stack) -> None:
    dsn = await fresh_database(stack)
    sets = migration_sets(["visit"])  # a visit-only FE server still gets the users schema first
    conns = [await asyncpg.connect(dsn) for _ in range(6)]
    try:
        results = await asyncio.gather(*(apply_migrations(c, sets) for c in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(set(applied))
        rows = await conns[0].fetch(
            "SELECT component, version FROM schema_migrations ORDER BY 1, 2"
        )
        assert len(rows) == len(applied)
        assert {r["component"] for r in rows} >= {"user", "visit"}
    finally:
        for c in conns:
            await c.close()
