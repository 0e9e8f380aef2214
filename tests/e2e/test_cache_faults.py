"""A write never answers success while any hop may still serve the old value.

Operator scenarios against the real stack: the shard's Redis paused (``CLIENT PAUSE``), and
one FE server cut off from Redis while every other hop still reaches it (the cut FE server
talks to Redis through a TCP proxy this test controls). Each time Redis becomes unreachable
either before the write (it must be refused and change nothing) or between the commit and
the invalidation (it may succeed, and no read after it may show the old value).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from deploy.localstack.ports import free_port
from deploy.localstack.service import ServiceProcess
from shared.cachekeys import user_group
from tests.e2e.api import Api, unique


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


async def patient_on_shard_0(admin: Api, stack) -> str:
    while True:
        user = await admin.create_patient(unique("fence"))
        if stack.shard_map.shard_id_for(user["userName"]) == 0:
            return user["userName"]


async def warm(admin: Api, name: str) -> int:
    """Read the user until it is served from the cache; its version."""
    for _ in range(3):
        version = (await admin.call("GET", f"/v1/users/{name}")).body["version"]
    return version


async def reads_through_every_hop(admin: Api, name: str, n: int = 12) -> set[int]:
    """The versions ``n`` reads through nginx saw (both gateways, both FE servers)."""
    replies = [await admin.call("GET", f"/v1/users/{name}") for _ in range(n)]
    assert {r.status for r in replies} == {200}
    return {r.body["version"] for r in replies}


async def db_version(stack, name: str) -> int:
    conn = await asyncpg.connect(stack.shard_map.shard(0).postgres)
    try:
        return await conn.fetchval("SELECT version FROM users WHERE user_name = $1", name)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def row_locked(stack, name: str) -> AsyncIterator[None]:
    """Hold the user's row lock: a PATCH waits inside its transaction, fence up, until exit."""
    conn = await asyncpg.connect(stack.shard_map.shard(0).postgres)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM users WHERE user_name = $1 FOR UPDATE", name)
            yield
    finally:
        await conn.close()


async def fence_up(redis_url: str, name: str) -> None:
    """Wait until a write's fence stands on the user's group."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        for _ in range(200):
            if await r.exists(f"{{{user_group(name)}}}:fence"):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the write never put up its fence")
    finally:
        await r.aclose()


async def pause_redis(redis_url: str, ms: int, mode: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.execute_command("CLIENT", "PAUSE", ms, mode)
    finally:
        await r.aclose()


async def unpause_redis(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.execute_command("CLIENT", "UNPAUSE")
    finally:
        await r.aclose()


@pytest.mark.parametrize("mode", ["WRITE", "ALL"])
async def test_a_write_while_redis_is_paused_is_refused_and_changes_nothing(
    admin: Api, stack, mode
) -> None:
    name = await patient_on_shard_0(admin, stack)
    before = await warm(admin, name)
    redis_url = stack.shard_map.shard(0).redis
    await pause_redis(redis_url, 4000, mode)
    try:
        patched = await admin.call("PATCH", f"/v1/users/{name}", {"phone": "+1 555 0001"})
        assert patched.status == 503 and patched.problem and patched.headers["Retry-After"]
        assert "nothing was changed" in patched.body["detail"]
        assert await db_version(stack, name) == before
        assert await reads_through_every_hop(admin, name, 4) == {before}
    finally:
        await unpause_redis(redis_url)


@pytest.mark.parametrize("mode", ["WRITE", "ALL"])
async def test_redis_paused_between_commit_and_invalidation_serves_nothing_stale(
    admin: Api, stack, mode
) -> None:
    name = await patient_on_shard_0(admin, stack)
    before = await warm(admin, name)
    redis_url = stack.shard_map.shard(0).redis
    async with row_locked(stack, name):
        write = asyncio.create_task(
            admin.call("PATCH", f"/v1/users/{name}", {"phone": "+1 555 0002"})
        )
        await fence_up(redis_url, name)
        await pause_redis(redis_url, 3000, mode)
    try:
        patched = await write
        assert patched.status == 200 and patched.body["version"] == before + 1
        # Paused still: the write could not empty the group after its commit.
        assert await reads_through_every_hop(admin, name) == {before + 1}
    finally:
        await unpause_redis(redis_url)
    assert await reads_through_every_hop(admin, name) == {before + 1}


class RedisCut:
    """A TCP proxy to Redis that the test can cut: in front of one FE server only."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.cut = False
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.links):
            w.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self.links.discard(w)
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.cut:  # cut: bytes vanish, as on a partitioned network
                writer.write(data)
                await writer.drain()


@pytest.fixture
async def cut_fe(stack, tmp_path) -> AsyncIterator[tuple[ServiceProcess, RedisCut]]:
    """A third FE server of shard 0 that reaches Redis only through a proxy the test cuts."""
    proxy = RedisCut(stack.shard_map.shard(0).redis)
    port = await proxy.start()
    doc = json.loads(stack.shard_map_path.read_text())
    for shard in doc["shards"]:
        if shard["id"] == 0:
            shard["redis"] = f"redis://127.0.0.1:{port}/0"
    shard_map = tmp_path / "shardmap.json"
    shard_map.write_text(json.dumps(doc))
    twin = stack.fe[0][0]  # started the same way as this FE server, but for the shard map
    env = dict(twin.env or {})
    env["MEDSVC_SHARD_MAP"] = str(shard_map)
    args = twin.argv[3 : twin.argv.index("--port")]
    fe = ServiceProcess(
        "fe-shard-0-cut",
        twin.module,
        free_port(),
        stack.logs_dir / "fe-shard-0-cut.log",
        args=args,
        env=env,
        cwd=twin.cwd,
    )
    await fe.start()
    try:
        yield fe, proxy
    finally:
        await fe.stop()
        await proxy.close()


async def test_an_fe_server_cut_from_redis_refuses_writes_it_cannot_fence(
    admin: Api, stack, http, cut_fe
) -> None:
    fe, proxy = cut_fe
    name = await patient_on_shard_0(admin, stack)
    before = await warm(admin, name)
    direct = Api(http, fe.url, admin.token)
    proxy.cut = True
    patched = await direct.call("PATCH", f"/v1/users/{name}", {"phone": "+1 555 0003"})
    assert patched.status == 503 and patched.problem
    assert await db_version(stack, name) == before
    assert await reads_through_every_hop(admin, name, 4) == {before}
    proxy.cut = False


async def test_an_fe_server_cut_from_redis_after_its_commit_leaves_nothing_stale(
    admin: Api, stack, http, cut_fe
) -> None:
    fe, proxy = cut_fe
    name = await patient_on_shard_0(admin, stack)
    before = await warm(admin, name)
    direct = Api(http, fe.url, admin.token)
    async with row_locked(stack, name):
        write = asyncio.create_task(
            direct.call("PATCH", f"/v1/users/{name}", {"phone": "+1 555 0004"})
        )
        await fence_up(stack.shard_map.shard(0).redis, name)
        proxy.cut = True
    patched = await write
    assert patched.status == 200 and patched.body["version"] == before + 1
    # Every other hop reaches Redis; none serves the version before the write.
    assert await reads_through_every_hop(admin, name) == {before + 1}
    assert await reads_through_every_hop(admin, name) == {before + 1}
    proxy.cut = False
