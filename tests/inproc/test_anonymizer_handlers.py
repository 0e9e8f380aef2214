"""The anonymizer's studies API in process, against a real PostgreSQL.

Each test gets a fresh study registry (a copy of a template migrated once per session) and a
fresh shard database (the FE template), and the app built by the same ``create_app`` and
settings parser as production, served on a real socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest_asyncio
from aiohttp.test_utils import TestClient

from anonymizer.app import create_app
from anonymizer.settings import AnonymizerSettings
from deploy.localstack.postgres import PostgresServer
from tests.e2e.api import Api
from tests.inproc.conftest import SECRET, callers, database_from, one_shard_map, served


@pytest_asyncio.fixture(loop_scope="session")
async def anonymizer(
    pg: PostgresServer, registry_template: str, shard_db: str
) -> AsyncIterator[TestClient]:
    async with database_from(pg, registry_template, "registry") as dsn:
        settings = AnonymizerSettings(anonymizer_dsn=dsn, jwt_secret=SECRET,
                                      pg_pool_min=1, pg_pool_max=4)  # fmt: skip
        async with served(create_app(settings, one_shard_map(shard_db), role="api")) as client:
            yield client


@pytest_asyncio.fixture(loop_scope="session")
async def as_role(anonymizer: TestClient) -> Callable[[str, str], Api]:
    return callers(anonymizer)


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


INSTANT = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z"
RUN_KEYS = ["runId", "studyId", "status", "trigger", "requestedBy", "startedAt", "finishedAt",
            "policyVersion", "counts", "kAnonymity"]  # fmt: skip


async def _raw(
    api: Api, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    hdrs = {"Authorization": f"Bearer {api.token}"} | (headers or {})
    body = b'{"studyId":"wire-1","title":"Wire"}' if path == "/v1/studies" else None
    if body is not None:
        hdrs["Content-Type"] = "application/json"
    async with api.http.request(method, api.base_url + path, data=body, headers=hdrs) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_study_and_run_replies_are_the_pinned_wire_form(
    as_role: Callable[[str, str], Api],
) -> None:
    """The bytes a client gets (tests/unit/test_entities.py pins them from rows): field order,
    nulls written, a run's manifest and error absent until it has them, instants in UTC with Z;
    a repeated Idempotency-Key gets the same bytes."""
    rita = as_role("rita", "researcher")
    key = {"Idempotency-Key": "wire-study-1"}
    status, headers, created = await _raw(rita, "POST", "/v1/studies", key)
    assert (status, headers["Location"]) == (201, "/v1/studies/wire-1"), created
    assert re.fullmatch(
        rb'\{"studyId":"wire-1","title":"Wire","schedule":null,"k":null,"createdBy":"rita",'
        rb'"createdAt":"' + INSTANT + rb'","participantCount":0,"lastRun":null,'
        rb'"lastSuccessfulRunAt":null\}',
        created,
    ), created
    assert (await _raw(rita, "POST", "/v1/studies", key))[::2] == (201, created)

    status, headers, started = await _raw(rita, "POST", "/v1/studies/wire-1/runs")
    run = orjson.loads(started)
    assert status == 202 and list(run) == RUN_KEYS, started
    assert headers["Location"] == f"/v1/studies/wire-1/runs/{run['runId']}"
    assert re.fullmatch(INSTANT, run["startedAt"].encode()) and run["finishedAt"] is None
    for _ in range(200):
        status, _, done = await _raw(rita, "GET", headers["Location"])
        if orjson.loads(done)["status"] != "running":
            break
        await asyncio.sleep(0.05)
    run = orjson.loads(done)
    assert (status, run["status"], list(run)) == (200, "succeeded", [*RUN_KEYS, "manifest"])
    assert re.fullmatch(INSTANT, run["finishedAt"].encode())
    assert orjson.dumps(run) == done  # compact: the parsed body re-encodes to the same bytes

    _, _, study = await _raw(rita, "GET", "/v1/studies/wire-1")
    assert study == created.replace(b'"lastRun":null', b'"lastRun":' + done).replace(
        b'"lastSuccessfulRunAt":null',
        b'"lastSuccessfulRunAt":"' + run["finishedAt"].encode() + b'"',
    )
    _, _, runs = await _raw(rita, "GET", "/v1/studies/wire-1/runs")
    assert runs == b'{"items":[' + done + b'],"nextCursor":null}'
    _, _, studies = await _raw(rita, "GET", "/v1/studies")
    summary = created[: created.index(b',"participantCount"')] + b"}"
    assert studies == b'{"items":[' + summary + b'],"nextCursor":null}'
