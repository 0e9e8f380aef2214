"""user_service's handlers in process: what a client sees, without nginx or the gateway."""

from __future__ import annotations

import pytest

from tests.e2e.api import Api, unique

ALICE = {
    "role": "patient",
    "givenName": "Alice",
    "familyName": "Smith",
    "birthDate": "1980-04-02",
    "sex": "female",
    "address": {
        "line": "1 Main St",
        "city": "Springfield",
        "region": "IL",
        "postalCode": "62701",
        "country": "US",
    },
}


async def test_create_read_and_patch_with_versions(admin: Api) -> None:
    name = unique("alice")
    created = await admin.call("POST", "/v1/users", {"userName": name, **ALICE})
    assert created.status == 201, created.body
    assert created.headers["Location"] == f"/v1/users/{name}"
    assert created.headers["ETag"] == '"1"'
    read = await admin.call("GET", f"/v1/users/{name}")
    assert (read.status, read.body) == (200, created.body)

    patched = await admin.call(
        "PATCH", f"/v1/users/{name}", {"email": "a@example.org"}, headers={"If-Match": '"1"'}
    )
    assert patched.status == 200, patched.body
    assert (patched.body["version"], patched.body["email"]) == (2, "a@example.org")
    assert patched.headers["ETag"] == '"2"'


async def test_a_stale_if_match_is_412_and_changes_nothing(admin: Api) -> None:
    user = await admin.create_patient()
    path = f"/v1/users/{user['userName']}"
    assert (await admin.call("PATCH", path, {"email": "b@example.org"})).status == 200
    stale = await admin.call("PATCH", path, {"email": "c@example.org"}, headers={"If-Match": '"1"'})
    assert stale.status == 412 and stale.problem
    assert (await admin.call("GET", path)).body["email"] == "b@example.org"


async def test_a_duplicate_is_409_and_keeps_the_first(admin: Api) -> None:
    first = await admin.create_patient(givenName="First")
    again = await admin.call("POST", "/v1/users", {**ALICE, "userName": first["userName"]})
    assert again.status == 409 and again.problem
    assert (await admin.call("GET", f"/v1/users/{first['userName']}")).body["givenName"] == "First"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"birthDate": "2999-01-01"}, "birthDate"),
        ({"birthDate": "1899-12-31"}, "birthDate"),
        ({"sex": "x"}, "sex"),
        ({"nickname": "Al"}, "nickname"),
        ({"version": 3}, "version"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field_and_store_nothing(
    admin: Api, change: dict, field: str
) -> None:
    name = unique("bad")
    reply = await admin.call("POST", "/v1/users", {"userName": name, **ALICE, **change})
    assert reply.status == 422 and reply.problem, reply.body
    assert any(e["field"].startswith(field) for e in reply.body["errors"]), reply.body
    assert (await admin.call("GET", f"/v1/users/{name}")).status == 404


async def test_malformed_json_and_other_media_types_are_refused(admin: Api) -> None:
    broken = await admin.call(
        "POST", "/v1/users", raw=b"{", headers={"Content-Type": "application/json"}
    )
    assert broken.status == 400 and broken.problem
    text = await admin.call("POST", "/v1/users", raw=b"x", headers={"Content-Type": "text/plain"})
    assert text.status == 415 and text.problem


async def test_immutable_fields_cannot_be_patched(admin: Api) -> None:
    user = await admin.create_patient()
    path = f"/v1/users/{user['userName']}"
    for patch in ({"userName": "someone.else"}, {"role": "admin"}, {"givenName": None}):
        reply = await admin.call("PATCH", path, patch)
        assert reply.status == 422 and reply.problem, (patch, reply.body)
    assert (await admin.call("GET", path)).body == user


async def test_roles_are_checked_by_the_service_itself(admin: Api, as_role) -> None:
    patient = await admin.create_patient()
    other = await admin.create_patient()
    me = as_role(patient["userName"], "patient")
    assert (await me.call("GET", f"/v1/users/{patient['userName']}")).status == 200
    assert (await me.call("GET", f"/v1/users/{other['userName']}")).status == 403
    # A patient changes their own contact details, never their name.
    path = f"/v1/users/{patient['userName']}"
    assert (await me.call("PATCH", path, {"phone": "+1-555-0101"})).status == 200
    assert (await me.call("PATCH", path, {"familyName": "Other"})).status == 403

    clinician = as_role("dr.jones", "clinician")
    made = await clinician.call("POST", "/v1/users", {"userName": unique("new"), **ALICE})
    assert made.status == 201
    staff = await clinician.call(
        "POST", "/v1/users", {"userName": unique("staff"), **ALICE, "role": "clinician"}
    )
    assert staff.status == 403 and staff.problem
    assert (await as_role("r", "researcher").call("GET", path)).status == 403


async def test_no_token_is_401(admin: Api) -> None:
    anonymous = Api(admin.http, admin.base_url, None)
    reply = await anonymous.call("GET", "/v1/users/anyone")
    assert reply.status == 401 and reply.problem
