"""Moved migration files: a shard database made by the old layout upgrades without running
anything again (shared/migrate.py renames the records of files that say where they were).

Until the FE server got its own package, the audit outbox and every service's audit triggers
were migrated from ``shared/outbox_migrations/{outbox,user,visit}`` under the components
``audit_outbox``, ``audit_outbox.user`` and ``audit_outbox.visit``, after the services' own
folders. The old layout is rebuilt here from the moved files under their former names.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import asyncpg

from deploy.localstack.postgres import PostgresServer
from fe_server.app import migration_sets
from shared.migrate import apply_migrations, former_name, migration_files

# What the old layout recorded for the files that moved (git show 2155fc7:shared/outbox_migrations).
MOVED = {
    "audit_outbox.user/001_users_audit": "user/006_users_audit",
    "audit_outbox.user/002_study_consents_audit": "user/007_study_consents_audit",
    "audit_outbox.visit/001_visits_audit": "visit/004_visits_audit",
}
# The order the old FE server applied its components in.
OLD_ORDER = ("user", "visit", "audit_outbox", "audit_outbox.user", "audit_outbox.visit",
             "idempotency")  # fmt: skip


def old_layout(sets: list[tuple[str, Path]], into: Path) -> list[tuple[str, Path]]:
    """The (component, folder) sets as the old layout had them: each moved file back under
    its former component and name."""
    for component, folder in sets:
        for version, name, path in migration_files(folder):
            former = former_name(path)
            comp, ver, nm = former if former else (component, version, name)
            (into / comp).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, into / comp / f"{ver:03d}_{nm}.sql")
    assert sorted(p.name for p in into.iterdir()) == sorted(OLD_ORDER)
    return [(c, into / c) for c in OLD_ORDER]


async def new_database(pg: PostgresServer) -> asyncpg.Connection:
    name = f"mv_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return await asyncpg.connect(pg.dsn_for(name))


async def schema_of(conn: asyncpg.Connection) -> tuple[set[str], set[str], set[str]]:
    """The tables, functions and triggers of the public schema, by name."""
    tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    functions = await conn.fetch(
        """SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'public'"""
    )
    triggers = await conn.fetch("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    return ({r[0] for r in tables}, {r[0] for r in functions}, {r[0] for r in triggers})


async def test_a_database_of_the_old_layout_upgrades_without_running_anything_again(
    pg: PostgresServer, tmp_path: Path
) -> None:
    sets = migration_sets(["user", "visit"])
    old, fresh = await new_database(pg), await new_database(pg)
    try:
        ran_before = await apply_migrations(old, old_layout(sets, tmp_path))
        assert set(MOVED) <= set(ran_before)
        # The new layout finds everything applied: the moved files' records are renamed.
        assert await apply_migrations(old, sets) == []
        recorded = await old.fetch(
            "SELECT component, version, name FROM schema_migrations ORDER BY 1, 2"
        )
        names = {f"{r['component']}/{r['version']:03d}_{r['name']}" for r in recorded}
        assert names == {f"{c}/{v:03d}_{n}" for c, f in sets for v, n, _ in migration_files(f)}
        assert not names & set(MOVED) and set(MOVED.values()) <= names
        assert await apply_migrations(old, sets) == []
        # The upgraded database has the schema a new one gets.
        await apply_migrations(fresh, sets)
        assert await schema_of(old) == await schema_of(fresh)
    finally:
        await old.close()
        await fresh.close()


async def test_a_file_moved_where_its_former_name_never_ran_is_applied(
    pg: PostgresServer,
) -> None:
    # A new database has no former records: every file runs, the moved ones under new names.
    conn = await new_database(pg)
    try:
        applied = await apply_migrations(conn, migration_sets(["user", "visit"]))
        assert set(MOVED.values()) <= set(applied)
        assert not set(MOVED) & set(applied)
    finally:
        await conn.close()
