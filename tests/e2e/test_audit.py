"""The audit trail as its users see it: every change has its event, in order, readable by the
right roles, chained so that tampering shows.

Each scenario leaves the stack as it found it (a tampered row is put back).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from tests.e2e.api import Api, unique


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


@pytest.fixture
def auditor(http, stack, token) -> Api:
    return Api(http, stack.base_url, token("audrey.auditor", "auditor"))


def audit_dsn(stack) -> str:
    """The audit store as its owner (a superuser), for the test's own checks and tampering."""
    return stack.central_postgres.dsn_for("audit")


async def all_events(api: Api, **params: str) -> list[dict[str, Any]]:
    """Every event matching ``params``, following the cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": "200", **({"cursor": cursor} if cursor else {})}
        reply = await api.call("GET", "/v1/audit/events", params=query)
        assert reply.status == 200, reply.body
        items += reply.body["items"]
        cursor = reply.body["nextCursor"]
        if cursor is None:
            return items


async def wait_for_events(
    api: Api, count: int, timeout: float = 20, **params: str
) -> list[dict[str, Any]]:
    """Poll until at least ``count`` events match; return them all."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        items = await all_events(api, **params)
        if len(items) >= count or asyncio.get_running_loop().time() > deadline:
            return items
        await asyncio.sleep(0.1)


async def test_a_user_created_and_updated_twice_has_exactly_three_events_in_order(
    admin: Api, auditor: Api, http, stack, token
) -> None:
    clinician = Api(http, stack.base_url, token("dr.audit", "clinician"))
    name = unique("aud.user")
    created = await clinician.create_patient(name, email="first@example.org")
    first = await clinician.call(
        "PATCH",
        f"/v1/users/{name}",
        {"phone": "+1-555-0101"},
        headers={"X-Request-ID": f"req-{name}"},
    )
    patient = Api(http, stack.base_url, token(name, "patient"))
    second = await patient.call(
        "PATCH",
        f"/v1/users/{name}",
        {"email": "second@example.org", "address": {"city": "Springfield"}},
    )
    assert first.status == 200 and second.status == 200

    events = await wait_for_events(auditor, 3, entityType="user", entityId=name)
    assert [e["action"] for e in events] == ["create", "update", "update"]
    assert [e["actor"] for e in events] == ["dr.audit", "dr.audit", name]
    assert events[0]["before"] is None and events[0]["after"] == created | {
        "address": None,
        "phone": None,
    }
    assert events[0]["changes"] == [
        "userName",
        "role",
        "givenName",
        "familyName",
        "birthDate",
        "sex",
        "email",
    ]
    assert events[1]["changes"] == ["phone"] and events[1]["requestId"] == f"req-{name}"
    assert events[2]["changes"] == ["email", "address"]
    assert events[1]["before"] == events[0]["after"] and events[2]["before"] == events[1]["after"]
    assert events[2]["after"] == second.body
    assert [e["after"]["version"] for e in events] == [1, 2, 3]
    assert events[0]["seq"] < events[1]["seq"] < events[2]["seq"]
    shard = stack.shard_map.shard_id_for(name)
    assert {e["source"] for e in events} == {f"user_service/shard-{shard}"}
    assert all(len(e["hash"]) == 64 and len(e["prevHash"]) == 64 for e in events)
    await asyncio.sleep(0.5)  # nothing more arrives: exactly three
    assert len(await all_events(auditor, entityType="user", entityId=name)) == 3


