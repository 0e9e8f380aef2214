"""Research extracts through nginx: a researcher registers a study, patients consent, runs
extract de-identified, incremental records.

The stack runs with the local pseudonym master key, so the tests can compute the expected
pseudonyms (tests/e2e/studies_client.py ``keys``); a real deployment's key never leaves it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import pytest

from tests.e2e.api import Api
from tests.e2e.studies_client import (
    Researcher,
    by_kind,
    consent,
    keys,
    patient_on_shard,
    study_id,
    withdraw,
)


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


@pytest.fixture
def clinician(http, stack, token) -> Api:
    return Api(http, stack.base_url, token("dr.hibbert", "clinician"))


@pytest.fixture
def researcher(http, stack, token) -> Researcher:
    return Researcher(Api(http, stack.base_url, token("rita.research", "researcher")))


# Every one of these is planted in the source data and must appear nowhere in any output.
def planted(i: int) -> dict:
    return {
        "givenName": f"Zebediah{i}x", "familyName": f"Quackenbush{i}x",
        "email": f"zeb{i}@quack-mail.example", "phone": f"+1-555-01{i:02d}",
        "address": {"line": f"{700 + i} Evergreen Terrace", "city": f"Shelbyville{i}x",
                    "region": "IL", "postalCode": f"6270{i}", "country": "US"},
        "birthDate": f"1980-04-{10 + i:02d}", "sex": "female",
    }  # fmt: skip


def visit_body(i: int, n: int) -> dict:
    return {
        "type": "outpatient", "startedAt": f"2025-03-{10 + n:02d}T09:1{i}:00Z",
        "endedAt": f"2025-03-{10 + n:02d}T09:5{i}:00Z", "reason": f"checkup of Zebediah{i}x",
        "clinician": "dr.hibbert",
        "diagnoses": [{"system": "ICD-10", "code": "E11.9", "display": "Diabetes of Quackenbush"}],
        "vitals": {"heartRate": 70 + n, "systolic": 120},
        "medications": [
            {"name": "metformin", "dose": "500 mg", "frequency": "twice daily"},
            {"name": "Zebediah's tablets", "dose": "1", "system": "RxNorm", "code": "860975"},
        ],
        "notes": f"secret note {i}-{n}: lives with cat Mr Whiskers",
    }  # fmt: skip


async def test_first_run_emits_exactly_the_consented_patients_and_nothing_identifying(
    admin: Api, clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study()
    patients = [
        await patient_on_shard(clinician, stack, shard, **planted(i))
        for i, shard in enumerate((0, 1, 0))
    ]
    visits: dict[str, list[dict]] = {}
    for i, p in enumerate(patients):
        visits[p["userName"]] = [
            await clinician.create_visit(p["userName"], **visit_body(i, n)) for n in range(i + 2)
        ]
    a, b, c = (p["userName"] for p in patients)  # a on shard 0, b on shard 1; c never consents
    await consent(clinician, a, study)
    await consent(Api(admin.http, admin.base_url, stack.token(b, "patient")), b, study)

    shown = await researcher.api.call("GET", f"/v1/studies/{study}")
    assert (
        shown.status == 200
        and shown.body["participantCount"] == 2
        and shown.body["lastRun"] is None
    )

    run, records = await researcher.run(study)
    assert run["counts"] == {"participant": 2, "visit": 5, "withdrawal": 0}
    assert run["policyVersion"] and run["finishedAt"] and run["kAnonymity"]["participants"] == 2
    k = keys(study)
    kinds = by_kind(records)
    assert sorted(r["pid"] for r in kinds["participant"]) == sorted([k.pid(a), k.pid(b)])
    assert sorted(r["vid"] for r in kinds["visit"]) == sorted(
        k.vid(v["visitId"]) for u in (a, b) for v in visits[u]
    )
    assert kinds["withdrawal"] == []
    by_pid = {r["pid"]: r for r in kinds["participant"]}
    assert by_pid[k.pid(a)] == {
        "kind": "participant",
        "pid": k.pid(a),
        "birthYear": 1980,
        "sex": "female",
        "zip3": "627",
        "country": "US",
    }
    one = next(r for r in kinds["visit"] if r["vid"] == k.vid(visits[a][0]["visitId"]))
    assert one == {
        "kind": "visit",
        "pid": k.pid(a),
        "vid": one["vid"],
        "year": 2025,
        "type": "outpatient",
        "durationMinutes": 40,
        "diagnoses": [{"system": "ICD-10", "code": "E11.9"}],
        "vitals": {"heartRate": 70, "systolic": 120},
        "medications": [{"system": "RxNorm", "code": "860975"}],
    }
    assert run["manifest"]["leftOut"]["uncodedMedication"] == 5

    raw, _ = await researcher.records(study, run["runId"])
    text = raw.decode()
    for r in records:  # pseudonyms are hex: blank them so they cannot match by chance
        text = text.replace(r["pid"], "<pid>").replace(r.get("vid", "<none>"), "<vid>")
    forbidden = [
        a,
        b,
        c,
        "dr.hibbert",
        "Whiskers",
        "secret note",
        "Zebediah",
        "Quackenbush",
        "quack-mail",
        "555-01",
        "Evergreen",
        "Shelbyville",
        "62700",
        "62701",
        "62702",
        "Diabetes of",
        "twice daily",
        "500 mg",
        "09:1",
        "T09",
        "metformin",
        "tablets",
    ]
    forbidden += [v["visitId"] for vs in visits.values() for v in vs]
    for value in forbidden:
        assert value not in text, value
    assert not re.search(r"\d{4}-\d{2}-\d{2}", text), "an exact date leaked"

    shown = await researcher.api.call("GET", f"/v1/studies/{study}")
    assert shown.body["lastRun"]["runId"] == run["runId"] and shown.body["lastSuccessfulRunAt"]


async def test_an_unchanged_study_yields_nothing_and_a_change_yields_exactly_it(
    clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study()
    p = await patient_on_shard(
        clinician, stack, 1, address={"postalCode": "62701", "country": "US"}
    )
    v1 = await clinician.create_visit(p["userName"], medications=[{"name": "aspirin"}])
    v2 = await clinician.create_visit(p["userName"])
    await consent(clinician, p["userName"], study)
    first, _ = await researcher.run(study)
    assert first["counts"] == {"participant": 1, "visit": 2, "withdrawal": 0}

    again, records = await researcher.run(study)
    assert records == [] and again["counts"] == {"participant": 0, "visit": 0, "withdrawal": 0}

    patched = await clinician.call(
        "PATCH",
        f"/v1/users/{p['userName']}/visits/{v2['visitId']}",
        {"medications": [{"name": "insulin", "system": "ATC", "code": "A10AB01"}]},
    )
    assert patched.status == 200
    _, records = await researcher.run(study)
    k = keys(study)
    assert [(r["kind"], r["vid"], r["medications"]) for r in records] == [
        ("visit", k.vid(v2["visitId"]), [{"system": "ATC", "code": "A10AB01"}])
    ]
    assert k.vid(v1["visitId"]) != k.vid(v2["visitId"])

    # A move into a restricted three-digit ZIP area: the participant again, zip3 "000".
    moved = await clinician.call(
        "PATCH", f"/v1/users/{p['userName']}", {"address": {"postalCode": "03601"}}
    )
    assert moved.status == 200
    _, records = await researcher.run(study)
    assert records == [
        {
            "kind": "participant",
            "pid": k.pid(p["userName"]),
            "birthYear": 1980,
            "sex": "unknown",
            "zip3": "000",
            "country": "US",
        }
    ]

    runs = await researcher.api.call("GET", f"/v1/studies/{study}/runs")
    assert runs.status == 200 and len(runs.body["items"]) == 4
    started = [r["startedAt"] for r in runs.body["items"]]
    assert (
        started == sorted(started, reverse=True)
        and runs.body["items"][-1]["runId"] == first["runId"]
    )
    page = await researcher.api.call("GET", f"/v1/studies/{study}/runs", params={"limit": "3"})
    rest = await researcher.api.call(
        "GET", f"/v1/studies/{study}/runs", params={"limit": "3", "cursor": page.body["nextCursor"]}
    )
    assert [r["runId"] for r in page.body["items"] + rest.body["items"]] == [
        r["runId"] for r in runs.body["items"]
    ] and rest.body["nextCursor"] is None


async def test_a_late_joiner_gets_their_history_and_a_withdrawal_is_said_once(
    clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study()
    early = await patient_on_shard(clinician, stack, 0)
    late = await patient_on_shard(clinician, stack, 1)
    await clinician.create_visit(early["userName"])
    old_visits = [await clinician.create_visit(late["userName"]) for _ in range(3)]
    await consent(clinician, early["userName"], study)
    first, _ = await researcher.run(study)
    assert first["counts"]["participant"] == 1

    await consent(clinician, late["userName"], study)
    await consent(clinician, late["userName"], study)  # idempotent
    _, records = await researcher.run(study)
    k = keys(study)
    assert sorted((r["kind"], r.get("vid")) for r in records) == sorted(
        [("participant", None)] + [("visit", k.vid(v["visitId"])) for v in old_visits]
    )
    assert {r["pid"] for r in records} == {k.pid(late["userName"])}

    await withdraw(clinician, late["userName"], study)
    await withdraw(clinician, late["userName"], study)  # idempotent
    await clinician.create_visit(late["userName"])  # after the withdrawal: never extracted
    _, records = await researcher.run(study)
    assert records == [{"kind": "withdrawal", "pid": k.pid(late["userName"])}]
    await clinician.create_visit(late["userName"])
    _, records = await researcher.run(study)
    assert records == []
    count = await researcher.api.call("GET", f"/v1/studies/{study}")
    assert count.body["participantCount"] == 1


async def test_pseudonyms_are_stable_in_a_study_and_unlinkable_across_studies(
    clinician: Api, researcher: Researcher, stack
) -> None:
    one, two = await researcher.create_study(), await researcher.create_study()
    # 90 or older this year, in a restricted three-digit ZIP area.
    born = dt.date.today().year - 95
    p = await patient_on_shard(
        clinician,
        stack,
        0,
        birthDate=f"{born}-06-01",
        sex="male",
        address={"postalCode": "82301", "country": "US"},
    )
    visit = await clinician.create_visit(p["userName"])
    for study in (one, two):
        await consent(clinician, p["userName"], study)
    _, in_one = await researcher.run(one)
    _, in_two = await researcher.run(two)
    part_one, part_two = by_kind(in_one)["participant"][0], by_kind(in_two)["participant"][0]
    assert part_one["pid"] != part_two["pid"]
    assert by_kind(in_one)["visit"][0]["vid"] != by_kind(in_two)["visit"][0]["vid"]
    cutoff = dt.date.today().year - 90
    for part in (part_one, part_two):
        assert part["birthYear"] == f"<={cutoff}" and part["zip3"] == "000"

    await clinician.call(
        "PATCH", f"/v1/users/{p['userName']}/visits/{visit['visitId']}", {"notes": "changed"}
    )
    _, again = await researcher.run(one)
    assert [r["vid"] for r in again] == [by_kind(in_one)["visit"][0]["vid"]]
    assert again[0]["pid"] == part_one["pid"]


async def test_k_anonymity_generalises_small_groups(
    clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study(k=2)
    same = {
        "birthDate": "1971-02-03",
        "sex": "female",
        "address": {"postalCode": "60601", "country": "US"},
    }
    pair = [await patient_on_shard(clinician, stack, s, **same) for s in (0, 1)]
    odd = await patient_on_shard(
        clinician,
        stack,
        0,
        birthDate="1975-05-05",
        sex="female",
        address={"postalCode": "10001", "country": "US"},
    )
    for p in (*pair, odd):
        await consent(clinician, p["userName"], study)
    run, records = await researcher.run(study)
    k = keys(study)
    parts = {r["pid"]: r for r in by_kind(records)["participant"]}
    # The odd one is alone; the pair looks like it once both are generalised to the birth
    # decade and zip3 "000", so all three are released so (k = 2 holds over what is held).
    assert sorted(parts.values(), key=lambda r: r["pid"]) == sorted(
        ({"kind": "participant", "pid": k.pid(p["userName"]), "birthYear": "1970-1979",
          "sex": "female", "zip3": "000", "country": "US"} for p in (*pair, odd)),
        key=lambda r: r["pid"],
    )  # fmt: skip
    report = run["kAnonymity"]
    assert (report["k"], report["participants"], report["smallestGroup"]) == (2, 3, 1)
    assert (
        report["smallestReleasedGroup"] == 3 and report["generalised"] == 3 and report["satisfied"]
    )
    # A second patient like the odd one: everyone is re-released at the finer level that now holds.
    twin = await patient_on_shard(
        clinician,
        stack,
        1,
        birthDate="1975-07-07",
        sex="female",
        address={"postalCode": "10002", "country": "US"},
    )
    await consent(clinician, twin["userName"], study)
    run, records = await researcher.run(study)
    parts = {r["pid"]: r for r in by_kind(records)["participant"]}
    assert set(parts) == {k.pid(p["userName"]) for p in (*pair, odd, twin)}
    assert {(r["birthYear"], r["zip3"]) for r in parts.values()} == {(1975, "100"), (1971, "606")}
    assert run["kAnonymity"]["smallestReleasedGroup"] == 2
    assert run["kAnonymity"]["reemitted"] == 3


async def test_who_may_do_what(http, stack, clinician: Api, researcher: Researcher, token) -> None:
    study = await researcher.create_study()
    patient = await patient_on_shard(clinician, stack, 1)
    other = await patient_on_shard(clinician, stack, 0)
    as_patient = Api(http, stack.base_url, token(patient["userName"], "patient"))
    path = f"/v1/users/{patient['userName']}/studies/{study}"
    assert (await as_patient.call("PUT", path)).status == 200
    assert (await as_patient.call("DELETE", path)).status == 204
    assert (
        await as_patient.call("PUT", f"/v1/users/{other['userName']}/studies/{study}")
    ).status == 403
    assert (await researcher.api.call("PUT", path)).status == 403
    assert (
        await Api(http, stack.base_url, token("aud", "auditor")).call("PUT", path)
    ).status == 403
    for api in (as_patient, clinician, Api(http, stack.base_url, token("aud", "auditor"))):
        assert (await api.call("GET", f"/v1/studies/{study}")).status == 403
        assert (await api.call("POST", f"/v1/studies/{study}/runs")).status == 403
        assert (
            await api.call("POST", "/v1/studies", {"studyId": study_id(), "title": "x"})
        ).status == 403
    unknown = await clinician.call("PUT", f"/v1/users/{patient['userName']}/studies/no-such-study")
    assert unknown.status == 404 and unknown.problem
    missing_user = await clinician.call("PUT", f"/v1/users/nobody.at.all/studies/{study}")
    assert missing_user.status == 404
    dup = await researcher.api.call("POST", "/v1/studies", {"studyId": study, "title": "again"})
    assert dup.status == 409 and dup.problem
    bad = await researcher.api.call(
        "POST", "/v1/studies", {"studyId": study_id(), "title": "x", "schedule": "every day"}
    )
    assert bad.status == 422 and bad.body["errors"][0]["field"] == "schedule"
    assert (await researcher.api.call("GET", "/v1/studies/no-such-study")).status == 404
    assert (await researcher.api.call("POST", "/v1/studies/no-such-study/runs")).status == 404
    assert (await researcher.api.call("GET", f"/v1/studies/{study}/runs/not-a-run")).status == 404
    assert (await researcher.api.call("GET", "/v1/studies/x")).status == 404
    assert (await researcher.api.call("GET", "/v1/users/x")).status == 403


async def test_consent_changes_are_audited(
    admin: Api, clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study()
    p = await patient_on_shard(clinician, stack, 0)
    entity = f"{p['userName']}/{study}"
    await consent(clinician, p["userName"], study)
    await consent(clinician, p["userName"], study)  # already in force: no change, no event
    await withdraw(clinician, p["userName"], study)
    events: list = []
    for _ in range(200):
        reply = await admin.call(
            "GET", "/v1/audit/events", params={"entityType": "study_consent", "entityId": entity}
        )
        assert reply.status == 200, reply.body
        events = reply.body["items"]
        if len(events) >= 2:
            break
        await asyncio.sleep(0.1)
    assert [(e["action"], e["actor"], e["after"]["status"]) for e in events] == [
        ("create", "dr.hibbert", "consented"),
        ("update", "dr.hibbert", "withdrawn"),
    ]
    assert events[1]["changes"] == ["status", "withdrawnAt"]
