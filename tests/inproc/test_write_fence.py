"""A write under a cache fence commits within COMMIT_WITHIN of the fence, or not at all.

shared/cache.py: the fence's deadline stands well past the commit only because a write that
runs longer than COMMIT_WITHIN is not made. A keyed POST visit checks it before its COMMIT; an
unkeyed one is a single statement with no COMMIT of its own, cancelled at that time. Here the
patient's row is locked so that the insert waits past a shortened deadline: both kinds must
answer 503 and store nothing once the lock goes. The FE server runs in process with a real
Redis (the cache on), against its own PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from deploy.localstack.ports import free_port
from deploy.localstack.redis_server import RedisServer
from fe_server.app import create_app
from shared import cache as cache_module
from shared.auth import make_token
from shared.settings import FESettings
from shared.shardmap import DEFAULT_BUCKETS, Shard, ShardMap
from tests.e2e.api import Api
from tests.inproc.conftest import SECRET


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def redis_url() -> AsyncIterator[str]:
    base = Path(tempfile.mkdtemp(prefix="medsvc-inproc-redis-"))
    server = RedisServer("redis-inproc", base, free_port(), base / "redis.log")
    try:
        await server.start()
        yield server.url
    finally:
        await server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session")
async def cached_fe(shard_db: str, redis_url: str) -> AsyncIterator[TestClient]:
    shard_map = ShardMap(
        buckets=DEFAULT_BUCKETS,
        shards=[Shard(id=0, buckets=[(0, DEFAULT_BUCKETS - 1)], postgres=shard_db,
                      redis=redis_url)],
    )  # fmt: skip
    settings = FESettings(shard=0, services="user,visit", cache=True, jwt_secret=SECRET,
                          pg_pool_min=1, pg_pool_max=4)  # fmt: skip
    client = TestClient(TestServer(create_app(settings, shard_map)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.parametrize("keyed", [False, True], ids=["one-statement", "keyed-transaction"])
async def test_a_write_held_past_its_fence_deadline_is_not_made(
    cached_fe: TestClient, shard_db: str, monkeypatch: pytest.MonkeyPatch, keyed: bool
) -> None:
    admin = Api(cached_fe.session, str(cached_fe.make_url("")).rstrip("/"),
                make_token(SECRET, "admin", ["admin"]))  # fmt: skip
    name = (await admin.create_patient())["userName"]
    monkeypatch.setattr(cache_module, "COMMIT_WITHIN", 0.5)
    holder = await asyncpg.connect(shard_db)
    try:
        tx = holder.transaction()
        await tx.start()
        # The visit's insert share-locks its patient: it waits here.
        await holder.execute("SELECT 1 FROM users WHERE user_name = $1 FOR UPDATE", name)
        headers = {"Idempotency-Key": f"fence-{name}"} if keyed else None
        post = asyncio.ensure_future(admin.call(
            "POST", f"/v1/users/{name}/visits",
            {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z"}, headers=headers,
        ))  # fmt: skip
        await asyncio.sleep(1.5)  # well past the shortened deadline
        await tx.rollback()
        reply = await post
        stored = await holder.fetchval("SELECT count(*) FROM visits WHERE user_name = $1", name)
    finally:
        await holder.close()
    assert reply.status == 503 and reply.problem, reply.body
    assert stored == 0
    # Without the hold, the same write is made.
    monkeypatch.setattr(cache_module, "COMMIT_WITHIN", 10.0)
    assert (await admin.create_visit(name))["userName"] == name