async def test_a_visit_created_and_updated_twice_has_exactly_three_events_in_order(
    admin: Api, auditor: Api
) -> None:
    patient = await admin.create_patient()
    visit = await admin.create_visit(patient["userName"], reason="check-up")
    path = f"/v1/users/{patient['userName']}/visits/{visit['visitId']}"
    one = await admin.call("PATCH", path, {"notes": "seen"})
    two = await admin.call(
        "PATCH",
        path,
        {"endedAt": "2026-11-20T09:45:00Z", "notes": None},
        headers={"If-Match": '"2"'},
    )
    assert one.status == 200 and two.status == 200, (one.body, two.body)
    entity_id = f"{patient['userName']}/{visit['visitId']}"
    events = await wait_for_events(auditor, 3, entityType="visit", entityId=entity_id)
    assert [(e["action"], e["changes"]) for e in events] == [
        (
            "create",
            [
                "visitId",
                "userName",
                "clinician",
                "type",
                "startedAt",
                "reason",
                "diagnoses",
                "medications",
            ],
        ),
        ("update", ["notes"]),
        ("update", ["endedAt", "notes"]),
    ]
    assert events[0]["after"] == visit and events[2]["after"] == two.body
    assert {e["actor"] for e in events} == {"admin"}
    await asyncio.sleep(0.5)
    assert len(await all_events(auditor, entityType="visit", entityId=entity_id)) == 3


async def test_who_may_read_the_audit_trail(admin: Api, http, stack, token) -> None:
    patient = await admin.create_patient()
    staff = unique("aud.staff")
    assert (await admin.call("POST", "/v1/users", {
        "userName": staff, "role": "clinician", "givenName": "Dr", "familyName": "Staff",
        "birthDate": "1970-01-01"})).status == 201  # fmt: skip
    visit = await admin.create_visit(patient["userName"])
    auditor = Api(http, stack.base_url, token("audrey", "auditor"))
    await wait_for_events(auditor, 1, entityType="user", entityId=staff)
    await wait_for_events(
        auditor, 1, entityType="visit", entityId=f"{patient['userName']}/{visit['visitId']}"
    )

    clinician = Api(http, stack.base_url, token("dr.reader", "clinician"))
    mine = await all_events(clinician, entityType="user", entityId=patient["userName"])
    assert [e["action"] for e in mine] == ["create"]
    visits = await all_events(clinician, entityId=f"{patient['userName']}/{visit['visitId']}")
    assert [e["entityType"] for e in visits] == ["visit"]
    assert await all_events(clinician, entityType="user", entityId=staff) == [], "not a patient"
    assert (
        await clinician.call("GET", "/v1/audit/events", params={"entityType": "study"})
    ).status == 403
    assert (await clinician.call("GET", "/v1/audit/verify")).status == 403
    for role in ("patient", "researcher"):
        other = Api(http, stack.base_url, token(patient["userName"], role))
        reply = await other.call(
            "GET", "/v1/audit/events", params={"entityId": patient["userName"]}
        )
        assert reply.status == 403 and reply.problem
    assert (await Api(http, stack.base_url, None).call("GET", "/v1/audit/events")).status == 401
    assert (await auditor.call("POST", "/v1/audit/events", {
        "entityType": "study", "entityId": "x", "action": "run"})).status == 403  # fmt: skip


async def test_any_entity_type_can_be_recorded_once_per_event_id(
    admin: Api, auditor: Api, http, stack, token
) -> None:
    event_id = str(uuid.uuid4())
    body = {
        "eventId": event_id,
        "entityType": "study",
        "entityId": "diabetes-2026",
        "action": "run",
        "changes": ["status"],
        "after": {"status": "succeeded", "counts": {"visit": 7}},
    }
    created = await admin.call("POST", "/v1/audit/events", body)
    assert created.status == 201, created.body
    assert created.headers["Location"] == f"/v1/audit/events/{event_id}"
    assert created.body["actor"] == "admin" and created.body["source"] == "api/admin"
    again = await admin.call("POST", "/v1/audit/events", body)
    assert again.status == 200 and again.body == created.body, "a retry takes no new seq"
    clash = await admin.call("POST", "/v1/audit/events", body | {"entityId": "other"})
    assert clash.status == 409 and clash.problem
    fetched = await auditor.call("GET", created.headers["Location"])
    assert fetched.status == 200 and fetched.body == created.body
    clinician = Api(http, stack.base_url, token("dr.nosy", "clinician"))
    assert (await clinician.call("GET", created.headers["Location"])).status == 403

    bad = await admin.call(
        "POST",
        "/v1/audit/events",
        {"entityType": "study", "entityId": "x", "action": "run", "colour": "red"},
    )
    assert bad.status == 422 and bad.problem and bad.body["errors"][0]["field"] == "colour"
    assert (
        await admin.call(
            "POST", "/v1/audit/events", raw=b"{nope", headers={"Content-Type": "application/json"}
        )
    ).status == 400
    assert (
        await admin.call("GET", "/v1/audit/events", params={"since": "yesterday"})
    ).status == 400
    assert (await admin.call("GET", "/v1/audit/events", params={"colour": "red"})).status == 422
    assert (await auditor.call("GET", f"/v1/audit/events/{uuid.uuid4()}")).status == 404


