"""The anonymizer's studies API in process, against a real PostgreSQL.

Each test gets a fresh study registry (a copy of a template migrated once per session) and a
fresh shard database (the FE template), and the app built by the same ``create_app`` and
settings parser as production, served on a real socket.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from anonymizer.app import create_app
from anonymizer.settings import AnonymizerSettings
from deploy.localstack.postgres import PostgresServer
from shared.auth import make_token
from shared.shardmap import DEFAULT_BUCKETS, Shard, ShardMap
from tests.e2e.api import Api
from tests.inproc.conftest import SECRET, database_from


@pytest_asyncio.fixture(loop_scope="session")
async def anonymizer(
    pg: PostgresServer, registry_template: str, shard_db: str
) -> AsyncIterator[TestClient]:
    async with database_from(pg, registry_template, "registry") as dsn:
        shard_map = ShardMap(
            buckets=DEFAULT_BUCKETS,
            shards=[Shard(id=0, buckets=[(0, DEFAULT_BUCKETS - 1)], postgres=shard_db)],
        )
        settings = AnonymizerSettings(anonymizer_dsn=dsn, jwt_secret=SECRET,
                                      pg_pool_min=1, pg_pool_max=4)  # fmt: skip
        client = TestClient(TestServer(create_app(settings, shard_map, role="api")))
        await client.start_server()
        try:
            yield client
        finally:
            await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def as_role(anonymizer: TestClient) -> Callable[[str, str], Api]:
    def make(sub: str, role: str) -> Api:
        base = str(anonymizer.make_url("")).rstrip("/")
        return Api(anonymizer.session, base, make_token(SECRET, sub, [role]))

    return make


async def test_a_study_is_registered_once_and_listed(as_role: Callable[[str, str], Api]) -> None:
    rita = as_role("rita", "researcher")
    created = await rita.call("POST", "/v1/studies", {"studyId": "asthma-2026", "title": "A"})
    assert created.status == 201, created.body
    assert created.headers["Location"] == "/v1/studies/asthma-2026"
    assert (created.body["participantCount"], created.body["createdBy"]) == (0, "rita")
    again = await rita.call("POST", "/v1/studies", {"studyId": "asthma-2026", "title": "B"})
    assert again.status == 409 and again.problem
    read = await rita.call("GET", "/v1/studies/asthma-2026")
    assert (read.status, read.body["title"]) == (200, "A")
    listed = await rita.call("GET", "/v1/studies")
    assert [s["studyId"] for s in listed.body["items"]] == ["asthma-2026"]
    assert (await rita.call("GET", "/v1/studies/nothing-here")).status == 404


async def test_bad_studies_and_wrong_roles_are_refused_and_change_nothing(
    as_role: Callable[[str, str], Api],
) -> None:
    rita = as_role("rita", "researcher")
    bad = await rita.call(
        "POST", "/v1/studies", {"studyId": "x-1", "title": "t", "schedule": "every day"}
    )
    assert bad.status == 422 and bad.problem
    for sub, role in (("alice", "patient"), ("dr.who", "clinician"), ("aud", "auditor")):
        reply = await as_role(sub, role).call(
            "POST", "/v1/studies", {"studyId": "y-1", "title": "t"}
        )
        assert reply.status == 403 and reply.problem, role
    assert (await rita.call("GET", "/v1/studies")).body["items"] == []


async def test_a_run_of_an_empty_shard_succeeds_with_a_verifiable_download(
    as_role: Callable[[str, str], Api],
) -> None:
    rita = as_role("rita", "researcher")
    assert (
        await rita.call("POST", "/v1/studies", {"studyId": "empty-1", "title": "t"})
    ).status == 201
    started = await rita.call("POST", "/v1/studies/empty-1/runs")
    assert started.status == 202, started.body
    location = started.headers["Location"]
    run = started.body
    for _ in range(200):
        if run["status"] != "running":
            break
        await asyncio.sleep(0.05)
        run = (await rita.call("GET", location)).body
    assert run["status"] == "succeeded", run
    records = await rita.http.get(
        f"{rita.base_url}{location}/records", headers={"Authorization": f"Bearer {rita.token}"}
    )
    async with records:
        body = await records.read()
        assert records.status == 200
    assert hashlib.sha256(body).hexdigest() == run["manifest"]["recordsSha256"]
    assert len(body) == run["manifest"]["recordsBytes"]
