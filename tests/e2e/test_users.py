"""Users through nginx: a clinic's client creating, reading, updating and searching patients."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.api import Api, unique


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


async def test_create_then_read_returns_the_same_user(admin: Api) -> None:
    name = unique("alice")
    body = {
        "userName": name,
        "role": "patient",
        "givenName": "Alice",
        "familyName": "Smith",
        "birthDate": "1980-04-02",
        "sex": "female",
        "email": "alice@example.org",
        "phone": "+1-555-0100",
        "address": {
            "line": "1 Main St",
            "city": "Springfield",
            "region": "IL",
            "postalCode": "62701",
            "country": "US",
        },
    }
    created = await admin.call("POST", "/v1/users", body)
    assert created.status == 201
    assert created.headers["Location"] == f"/v1/users/{name}"
    assert created.headers["ETag"] == '"1"'
    assert created.body["version"] == 1
    assert created.body["createdAt"].endswith("Z")
    read = await admin.call("GET", f"/v1/users/{name}")
    assert read.status == 200
    assert read.body == created.body
    assert read.headers["ETag"] == '"1"'
    assert read.headers["X-Request-ID"]


async def test_duplicate_user_name_is_409_and_keeps_the_first(admin: Api) -> None:
    first = await admin.create_patient(givenName="First")
    again = await admin.call(
        "POST",
        "/v1/users",
        {
            "userName": first["userName"],
            "role": "patient",
            "givenName": "Second",
            "familyName": "X",
            "birthDate": "1990-01-01",
        },
    )
    assert again.status == 409 and again.problem
    assert (await admin.call("GET", f"/v1/users/{first['userName']}")).body["givenName"] == "First"


async def test_invalid_user_is_422_with_field_errors_and_nothing_is_stored(admin: Api) -> None:
    name = unique("bad")
    reply = await admin.call(
        "POST",
        "/v1/users",
        {
            "userName": name,
            "role": "patient",
            "givenName": "B",
            "familyName": "D",
            "birthDate": "2999-01-01",
            "sex": "x",
            "favouriteColour": "blue",
        },
    )
    assert reply.status == 422 and reply.problem
    fields = {e["field"] for e in reply.body["errors"]}
    assert {"birthDate", "sex", "favouriteColour"} <= fields
    assert (await admin.call("GET", f"/v1/users/{name}")).status == 404


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 422),
        (b"userName=x", "application/x-www-form-urlencoded", 415),
        (b"", "application/json", 400),
    ],
)
async def test_malformed_bodies_get_problems(admin: Api, raw, content_type, status) -> None:
    reply = await admin.call("POST", "/v1/users", raw=raw, headers={"Content-Type": content_type})
    assert reply.status == status and reply.problem
    assert reply.body["status"] == status


async def test_body_over_one_mebibyte_is_413(admin: Api) -> None:
    reply = await admin.call(
        "POST",
        "/v1/users",
        raw=b'{"a":"' + b"x" * (1024 * 1024 + 10) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 413 and reply.problem


async def test_merge_patch_updates_removes_and_bumps_version(admin: Api) -> None:
    user = await admin.create_patient(
        email="old@example.org",
        address={"line": "1 Main St", "city": "Springfield", "country": "US"},
    )
    path = f"/v1/users/{user['userName']}"
    patched = await admin.call(
        "PATCH",
        path,
        {"email": "new@example.org", "address": {"city": None}},
        headers={"If-Match": '"1"'},
    )
    assert patched.status == 200, patched.body
    assert patched.body["email"] == "new@example.org"
    assert patched.body["address"] == {"line": "1 Main St", "country": "US"}
    assert patched.body["version"] == 2 and patched.headers["ETag"] == '"2"'
    assert patched.body["createdAt"] == user["createdAt"]
    assert (await admin.call("GET", path)).body == patched.body


async def test_stale_if_match_is_412_and_changes_nothing(admin: Api) -> None:
    user = await admin.create_patient()
    path = f"/v1/users/{user['userName']}"
    assert (await admin.call("PATCH", path, {"phone": "+1 555 0101"})).status == 200
    stale = await admin.call("PATCH", path, {"phone": "+1 555 0199"}, headers={"If-Match": '"1"'})
    assert stale.status == 412 and stale.problem
    now = (await admin.call("GET", path)).body
    assert now["phone"] == "+1 555 0101" and now["version"] == 2


@pytest.mark.parametrize(
    "patch",
    [
        {"userName": "someone.else"},
        {"role": "admin"},
        {"version": 9},
        {"givenName": None},
        {"birthDate": "tomorrow"},
        {"shoeSize": 9},
    ],
)
async def test_patch_rejects_immutable_unknown_and_invalid_fields(admin: Api, patch) -> None:
    user = await admin.create_patient()
    path = f"/v1/users/{user['userName']}"
    reply = await admin.call("PATCH", path, patch)
    assert reply.status == 422 and reply.problem
    assert (await admin.call("GET", path)).body == user


async def test_unknown_user_is_404_problem(admin: Api) -> None:
    for path in ("/v1/users/no.such.user", "/v1/users/NOT_VALID", "/v1/users/no.such.user/visits"):
        reply = await admin.call("GET", path)
        assert reply.status == 404 and reply.problem, path


async def test_search_merges_shards_in_order_and_pages_with_a_cursor(admin: Api, stack) -> None:
    family = "Zq" + unique("fam").replace(".", "")
    made = []
    givens = iter(
        ("Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lou")
    )
    # At least 7 users, and on both shards (userNames are random: keep going until they are).
    while len(made) < 7 or {stack.shard_map.shard_id_for(u["userName"]) for u in made} != {0, 1}:
        made.append(await admin.create_patient(familyName=family, givenName=next(givens)))
    seen, cursor = [], None
    while True:
        params = {"familyName": family.lower()[:5], "limit": "3"} | (
            {"cursor": cursor} if cursor else {}
        )
        page = await admin.call("GET", "/v1/users", params=params)
        assert page.status == 200, page.body
        assert len(page.body["items"]) <= 3
        seen += [u["userName"] for u in page.body["items"] if u["familyName"] == family]
        cursor = page.body["nextCursor"]
        if cursor is None:
            break
    expected = [
        u["userName"]
        for u in sorted(made, key=lambda u: (u["familyName"], u["givenName"], u["userName"]))
    ]
    assert seen == expected


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"cursor": "%%%"}]
)
async def test_search_rejects_bad_query(admin: Api, params) -> None:
    reply = await admin.call("GET", "/v1/users", params={"familyName": "S"} | params)
    assert reply.status == 400 and reply.problem


async def test_concurrent_patches_each_apply_exactly_once(admin: Api) -> None:
    user = await admin.create_patient()
    path = f"/v1/users/{user['userName']}"
    replies = await asyncio.gather(
        *(admin.call("PATCH", path, {"phone": f"+1 555 01{i:02d}"}) for i in range(10))
    )
    assert all(r.status == 200 for r in replies)
    assert sorted(r.body["version"] for r in replies) == list(range(2, 12))
    assert (await admin.call("GET", path)).body["version"] == 11