async def test_an_event_holding_nul_characters_is_stored_repeated_and_read(
    admin: Api, auditor: Api
) -> None:
    # Fuzzing found these: a retry of such an event (and reading it) failed with a 500 when the
    # store parsed the body as jsonb, which cannot hold \u0000; a NUL filter failed in the query.
    body = {"eventId": str(uuid.uuid4()), "entityType": "note", "entityId": unique("aud.nul"),
            "action": "write", "after": {"te\x00xt": "a\x00b"}}  # fmt: skip
    created = await admin.call("POST", "/v1/audit/events", body)
    assert created.status == 201, created.body
    again = await admin.call("POST", "/v1/audit/events", body)
    assert again.status == 200 and again.body == created.body
    assert (await admin.call("POST", "/v1/audit/events", body | {"action": "erase"})).status == 409
    fetched = await auditor.call("GET", created.headers["Location"])
    assert fetched.status == 200 and fetched.body["after"] == {"te\x00xt": "a\x00b"}
    for name in ("entityType", "entityId", "actor"):
        reply = await auditor.call("GET", "/v1/audit/events", params={name: "a\x00b"})
        assert reply.status == 400 and reply.problem, name
    # Filters are bounded so that any query the document allows fits nginx's 8 KiB request line.
    for name, value in (
        ("entityType", "no such type"),
        ("entityId", "x" * 257),
        ("actor", "x" * 257),
    ):
        reply = await auditor.call("GET", "/v1/audit/events", params={name: value})
        assert reply.status == 400 and reply.problem, name
    assert (
        await auditor.call("GET", "/v1/audit/events", params={"entityId": "x" * 256})
    ).status == 200


async def test_paging_and_filters(admin: Api, auditor: Api) -> None:
    entity = unique("aud.page")
    for i in range(5):
        reply = await admin.call("POST", "/v1/audit/events", {
            "entityType": "report", "entityId": entity, "action": "print", "actor": f"clerk{i % 2}",
            "occurredAt": f"2026-01-0{i + 1}T10:00:00+02:00"})  # fmt: skip
        assert reply.status == 201
    page = await auditor.call("GET", "/v1/audit/events", params={"entityId": entity, "limit": "2"})
    assert len(page.body["items"]) == 2 and page.body["nextCursor"]
    everything = await all_events(auditor, entityId=entity)
    assert [e["occurredAt"] for e in everything] == [
        f"2026-01-0{i + 1}T08:00:00Z" for i in range(5)
    ]
    assert len(await all_events(auditor, entityId=entity, actor="clerk1")) == 2
    window = await all_events(
        auditor, entityId=entity, since="2026-01-02T08:00:00Z", until="2026-01-04T08:00:00Z"
    )
    assert [e["occurredAt"][:10] for e in window] == ["2026-01-02", "2026-01-03"]


