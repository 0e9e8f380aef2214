"""One service's app in process, against a real PostgreSQL: a fresh database per test.

A throwaway PostgreSQL cluster is started once per session (as the local stack starts its
own: initdb as an unprivileged account when we are root, a free port, fsync off). The FE
server's migrations run once into a template database; each test gets
``CREATE DATABASE … TEMPLATE …`` (a file copy, as procrastinate's tests do) and its own app,
built by the same ``create_app`` and settings parser as production, served by aiohttp's
test server on a real socket. No nginx, no gateway, no Redis (the cache is off): these tests
are about the handlers; the topology, cache and fault tests stay in ``tests/e2e``.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from anonymizer import store as registry_store
from audit_service import store as audit_store
from deploy.localstack.ports import free_port
from deploy.localstack.postgres import PostgresServer, server_account
from fe_server.app import create_app, migration_sets
from shared import idempotency
from shared.auth import make_token
from shared.migrate import apply_migrations
from shared.settings import FESettings
from shared.shardmap import DEFAULT_BUCKETS, Shard, ShardMap
from tests.e2e.api import Api

SECRET = "inproc-test-secret-of-at-least-32-bytes"
TEMPLATE = "fe_template"
_names = itertools.count()


async def create_template(pg: PostgresServer, name: str, sets: list[tuple[str, Path]]) -> str:
    """Create the database ``name`` and apply the migrations of ``sets`` to it, once."""
    admin = await asyncpg.connect(pg.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg.dsn_for(name))
    try:
        await apply_migrations(conn, sets)
    finally:
        await conn.close()
    return name


@contextlib.asynccontextmanager
async def database_from(pg: PostgresServer, template: str, prefix: str) -> AsyncIterator[str]:
    """The DSN of a fresh copy of ``template`` (a file copy), dropped afterwards."""
    name = f"{prefix}_{next(_names)}"
    admin = await asyncpg.connect(pg.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        try:
            yield pg.dsn_for(name)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg() -> AsyncIterator[PostgresServer]:
    """A PostgreSQL cluster for this session, stopped and removed at the end."""
    base = Path(tempfile.mkdtemp(prefix="medsvc-inproc-"))
    base.chmod(0o755)  # PostgreSQL may run as another account and must get in
    server = PostgresServer(
        "pg-inproc", base / "data", free_port(), base / "postgres.log",
        fast=True, account=server_account(),
    )  # fmt: skip
    try:
        await server.start()
        await create_template(server, TEMPLATE, migration_sets(["user", "visit"]))
        yield server
    finally:
        await server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session")
async def shard_db(pg: PostgresServer) -> AsyncIterator[str]:
    """The DSN of a fresh, migrated shard database, dropped after the test."""
    async with database_from(pg, TEMPLATE, "t") as dsn:
        yield dsn


def one_shard_map(dsn: str) -> ShardMap:
    """A map of one shard (id 0) owning every bucket, its database ``dsn``."""
    return ShardMap(
        buckets=DEFAULT_BUCKETS,
        shards=[Shard(id=0, buckets=[(0, DEFAULT_BUCKETS - 1)], postgres=dsn)],
    )


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[TestClient]:
    """``app`` on aiohttp's test server (a real socket), and a client of it."""
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def callers(client: TestClient) -> Callable[[str, str], Api]:
    """``make(sub, role)``: an API client of the served app calling with that one role."""

    def make(sub: str, role: str) -> Api:
        base = str(client.make_url("")).rstrip("/")
        return Api(client.session, base, make_token(SECRET, sub, [role]))

    return make


@pytest_asyncio.fixture(loop_scope="session")
async def fe(shard_db: str) -> AsyncIterator[TestClient]:
    """The FE server of shard 0 (user and visit services) in process, its cache off."""
    settings = FESettings(shard=0, services="user,visit", cache=False, jwt_secret=SECRET,
                          pg_pool_min=1, pg_pool_max=4)  # fmt: skip
    async with served(create_app(settings, one_shard_map(shard_db))) as client:
        yield client


@pytest.fixture
def as_role(fe: TestClient) -> Callable[[str, str], Api]:
    """``as_role(sub, role)``: a client of the in-process app calling with that one role."""
    return callers(fe)


@pytest.fixture
def admin(as_role: Callable[[str, str], Api]) -> Api:
    return as_role("admin", "admin")


# The templates of the central services' databases, made once per session for every module
# that builds their apps (the handler tests, the admission tests).
@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def audit_template(pg: PostgresServer) -> str:
    """The name of a database holding the migrated audit schema."""
    return await create_template(
        pg, "audit_template", [("audit", audit_store.MIGRATIONS), idempotency.migration_set()]
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def registry_template(pg: PostgresServer) -> str:
    """The name of a database holding the migrated study registry (the anonymizer's)."""
    sets = [("anonymizer", registry_store.MIGRATIONS), idempotency.migration_set()]
    return await create_template(pg, "anonymizer_template", sets)
