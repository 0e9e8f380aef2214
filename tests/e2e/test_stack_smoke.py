"""The local stack as an operator sees it: it answers, it guards itself, it survives a loss.

Each test reads as a scenario: given the running stack, when I do this, then I see that.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from deploy.localstack import Stack
from deploy.localstack.nginx import NginxConfig, NginxServer
from deploy.localstack.ports import free_port

PROBLEM = "application/problem+json"

pytestmark = pytest.mark.timeout(180)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def problem_of(resp: aiohttp.ClientResponse, status: int) -> dict[str, object]:
    """Assert ``resp`` is an RFC 9457 problem with ``status`` and one X-Request-ID."""
    body = await resp.text()
    assert resp.status == status, body
    assert resp.headers.get("Content-Type", "").startswith(PROBLEM), resp.headers
    assert len(resp.headers.getall("X-Request-ID", [])) == 1, resp.headers
    doc: dict[str, object] = json.loads(body)
    assert doc["status"] == status
    assert doc["title"]
    return doc


async def test_nginx_answers_its_own_health_check_on_its_own_port(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.nginx.ops_url}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json(content_type=None) == {"status": "ok"}
    # The door passes the API only (tests/e2e/test_edge.py has the rest).
    async with http.get(f"{stack.base_url}/healthz") as resp:
        await problem_of(resp, 404)


async def test_every_process_is_up_and_healthy(stack: Stack, http: aiohttp.ClientSession) -> None:
    assert all(p.running for p in stack.processes()), list(stack.processes())
    services = [*stack.gateways, *(fe for fes in stack.fe.values() for fe in fes)]
    services += [p for procs in stack.services.values() for p in procs]
    for svc in services:
        async with http.get(f"{svc.url}/healthz") as resp:
            assert resp.status == 200, svc.name
    for pg in [*stack.postgres.values(), stack.central_postgres]:
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    for rd in stack.redis.values():
        client = aioredis.Redis.from_url(rd.url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    assert stack.shard_map_path.exists()
    assert [s.id for s in stack.shard_map.shards] == sorted(stack.postgres)


async def test_tls_port_serves_with_the_generated_certificate(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    ctx = ssl.create_default_context(cafile=str(stack.cert_path))
    async with http.get(f"{stack.https_url}/v1/openapi.json", ssl=ctx) as resp:
        assert resp.status == 200


async def test_request_without_token_is_401_problem(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    rid = f"smoke-{uuid.uuid4()}"
    async with http.get(
        f"{stack.base_url}/v1/users/alice.smith", headers={"X-Request-ID": rid}
    ) as resp:
        await problem_of(resp, 401)
        assert resp.headers["X-Request-ID"] == rid


async def test_body_over_one_mib_is_413_problem_from_nginx(
    stack: Stack, http: aiohttp.ClientSession, admin_token: str
) -> None:
    body = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    headers = {**auth(admin_token), "Content-Type": "application/json"}
    async with http.post(f"{stack.base_url}/v1/users", data=body, headers=headers) as resp:
        await problem_of(resp, 413)


async def test_a_request_line_nginx_cannot_parse_is_a_problem_not_an_html_500(
    stack: Stack, http: aiohttp.ClientSession, admin_token: str
) -> None:
    # Fuzzing found these: a request line too long (or malformed) has no URI, and nginx
    # answered its redirect to a named error location with its own HTML 500.
    long_query = "x" * 20_000
    url = f"{stack.base_url}/v1/audit/events?entityType={long_query}"
    async with http.get(url, headers=auth(admin_token)) as resp:
        await problem_of(resp, 414)
    async with http.get(f"{stack.base_url}/.problem/414") as resp:
        await problem_of(resp, 404)
    host, port = stack.base_url.removeprefix("http://").split(":")
    for line in (b"GARBAGE", b"GET /a b c HTTP/1.1", b"GET /\x00 HTTP/1.1"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(line + b"\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), (line, raw[:200])
        assert f"content-type: {PROBLEM}".encode() in head.lower(), (line, head)
        assert json.loads(body)["status"] == 400


async def test_hammered_low_rate_nginx_answers_429_problem(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # A second nginx over the same gateways, allowing one request a second (burst 1).
    cfg = NginxConfig(
        run_dir=stack.base_dir / "nginx-lowrate", logs_dir=stack.logs_dir, name="nginx-lowrate",
        http_port=free_port(), https_port=free_port(), ops_port=free_port(),
        cert=stack.cert_path, key=stack.key_path, gateways=stack.nginx.config.gateways,
        rate=1, burst=1,
    )  # fmt: skip
    lowrate = NginxServer(cfg)
    await lowrate.start()
    try:

        async def one() -> aiohttp.ClientResponse:
            async with http.get(f"{lowrate.base_url}/v1/users/alice.smith") as resp:
                await resp.read()
                return resp

        answers = await asyncio.gather(*(one() for _ in range(20)))
        limited = [r for r in answers if r.status == 429]
        assert limited, [r.status for r in answers]
        assert limited[0].headers.get("Content-Type", "").startswith(PROBLEM)
        assert limited[0].headers.get("Retry-After")
        async with http.get(f"{lowrate.base_url}/v1/users/alice.smith") as resp:
            doc = await problem_of(resp, 429)
            assert doc["detail"] == "rate limit exceeded"
    finally:
        await lowrate.stop()


async def test_reads_survive_a_killed_gateway(
    stack: Stack, http: aiohttp.ClientSession, admin_token: str
) -> None:
    user = f"smoke.{uuid.uuid4().hex[:12]}"
    new_user = {
        "userName": user, "role": "patient", "givenName": "Smoke", "familyName": "Test",
        "birthDate": "1980-04-02",
    }  # fmt: skip
    async with http.post(
        f"{stack.base_url}/v1/users", json=new_user, headers=auth(admin_token)
    ) as resp:
        assert resp.status == 201, await resp.text()

    victim = stack.gateways[0]
    victim.signal(signal.SIGKILL)
    await victim.wait()
    try:
        statuses = []
        for _ in range(20):
            async with http.get(
                f"{stack.base_url}/v1/users/{user}", headers=auth(admin_token)
            ) as resp:
                statuses.append(resp.status)
                if resp.status == 200:
                    assert (await resp.json())["userName"] == user
        assert statuses == [200] * 20, statuses
    finally:
        await victim.start()
    async with http.get(f"{victim.url}/healthz") as resp:
        assert resp.status == 200


# A supervisor that starts Redis, PostgreSQL and nginx, prints their pids and waits forever.
_SUPERVISOR = """
import asyncio, os, sys
from pathlib import Path
from deploy.localstack.certs import ensure_cert
from deploy.localstack.nginx import NginxConfig, NginxServer
from deploy.localstack.ports import free_port
from deploy.localstack.postgres import PostgresServer, server_account
from deploy.localstack.redis_server import RedisServer