async def test_the_service_may_not_rewrite_history(stack) -> None:
    writer = await asyncpg.connect(
        stack.central_postgres.dsn_for("audit").replace("medsvc@", "audit_writer@")
    )
    try:
        for sql in (
            "UPDATE audit_events SET actor = 'x' WHERE seq = 1",
            "DELETE FROM audit_events WHERE seq = 1",
            "TRUNCATE audit_events",
            "UPDATE audit_chain_head SET last_seq = 0",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.execute(sql)
    finally:
        await writer.close()
    owner = await asyncpg.connect(audit_dsn(stack))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute("DELETE FROM audit_events WHERE seq = 1")
    finally:
        await owner.close()


async def _verdict(api: Api) -> dict[str, Any]:
    reply = await api.call("GET", "/v1/audit/verify")
    assert reply.status == 200, reply.body
    return reply.body


async def test_an_altered_or_deleted_event_is_named_by_verify(
    admin: Api, auditor: Api, stack
) -> None:
    entity = unique("aud.tamper")
    seqs = []
    for i in range(3):
        reply = await admin.call(
            "POST",
            "/v1/audit/events",
            {
                "entityType": "prescription",
                "entityId": entity,
                "action": "sign",
                "after": {"dose": i},
            },
        )
        seqs.append(reply.body["seq"])
    assert (await _verdict(auditor))["ok"] is True
    victim = seqs[1]
    conn = await asyncpg.connect(audit_dsn(stack))  # the superuser, able to switch the guard off
    try:
        row = await conn.fetchrow("SELECT * FROM audit_events WHERE seq = $1", victim)
        await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        try:
            # When an event's content is altered...
            await conn.execute(
                "UPDATE audit_events SET body = replace(body, '\"dose\":1', '\"dose\":9') "
                "WHERE seq = $1",
                victim,
            )
            verdict = await _verdict(auditor)
            assert verdict["ok"] is False and verdict["firstBadSeq"] == victim, verdict
            # ...or its stored hash...
            await conn.execute(
                "UPDATE audit_events SET body = $2, hash = repeat('a', 64) WHERE seq = $1",
                victim,
                row["body"],
            )
            verdict = await _verdict(auditor)
            assert verdict["ok"] is False and verdict["firstBadSeq"] == victim, verdict
            # ...or it is deleted outright, verify names it.
            await conn.execute("DELETE FROM audit_events WHERE seq = $1", victim)
            verdict = await _verdict(auditor)
            assert verdict["ok"] is False and verdict["firstBadSeq"] == victim, verdict
        finally:
            await conn.execute("DELETE FROM audit_events WHERE seq = $1", victim)
            await conn.execute(
                f"INSERT INTO audit_events ({', '.join(row.keys())}) "
                f"VALUES ({', '.join(f'${i + 1}' for i in range(len(row)))})",
                *row.values(),
            )
            await conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
    finally:
        await conn.close()
    verdict = await _verdict(auditor)
    assert verdict["ok"] is True and verdict["checked"] >= seqs[-1], verdict


async def test_several_audit_processes_append_to_one_chain(
    http, stack, admin_token, auditor: Api
) -> None:
    processes = stack.services["audit"]
    assert len(processes) >= 2
    entity = unique("aud.fork")
    direct = [Api(http, p.url, admin_token) for p in processes]

    async def record(i: int) -> int:
        reply = await direct[i % len(direct)].call(
            "POST",
            "/v1/audit/events",
            {"entityType": "note", "entityId": entity, "action": "write", "after": {"i": i}},
        )
        assert reply.status == 201, reply.body
        return reply.body["seq"]

    seqs = await asyncio.gather(*(record(i) for i in range(120)))
    assert len(set(seqs)) == 120, "no seq handed out twice"
    stored = await all_events(auditor, entityId=entity)
    assert [e["seq"] for e in stored] == sorted(seqs)
    verdict = await _verdict(auditor)
    assert verdict["ok"] is True, verdict
