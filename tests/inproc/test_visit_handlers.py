"""visit_service's handlers in process: recording, reading and paging a patient's visits."""

from __future__ import annotations

from tests.e2e.api import Api


async def test_a_visit_is_recorded_read_and_patched(admin: Api) -> None:
    patient = await admin.create_patient()
    base = f"/v1/users/{patient['userName']}/visits"
    visit = await admin.create_visit(
        patient["userName"],
        endedAt="2026-11-20T09:30:00Z",
        diagnoses=[{"system": "ICD-10", "code": "E11.9", "display": "Type 2 diabetes"}],
        vitals={"heartRate": 70, "temperatureC": 36.8},
    )
    assert visit["version"] == 1 and visit["userName"] == patient["userName"]
    read = await admin.call("GET", f"{base}/{visit['visitId']}")
    assert (read.status, read.body) == (200, visit)
    patched = await admin.call(
        "PATCH", f"{base}/{visit['visitId']}", {"reason": "follow-up"}, headers={"If-Match": '"1"'}
    )
    assert patched.status == 200 and patched.body["version"] == 2


async def test_a_visit_for_a_missing_patient_is_404_and_stores_nothing(admin: Api) -> None:
    reply = await admin.call(
        "POST",
        "/v1/users/nobody.here/visits",
        {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z"},
    )
    assert reply.status == 404 and reply.problem


async def test_invalid_visits_are_422(admin: Api) -> None:
    patient = await admin.create_patient()
    base = f"/v1/users/{patient['userName']}/visits"
    for body in (
        {
            "type": "outpatient",
            "startedAt": "2026-11-20T09:00:00Z",
            "endedAt": "2026-11-20T08:00:00Z",
        },
        {"type": "walk-in", "startedAt": "2026-11-20T09:00:00Z"},
        {"type": "outpatient"},
        {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z", "vitals": {"heartRate": 400}},
        {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z", "visitId": "mine"},
    ):
        reply = await admin.call("POST", base, body)
        assert reply.status == 422 and reply.problem, (body, reply.body)
    listed = await admin.call("GET", base)
    assert listed.body["items"] == []


async def test_the_list_pages_newest_first_without_gaps_or_repeats(admin: Api) -> None:
    patient = await admin.create_patient()
    base = f"/v1/users/{patient['userName']}/visits"
    made = [
        await admin.create_visit(patient["userName"], startedAt=f"2026-11-{day:02d}T09:00:00Z")
        for day in range(1, 8)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await admin.call("GET", base, params=params)
        assert page.status == 200, page.body
        seen += [v["visitId"] for v in page.body["items"]]
        cursor = page.body["nextCursor"]
        if cursor is None:
            break
    expected = [v["visitId"] for v in sorted(made, key=lambda v: v["startedAt"], reverse=True)]
    assert seen == expected
    bad = await admin.call("GET", base, params={"cursor": "not-a-cursor"})
    assert bad.status == 400 and bad.problem


async def test_a_patient_reads_only_their_own_visits(admin: Api, as_role) -> None:
    patient = await admin.create_patient()
    other = await admin.create_patient()
    await admin.create_visit(patient["userName"])
    me = as_role(patient["userName"], "patient")
    assert (await me.call("GET", f"/v1/users/{patient['userName']}/visits")).status == 200
    assert (await me.call("GET", f"/v1/users/{other['userName']}/visits")).status == 403
    made = await me.call(
        "POST",
        f"/v1/users/{patient['userName']}/visits",
        {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z"},
    )
    assert made.status == 403
