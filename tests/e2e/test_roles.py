"""Each role's allowed and forbidden calls (API.md, "Authentication and roles")."""

from __future__ import annotations

import time

import jwt
import pytest

from tests.e2e.api import Api, unique

VISIT = {"type": "telehealth", "startedAt": "2026-11-21T10:00:00Z"}


@pytest.fixture
async def world(http, stack, admin_token, token):
    admin = Api(http, stack.base_url, admin_token)
    patient = await admin.create_patient(unique("pat"))
    other = await admin.create_patient(unique("pat"))
    staff = unique("dr")
    assert (
        await admin.call(
            "POST",
            "/v1/users",
            {
                "userName": staff,
                "role": "clinician",
                "givenName": "D",
                "familyName": "R",
                "birthDate": "1970-01-01",
            },
        )
    ).status == 201
    visit = await admin.create_visit(patient["userName"])

    def as_(sub: str, role: str) -> Api:
        return Api(http, stack.base_url, token(sub, role))

    return {
        "admin": admin,
        "patient": patient["userName"],
        "other": other["userName"],
        "staff": staff,
        "visit": visit["visitId"],
        "as": as_,
    }


async def test_no_token_bad_token_and_expired_token_are_401(http, stack) -> None:
    for tok in (
        None,
        "not-a-jwt",
        jwt.encode({"sub": "x", "roles": ["admin"], "exp": int(time.time()) + 60}, "wrong-secret"),
        jwt.encode(
            {"sub": "x", "roles": ["admin"], "exp": int(time.time()) - 10}, "local-dev-secret"
        ),
        jwt.encode({"sub": "x", "roles": ["admin"]}, "local-dev-secret"),
    ):
        reply = await Api(http, stack.base_url, tok).call("GET", "/v1/users/whoever")
        assert reply.status == 401 and reply.problem, tok


async def test_patient_sees_only_self_and_changes_only_contact_fields(world) -> None:
    me = world["as"](world["patient"], "patient")
    p = world["patient"]
    assert (await me.call("GET", f"/v1/users/{p}")).status == 200
    assert (await me.call("GET", f"/v1/users/{p}/visits")).status == 200
    assert (await me.call("GET", f"/v1/users/{p}/visits/{world['visit']}")).status == 200
    assert (await me.call("PATCH", f"/v1/users/{p}", {"email": "me@example.org"})).status == 200
    assert (await me.call("PATCH", f"/v1/users/{p}", {"familyName": "Changed"})).status == 403
    assert (await me.call("GET", f"/v1/users/{world['other']}")).status == 403
    assert (await me.call("GET", f"/v1/users/{world['other']}/visits")).status == 403
    assert (await me.call("POST", f"/v1/users/{p}/visits", VISIT)).status == 403
    assert (await me.call("GET", "/v1/users", params={"familyName": "I"})).status == 403
    assert (
        await me.call(
            "POST",
            "/v1/users",
            {
                "userName": unique("x"),
                "role": "patient",
                "givenName": "a",
                "familyName": "b",
                "birthDate": "1990-01-01",
            },
        )
    ).status == 403


async def test_clinician_works_on_patients_only(world) -> None:
    doc = world["as"]("dr.who", "clinician")
    p, staff = world["patient"], world["staff"]
    assert (await doc.call("GET", f"/v1/users/{p}")).status == 200
    assert (await doc.call("PATCH", f"/v1/users/{p}", {"familyName": "Renamed"})).status == 200
    assert (await doc.call("POST", f"/v1/users/{p}/visits", VISIT)).status == 201
    assert (await doc.call("GET", f"/v1/users/{staff}")).status == 403
    assert (await doc.call("PATCH", f"/v1/users/{staff}", {"email": "x@example.org"})).status == 403
    made = await doc.call(
        "POST",
        "/v1/users",
        {
            "userName": unique("dr"),
            "role": "clinician",
            "givenName": "a",
            "familyName": "b",
            "birthDate": "1990-01-01",
        },
    )
    assert made.status == 403
    own = world["as"](staff, "clinician")
    assert (await own.call("GET", f"/v1/users/{staff}")).status == 200
    search = await doc.call("GET", "/v1/users", params={"familyName": "R", "limit": "200"})
    assert search.status == 200
    assert all(u["role"] == "patient" for u in search.body["items"])


@pytest.mark.parametrize("role", ["researcher", "auditor"])
async def test_researchers_and_auditors_have_no_access_to_users(world, role) -> None:
    api = world["as"]("someone", role)
    p = world["patient"]
    for method, path, body in (
        ("GET", f"/v1/users/{p}", None),
        ("GET", f"/v1/users/{p}/visits", None),
        ("PATCH", f"/v1/users/{p}", {"email": "a@b.org"}),
        ("GET", "/v1/users", None),
        ("POST", f"/v1/users/{p}/visits", VISIT),
    ):
        reply = await api.call(method, path, body)
        assert reply.status == 403 and reply.problem, (method, path)


async def test_only_admin_creates_staff(world) -> None:
    made = await world["admin"].call(
        "POST",
        "/v1/users",
        {
            "userName": unique("aud"),
            "role": "auditor",
            "givenName": "a",
            "familyName": "b",
            "birthDate": "1990-01-01",
        },
    )
    assert made.status == 201
