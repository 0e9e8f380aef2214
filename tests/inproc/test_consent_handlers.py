"""Study consents in process: give, withdraw and list, against a real study registry server.

The registry (the anonymizer's ``GET /internal/studies/{studyId}``) is faked by a real aiohttp
server on a free port that knows two studies, as the FE server would reach the anonymizer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from fe_server.app import create_app
from shared.settings import FESettings
from tests.e2e.api import Api
from tests.inproc.conftest import SECRET, callers, one_shard_map, served
from tests.inproc.test_entities import shaped
from user_service.models import Consent

STUDIES = {"asthma-2026", "diabetes-2026"}


async def _registry_study(request: web.Request) -> web.Response:
    if request.match_info["studyId"] in STUDIES:
        return web.json_response({"studyId": request.match_info["studyId"]})
    return web.json_response({"status": 404}, status=404)


@pytest_asyncio.fixture(loop_scope="session")
async def registry() -> AsyncIterator[str]:
    """A real HTTP server answering the study registry's existence check."""
    app = web.Application()
    app.router.add_get("/internal/studies/{studyId}", _registry_study)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest_asyncio.fixture(loop_scope="session")
async def consent_fe(shard_db: str, registry: str) -> AsyncIterator[TestClient]:
    settings = FESettings(shard=0, services="user,visit", cache=False, jwt_secret=SECRET,
                          pg_pool_min=1, pg_pool_max=4, anonymizer_urls=registry)  # fmt: skip
    async with served(create_app(settings, one_shard_map(shard_db))) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def caller(consent_fe: TestClient) -> Callable[[str, str], Api]:
    return callers(consent_fe)


async def test_a_patient_lists_the_studies_in_force_in_study_order(
    caller: Callable[[str, str], Api],
) -> None:
    admin = caller("admin", "admin")
    patient = await admin.create_patient()
    name = patient["userName"]
    me = caller(name, "patient")
    assert (await me.call("GET", f"/v1/users/{name}/studies")).body == {
        "items": [], "nextCursor": None,
    }  # fmt: skip
    given = {}
    for study in ("diabetes-2026", "asthma-2026"):
        reply = await me.call("PUT", f"/v1/users/{name}/studies/{study}")
        assert reply.status == 200, reply.body
        given[study] = reply.body["consentedAt"]
    listed = await me.call("GET", f"/v1/users/{name}/studies")
    assert listed.status == 200, listed.body
    assert listed.body == {
        "items": [
            {"studyId": "asthma-2026", "consentedAt": given["asthma-2026"]},
            {"studyId": "diabetes-2026", "consentedAt": given["diabetes-2026"]},
        ],
        "nextCursor": None,
    }
    dt.datetime.fromisoformat(listed.body["items"][0]["consentedAt"])

    assert (await me.call("DELETE", f"/v1/users/{name}/studies/asthma-2026")).status == 204
    after = await me.call("GET", f"/v1/users/{name}/studies")
    assert [i["studyId"] for i in after.body["items"]] == ["diabetes-2026"]


async def test_who_may_list_a_patients_studies(caller: Callable[[str, str], Api]) -> None:
    admin = caller("admin", "admin")
    patient = (await admin.create_patient())["userName"]
    await caller(patient, "patient").call("PUT", f"/v1/users/{patient}/studies/diabetes-2026")
    path = f"/v1/users/{patient}/studies"
    for who, role in ((patient, "patient"), ("dr.who", "clinician"), ("admin", "admin")):
        reply = await caller(who, role).call("GET", path)
        assert reply.status == 200, (role, reply.body)
        assert [i["studyId"] for i in reply.body["items"]] == ["diabetes-2026"]
    for who, role in (("someone.else", "patient"), ("rita", "researcher"), ("aud", "auditor")):
        reply = await caller(who, role).call("GET", path)
        assert reply.status == 403 and reply.problem, (role, reply.body)
    # A clinician cares for patients only: another clinician's studies are not theirs to read.
    colleague = f"dr.{patient}"
    created = await admin.call("POST", "/v1/users", {
        "userName": colleague, "role": "clinician", "givenName": "C", "familyName": "D",
        "birthDate": "1970-01-01", "sex": "other",
    })  # fmt: skip
    assert created.status == 201, created.body
    denied = await caller("dr.who", "clinician").call("GET", f"/v1/users/{colleague}/studies")
    assert denied.status == 403 and denied.problem


async def test_the_studies_of_no_one_are_404(caller: Callable[[str, str], Api]) -> None:
    reply = await caller("admin", "admin").call("GET", "/v1/users/nobody.here/studies")
    assert reply.status == 404 and reply.problem


async def test_a_consents_audit_event_shows_it_as_the_api_does(
    caller: Callable[[str, str], Api], shard_db: str
) -> None:
    admin = caller("admin", "admin")
    name = (await admin.create_patient())["userName"]
    me = caller(name, "patient")
    given = await me.call("PUT", f"/v1/users/{name}/studies/asthma-2026")
    assert given.status == 200, given.body
    assert list(given.body) == list(Consent.model_fields)
    assert (await me.call("DELETE", f"/v1/users/{name}/studies/asthma-2026")).status == 204
    again = await me.call("PUT", f"/v1/users/{name}/studies/asthma-2026")
    assert again.body["status"] == "consented" and again.body["version"] == 3
    events = await shaped(shard_db, "study_consent")
    assert [events[0], events[2]] == [given.body, again.body]
    assert (events[1]["status"], events[1]["version"]) == ("withdrawn", 2)
