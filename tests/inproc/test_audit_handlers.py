"""audit_service's handlers in process, against a real PostgreSQL: a fresh audit database per test.

The audit schema is migrated once into a template database; each test's app is built by the
same ``create_app`` and settings parser as production and served on a real socket.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable

import pytest_asyncio
from aiohttp.test_utils import TestClient

from audit_service.app import create_app
from audit_service.settings import AuditSettings
from deploy.localstack.postgres import PostgresServer
from tests.e2e.api import Api
from tests.inproc.conftest import SECRET, callers, database_from, served


@pytest_asyncio.fixture(loop_scope="session")
async def audit(pg: PostgresServer, audit_template: str) -> AsyncIterator[TestClient]:
    """audit_service in process on a fresh copy of the template, dropped after the test."""
    async with database_from(pg, audit_template, "audit") as dsn:
        settings = AuditSettings(audit_dsn=dsn, jwt_secret=SECRET, pg_pool_min=1, pg_pool_max=4)
        async with served(create_app(settings)) as client:
            yield client


@pytest_asyncio.fixture(loop_scope="session")
async def as_role(audit: TestClient) -> Callable[[str, str], Api]:
    return callers(audit)


def _event(**fields: object) -> dict[str, object]:
    return {"entityType": "study", "entityId": "diabetes-2026", "action": "create", **fields}


async def test_an_event_is_recorded_once_and_read_back(as_role: Callable[[str, str], Api]) -> None:
    admin = as_role("admin", "admin")
    event_id = str(uuid.uuid4())
    first = await admin.call("POST", "/v1/audit/events", _event(eventId=event_id))
    assert first.status == 201, first.body
    assert first.headers["Location"] == f"/v1/audit/events/{event_id}"
    assert (first.body["eventId"], first.body["actor"]) == (event_id, "admin")
    again = await admin.call("POST", "/v1/audit/events", _event(eventId=event_id))
    assert (again.status, again.body) == (200, first.body)

    read = await admin.call("GET", f"/v1/audit/events/{event_id}")
    assert (read.status, read.body) == (200, first.body)
    listed = await admin.call("GET", "/v1/audit/events?entityId=diabetes-2026")
    assert [e["eventId"] for e in listed.body["items"]] == [event_id]
    verdict = await as_role("aud", "auditor").call("GET", "/v1/audit/verify")
    assert verdict.status == 200, verdict.body
    assert (verdict.body["ok"], verdict.body["checked"]) == (True, 1)


async def test_who_may_read_record_and_verify(as_role: Callable[[str, str], Api]) -> None:
    admin = as_role("admin", "admin")
    created = await admin.call(
        "POST", "/v1/audit/events", _event(entityType="user", entityId="alice.smith")
    )
    assert created.status == 201, created.body
    clinician, auditor = as_role("dr.who", "clinician"), as_role("aud", "auditor")
    assert (await auditor.call("GET", f"/v1/audit/events/{created.body['eventId']}")).status == 200
    # Not known to be a patient's: a clinician may not read it.
    denied = await clinician.call("GET", f"/v1/audit/events/{created.body['eventId']}")
    assert denied.status == 403 and denied.problem
    assert (await clinician.call("GET", "/v1/audit/events?entityId=alice.smith")).body[
        "items"
    ] == []
    assert (await clinician.call("GET", "/v1/audit/events?entityType=study")).status == 403
    assert (await clinician.call("GET", "/v1/audit/verify")).status == 403
    assert (await auditor.call("POST", "/v1/audit/events", _event())).status == 403
    assert (await as_role("rita", "researcher").call("GET", "/v1/audit/events")).status == 403
    # Nothing the refused calls tried was recorded.
    listed = await admin.call("GET", "/v1/audit/events")
    assert [e["eventId"] for e in listed.body["items"]] == [created.body["eventId"]]


async def test_bad_queries_and_bodies_are_problems_that_change_nothing(
    as_role: Callable[[str, str], Api],
) -> None:
    admin = as_role("admin", "admin")
    for query, status in (
        ("since=yesterday", 400),
        ("since=2026-01-01T00:00:00", 400),
        ("cursor=nope", 400),
        ("colour=blue", 422),
        ("limit=0", 400),
    ):
        reply = await admin.call("GET", f"/v1/audit/events?{query}")
        assert reply.status == status and reply.problem, (query, reply.body)
    bad = await admin.call("POST", "/v1/audit/events", {"entityType": "study"})
    assert bad.status == 422 and bad.problem
    assert {e["field"] for e in bad.body["errors"]} >= {"entityId", "action"}
    since = await admin.call("GET", "/v1/audit/events?since=2026-01-01T00:00:00%2B02:00")
    assert (since.status, since.body["items"]) == (200, [])


async def test_verdicts_and_proofs_are_the_pinned_wire_form(
    as_role: Callable[[str, str], Api],
) -> None:
    """The bytes of the verify, inclusion proof and consistency proof replies
    (tests/unit/test_entities.py pins them from their models): field order, and no
    ``firstBadSeq`` nor ``reason`` key in an intact chain's verdict."""
    admin, auditor = as_role("admin", "admin"), as_role("aud", "auditor")
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for event_id in ids:
        assert (
            await admin.call("POST", "/v1/audit/events", _event(eventId=event_id))
        ).status == 201

    async def raw(path: str) -> bytes:
        headers = {"Authorization": f"Bearer {auditor.token}"}
        async with auditor.http.get(auditor.base_url + path, headers=headers) as resp:
            assert resp.status == 200 and resp.content_type == "application/json", resp.status
            return await resp.read()

    assert await raw("/v1/audit/verify") == b'{"ok":true,"checked":3,"lastSeq":3}'
    hexes = rb'\["[0-9a-f]{64}"(,"[0-9a-f]{64}")*\]'
    path = await raw(f"/v1/audit/events/{ids[1]}/proof")
    assert re.fullmatch(rb'\{"leafIndex":1,"treeSize":3,"auditPath":' + hexes + rb"\}", path)
    proof = await raw("/v1/audit/consistency?from=2&to=3")
    assert re.fullmatch(rb'\{"from":2,"to":3,"proof":' + hexes + rb"\}", proof), proof
