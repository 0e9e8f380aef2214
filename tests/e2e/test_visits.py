"""Visits through nginx: a clinician recording and correcting a patient's visits."""

from __future__ import annotations

import pytest

from tests.e2e.api import Api, unique


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


@pytest.fixture
def clinician(http, stack, token) -> Api:
    return Api(http, stack.base_url, token("dr.jones", "clinician"))


async def test_clinician_records_a_visit_and_reads_it_back(clinician: Api) -> None:
    patient = await clinician.create_patient()
    body = {
        "type": "outpatient",
        "startedAt": "2026-11-20T09:00:00Z",
        "endedAt": "2026-11-20T09:30:00Z",
        "reason": "follow-up",
        "diagnoses": [{"system": "ICD-10", "code": "E11.9", "display": "Type 2 diabetes mellitus"}],
        "vitals": {
            "heightCm": 168.0,
            "weightKg": 72.5,
            "systolic": 128,
            "diastolic": 82,
            "heartRate": 70,
            "temperatureC": 36.8,
        },
        "medications": [{"name": "metformin", "dose": "500 mg", "frequency": "twice daily"}],
        "notes": "free text",
    }
    created = await clinician.call("POST", f"/v1/users/{patient['userName']}/visits", body)
    assert created.status == 201, created.body
    visit = created.body
    assert visit["clinician"] == "dr.jones" and visit["version"] == 1
    assert (
        created.headers["Location"] == f"/v1/users/{patient['userName']}/visits/{visit['visitId']}"
    )
    for key, value in body.items():
        assert visit[key] == value, key
    read = await clinician.call("GET", created.headers["Location"])
    assert read.status == 200 and read.body == visit and read.headers["ETag"] == '"1"'


async def test_visit_for_unknown_patient_is_404(clinician: Api) -> None:
    reply = await clinician.call(
        "POST",
        "/v1/users/nobody.here/visits",
        {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z"},
    )
    assert reply.status == 404 and reply.problem


@pytest.mark.parametrize(
    "change",
    [
        {"type": "house-call"},
        {"endedAt": "2026-11-20T08:00:00Z"},
        {"vitals": {"heartRate": 400}},
        {"vitals": {"temperatureC": 20}},
        {"startedAt": "yesterday"},
        {"visitId": "mine"},
        {"colour": 1},
    ],
)
async def test_invalid_visit_is_422_and_nothing_is_stored(clinician: Api, change) -> None:
    patient = await clinician.create_patient()
    path = f"/v1/users/{patient['userName']}/visits"
    reply = await clinician.call(
        "POST", path, {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z"} | change
    )
    assert reply.status == 422 and reply.problem and reply.body["errors"]
    assert (await clinician.call("GET", path)).body["items"] == []


async def test_visit_list_is_newest_first_filtered_and_paged(clinician: Api) -> None:
    patient = await clinician.create_patient()
    path = f"/v1/users/{patient['userName']}/visits"
    days = [3, 1, 4, 5, 9, 2, 6]
    for d in days:
        await clinician.create_visit(patient["userName"], startedAt=f"2026-10-{d:02d}T10:00:00Z")
    seen, cursor = [], None
    while True:
        page = await clinician.call(
            "GET", path, params={"limit": "2"} | ({"cursor": cursor} if cursor else {})
        )
        assert page.status == 200
        seen += [v["startedAt"] for v in page.body["items"]]
        cursor = page.body["nextCursor"]
        if not cursor:
            break
    assert seen == [f"2026-10-{d:02d}T10:00:00Z" for d in sorted(days, reverse=True)]
    window = await clinician.call(
        "GET", path, params={"since": "2026-10-03T00:00:00Z", "until": "2026-10-06T00:00:00Z"}
    )
    assert [v["startedAt"][:10] for v in window.body["items"]] == [
        "2026-10-05",
        "2026-10-04",
        "2026-10-03",
    ]
    bad = await clinician.call("GET", path, params={"since": "last week"})
    assert bad.status == 400 and bad.problem


async def test_patch_visit_with_if_match(clinician: Api) -> None:
    patient = await clinician.create_patient()
    visit = await clinician.create_visit(
        patient["userName"], vitals={"heartRate": 70, "systolic": 120}
    )
    path = f"/v1/users/{patient['userName']}/visits/{visit['visitId']}"
    patched = await clinician.call(
        "PATCH", path, {"vitals": {"heartRate": 72}, "notes": "better"}, headers={"If-Match": '"1"'}
    )
    assert patched.status == 200, patched.body
    assert patched.body["vitals"] == {"heartRate": 72, "systolic": 120}
    assert patched.body["version"] == 2
    stale = await clinician.call("PATCH", path, {"notes": "worse"}, headers={"If-Match": '"1"'})
    assert stale.status == 412
    assert (await clinician.call("GET", path)).body == patched.body


async def test_unknown_visit_is_404(clinician: Api) -> None:
    patient = await clinician.create_patient()
    for vid in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        reply = await clinician.call("GET", f"/v1/users/{patient['userName']}/visits/{vid}")
        assert reply.status == 404 and reply.problem


async def test_a_visit_is_only_reachable_under_its_own_patient(clinician: Api) -> None:
    one, other = await clinician.create_patient(), await clinician.create_patient()
    visit = await clinician.create_visit(one["userName"])
    reply = await clinician.call("GET", f"/v1/users/{other['userName']}/visits/{visit['visitId']}")
    assert reply.status == 404


async def test_visits_are_recorded_for_patients_only(admin: Api) -> None:
    staff = unique("nurse")
    created = await admin.call(
        "POST",
        "/v1/users",
        {
            "userName": staff,
            "role": "clinician",
            "givenName": "N",
            "familyName": "Urse",
            "birthDate": "1985-01-01",
        },
    )
    assert created.status == 201
    reply = await admin.call(
        "POST",
        f"/v1/users/{staff}/visits",
        {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z"},
    )
    assert reply.status == 422


@pytest.mark.parametrize("field", ["clinician", "type", "startedAt"])
async def test_patch_cannot_remove_a_required_field(clinician: Api, field) -> None:
    patient = await clinician.create_patient()
    visit = await clinician.create_visit(patient["userName"])
    path = f"/v1/users/{patient['userName']}/visits/{visit['visitId']}"
    reply = await clinician.call("PATCH", path, {field: None})
    assert reply.status == 422 and reply.problem
    assert [e["field"] for e in reply.body["errors"]] == [field]
    assert (await clinician.call("GET", path)).body == visit
