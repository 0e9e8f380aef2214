"""audit_service and the anonymizer shed past their bound of requests in flight, like every tier.

Each app is built by its own ``create_app`` with a bound of one request in flight. One POST
whose body never finishes holds that place (the admission middleware counts a request from
its headers, before its body is read); the next request is shed at once: 503, Retry-After,
a problem body. When the held request ends, the next one is served again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp.test_utils import TestClient
from aiohttp.web import Application

from anonymizer.app import create_app as create_anonymizer
from anonymizer.settings import AnonymizerSettings
from audit_service.app import create_app as create_audit
from audit_service.settings import AuditSettings
from deploy.localstack.postgres import PostgresServer
from shared.auth import make_token
from tests.inproc.conftest import SECRET, database_from, one_shard_map, served


async def _held_body(release: asyncio.Event) -> AsyncIterator[bytes]:
    yield b"["
    await release.wait()
    yield b"]"


async def _sheds_past_one_in_flight(app: Application, held_path: str, probe_path: str) -> None:
    async with served(app) as client:
        await _shed_and_served_again(client, held_path, probe_path)


async def _shed_and_served_again(client: TestClient, held_path: str, probe_path: str) -> None:
    headers = {"Authorization": "Bearer " + make_token(SECRET, "admin", ["admin"])}
    release = asyncio.Event()
    try:
        # Start the held request, and again while it was itself shed (a probe of the last
        # round still in flight); then it holds the one place until released.
        for _ in range(100):
            held = asyncio.create_task(client.post(
                held_path, data=_held_body(release),
                headers={**headers, "Content-Type": "application/json"},
            ))  # fmt: skip
            await asyncio.sleep(0.05)
            if held.done():
                assert held.result().status == 503, held.result().status
                continue
            probe = await client.get(probe_path, headers=headers)
            body = await probe.json(content_type=None)
            if probe.status == 503:
                break
        assert probe.status == 503, (probe.status, body)
        assert probe.headers["Retry-After"] == "1"
        assert probe.headers["Content-Type"].startswith("application/problem+json")
        assert body["status"] == 503 and "not" in body["detail"]
        release.set()
        done = await held
        assert done.status != 503
        again = await client.get(probe_path, headers=headers)
        assert again.status == 200, await again.text()
        # The operations endpoints are never shed.
        assert (await client.get("/healthz")).status == 200
    finally:
        release.set()


async def test_audit_service_sheds_past_its_bound(
    pg: PostgresServer,
    audit_template: str,
) -> None:
    async with database_from(pg, audit_template, "audit") as dsn:
        settings = AuditSettings(audit_dsn=dsn, jwt_secret=SECRET, pg_pool_min=1,
                                 pg_pool_max=2, max_in_flight=1)  # fmt: skip
        await _sheds_past_one_in_flight(
            create_audit(settings), "/internal/events/batch", "/v1/audit/events"
        )


async def test_anonymizer_sheds_past_its_bound(
    pg: PostgresServer,
    registry_template: str,
    shard_db: str,
) -> None:
    async with database_from(pg, registry_template, "registry") as dsn:
        settings = AnonymizerSettings(anonymizer_dsn=dsn, jwt_secret=SECRET, pg_pool_min=1,
                                      pg_pool_max=2, max_in_flight=1)  # fmt: skip
        app = create_anonymizer(settings, one_shard_map(shard_db), role="api")
        await _sheds_past_one_in_flight(app, "/v1/studies", "/v1/studies")
