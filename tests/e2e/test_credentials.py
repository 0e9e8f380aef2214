"""Redis with credentials, as the manifests run it, and as the processes' settings reach it.

The production Redis container's own start-up script and readiness probe (from the rendered
prod overlay) run here against a real redis-server, with a password as the Secret gives it;
the cache client of the FE servers and gateways connects with the settings' user and
password, and nothing gets in without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from deploy.k8s import kustomize
from deploy.localstack import Stack
from deploy.localstack.ports import free_port
from deploy.localstack.redis_server import ACL_USER, MAXMEMORY_POLICY
from shared.cache import ReadCache
from shared.settings import FESettings, redis_credentials

pytestmark = pytest.mark.timeout(120)
K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _redis_container() -> dict:
    objs = kustomize.build(K8S / "overlays" / "prod")
    sts = next(
        o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "redis-shard-0"
    )
    return sts["spec"]["template"]["spec"]["containers"][0]


@contextlib.asynccontextmanager
async def production_redis(tmp_path: Path, password: str) -> AsyncIterator[tuple[int, list[str]]]:
    """The container's command, on a free port with its data folder under ``tmp_path``."""
    container = _redis_container()
    port = free_port()
    shell, flag, script = container["command"]
    assert (shell, flag) == ("sh", "-c")
    assert "$REDIS_PASSWORD" in script and password not in script
    script = script.replace("/data", str(tmp_path)).replace(
        "--protected-mode no", f"--protected-mode no --port {port} --bind 127.0.0.1"
    )
    probe = container["readinessProbe"]["exec"]["command"]
    probe = [*probe[:-1], probe[-1].replace("redis-cli", f"redis-cli -p {port}")]
    env = {**os.environ, "REDIS_PASSWORD": password}
    proc = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        script,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(100):
            check = await asyncio.create_subprocess_exec(*probe, env=env)
            if await check.wait() == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the production Redis never passed its readiness probe")
        yield port, probe
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()


async def test_production_redis_admits_only_the_processes_acl_user(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(24)
    async with production_redis(tmp_path, password) as (port, probe):
        url = f"redis://127.0.0.1:{port}/0"
        # The settings the FE servers and gateways read (MEDSVC_REDIS_*), as the pods get them.
        settings = FESettings(redis_username=ACL_USER, redis_password=password)
        cache = ReadCache(url, 0, **redis_credentials(settings))
        try:
            await cache.ping()  # the cache's own connection is admitted with them
        finally:
            await cache.close()
        # What that ACL user may do, through a client made with the same credentials.
        client = aioredis.Redis.from_url(url, **redis_credentials(settings))
        try:
            await client.hset("u:alice", "f", b"v")
            assert await client.hget("u:alice", "f") == b"v"
            await client.flushdb()  # the recovery flush is allowed
            with pytest.raises(NoPermissionError):
                await client.config_get("maxmemory")
        finally:
            await client.aclose()
        # No credentials, the default user, or a wrong password: refused.
        for kwargs in ({}, {"password": password}, {"username": ACL_USER, "password": "wrong"}):
            client = aioredis.Redis.from_url(url, **kwargs)
            try:
                with pytest.raises((AuthenticationError, ResponseError)):
                    await client.set("k", "v")
            finally:
                await client.aclose()
        # The probe fails with a wrong password.
        bad = await asyncio.create_subprocess_exec(
            *probe, env={**os.environ, "REDIS_PASSWORD": "x"}
        )
        assert await bad.wait() != 0
        # The password is in no process's arguments, and the ACL file is the owner's alone.
        assert (tmp_path / "users.acl").stat().st_mode & 0o077 == 0
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                with contextlib.suppress(OSError):
                    assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_every_cache_is_bounded_with_an_eviction_policy(stack: Stack) -> None:
    for server in stack.redis.values():
        client = aioredis.Redis.from_url(server.url)
        try:
            config = await client.config_get("maxmemory*")
        finally:
            await client.aclose()
        assert int(config["maxmemory"]) > 0, server.name
        assert config["maxmemory-policy"] == MAXMEMORY_POLICY
    script = _redis_container()["command"][2]
    assert f"--maxmemory-policy {MAXMEMORY_POLICY}" in script and "--maxmemory " in script


async def test_a_shard_database_has_an_owner_and_a_read_only_role_of_its_own(
    stack: Stack,
) -> None:
    """The shard database's init script from the manifests, run by a superuser on a fresh
    database: the FE servers' migrations run as the owner it makes (not a superuser), the
    anonymizer's shard pools, configured as in production, read as the read-only role it
    makes, and that role can write nothing."""
    import asyncpg

    from anonymizer.settings import AnonymizerSettings
    from anonymizer.shards import ShardPools
    from deploy.k8s.workloads import shard_roles_init
    from deploy.localstack.binaries import pg_bin
    from fe_server.app import migration_sets
    from shared.dbsetup import dsn_with
    from shared.migrate import apply_migrations
    from shared.shardmap import ShardMap

    tag = secrets.token_hex(4)
    owner, reader, database = f"fe_{tag}", f"reader_{tag}", f"shard_{tag}"
    server = stack.postgres[0]
    admin = await asyncpg.connect(server.dsn)  # the local clusters' superuser
    try:
        await admin.execute(f"CREATE DATABASE {database}")  # what POSTGRES_DB does
        env = {
            **os.environ,
            "PATH": f"{Path(pg_bin('postgres')).parent}:{os.environ['PATH']}",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(server.port),
            "POSTGRES_USER": "medsvc",
            "POSTGRES_DB": database,
            "SHARD_OWNER_PASSWORD": secrets.token_hex(16),
            "SHARD_READER_PASSWORD": secrets.token_hex(16),
        }
        run = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            shard_roles_init(owner, reader, database),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await run.communicate()
        assert run.returncode == 0, out.decode()

        # The FE servers' migrations, as the owner, as an FE server applies them.
        dsn = dsn_with(server.dsn, user=owner, database=database)
        conn = await asyncpg.connect(dsn)
        try:
            assert (
                await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                is False
            )
            assert await apply_migrations(conn, migration_sets(["user", "visit"]))
        finally:
            await conn.close()

        settings = AnonymizerSettings(
            central_dsn=stack.central_dsn,
            anonymizer_shard_user=reader,
            anonymizer_shard_password="unused-with-trust-auth",
        )
        shard_map = ShardMap.model_validate(
            {
                "buckets": 1,
                "shards": [
                    {
                        "id": 0,
                        "buckets": [[0, 0]],
                        "postgres": dsn,
                        "redis": None,
                        "members": {"user": ["http://127.0.0.1:1"]},
                    }
                ],
            }
        )
        password = settings.anonymizer_shard_password.get_secret_value()
        pools = ShardPools(shard_map, password, 2, user=settings.anonymizer_shard_user)
        try:
            pool = await pools.get(shard_map.shard(0))
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_user") == reader
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    assert await conn.fetchval("SELECT pg_current_snapshot()::text")
                    for table in ("users", "visits", "study_consents"):
                        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
                for statement in (
                    "DELETE FROM users",
                    "UPDATE visits SET type = type",
                    "INSERT INTO study_consents DEFAULT VALUES",
                    "CREATE TABLE nope (x int)",
                ):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(statement)
        finally:
            await pools.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        for role in (reader, owner):
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