async def main():
    base = Path(sys.argv[1])
    cert, key = await ensure_cert(base / "certs")
    procs = [
        RedisServer("redis", base / "redis", free_port(), base / "redis.log"),
        PostgresServer("pg", base / "pg", free_port(), base / "pg.log", fast=True,
                       account=server_account()),
        NginxServer(NginxConfig(run_dir=base / "nginx", http_port=free_port(),
                                https_port=free_port(), ops_port=free_port(), cert=cert, key=key,
                                gateways=[f"127.0.0.1:{free_port()}"], worker_processes=2)),
    ]
    for p in procs:
        await p.start()
    print(" ".join(str(p.pid) for p in procs), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _tree(pid: int) -> set[int]:
    """``pid`` and every process in its session (nginx workers, PostgreSQL backends)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == pid:  # field 6 of stat: the session id
                found.add(int(entry))
    return found


async def test_no_server_outlives_a_killed_supervisor() -> None:
    base = Path(tempfile.mkdtemp(prefix="medsvc-orphans-"))
    base.chmod(0o755)
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SUPERVISOR, str(base),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        assert supervisor.stdout is not None
        line = await asyncio.wait_for(supervisor.stdout.readline(), 60)
        pids = [int(p) for p in line.split()]
        assert len(pids) == 3, line
        children = set().union(*(_tree(p) for p in pids))
        assert len(children) > 3  # nginx workers and PostgreSQL backends too
    finally:
        supervisor.kill()
        await supervisor.wait()
    for _ in range(100):
        alive = {p for p in children if os.path.exists(f"/proc/{p}") and _state(p) != "Z"}
        if not alive:
            break
        await asyncio.sleep(0.1)
    assert not alive, f"still running after the supervisor died: {sorted(alive)}"
    await asyncio.to_thread(shutil.rmtree, base, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
