"""Safe retries of POSTs with ``Idempotency-Key`` (API.md, Conventions), against the real stack.

A client retries a creation; an FE server is killed in the middle of a burst of keyed POSTs;
two attempts with one key race. Each scenario checks what a client sees and what the shard's
database holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid

import asyncpg
import pytest

from shared.idempotency import IdempotencyKey, purge_expired
from tests.e2e.api import Api, unique


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


def visit_body(hour: int = 9) -> dict:
    return {"type": "outpatient", "startedAt": f"2026-11-20T{hour:02d}:00:00Z"}


async def shard_rows(stack, user_name: str, sql: str, *args) -> int:
    """``sql`` counted on the shard that owns ``user_name``."""
    conn = await asyncpg.connect(
        stack.shard_map.shard(stack.shard_map.shard_id_for(user_name)).postgres
    )
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def visit_count(stack, user_name: str) -> int:
    return await shard_rows(
        stack, user_name, "SELECT count(*) FROM visits WHERE user_name = $1", user_name
    )


async def test_a_retried_creation_gets_the_first_answer_and_writes_once(admin: Api, stack) -> None:
    patient = (await admin.create_patient())["userName"]
    key = {"Idempotency-Key": f"visit-{uuid.uuid4()}"}
    first = await admin.call("POST", f"/v1/users/{patient}/visits", visit_body(), headers=key)
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    again = await admin.call("POST", f"/v1/users/{patient}/visits", visit_body(), headers=key)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["ETag"] == first.headers["ETag"]
    assert await visit_count(stack, patient) == 1


async def test_the_same_key_with_another_body_is_422_and_changes_nothing(admin: Api, stack) -> None:
    patient = (await admin.create_patient())["userName"]
    key = {"Idempotency-Key": "same-key"}
    assert (
        await admin.call("POST", f"/v1/users/{patient}/visits", visit_body(9), headers=key)
    ).status == 201
    other = await admin.call("POST", f"/v1/users/{patient}/visits", visit_body(10), headers=key)
    assert other.status == 422 and other.problem
    assert [e["field"] for e in other.body["errors"]] == ["Idempotency-Key"]
    assert await visit_count(stack, patient) == 1


async def test_a_key_belongs_to_its_caller_and_its_path(admin: Api, stack, http, token) -> None:
    patient = (await admin.create_patient())["userName"]
    doctor = Api(http, stack.base_url, token("dr.idem", "clinician"))
    key = {"Idempotency-Key": "shared-key"}
    assert (
        await admin.call("POST", f"/v1/users/{patient}/visits", visit_body(), headers=key)
    ).status == 201
    theirs = await doctor.call("POST", f"/v1/users/{patient}/visits", visit_body(), headers=key)
    assert theirs.status == 201 and "Idempotent-Replayed" not in theirs.headers
    user = await admin.call(
        "POST",
        "/v1/users",
        {
            "userName": unique("idem"),
            "role": "patient",
            "givenName": "I",
            "familyName": "Dem",
            "birthDate": "1990-01-01",
        },
        headers=key,
    )
    assert user.status == 201 and "Idempotent-Replayed" not in user.headers
    assert await visit_count(stack, patient) == 2


@pytest.mark.parametrize("bad", ["", "has space", "x" * 256, "caf\u00e9"])
async def test_a_malformed_key_is_400(admin: Api, stack, bad: str) -> None:
    patient = (await admin.create_patient())["userName"]
    reply = await admin.call(
        "POST",
        f"/v1/users/{patient}/visits",
        visit_body(),
        headers={"Idempotency-Key": bad.encode().decode("latin-1")},
    )
    assert reply.status == 400 and reply.problem
    assert await visit_count(stack, patient) == 0


async def test_a_key_still_in_flight_is_409_then_the_first_answer_wins(admin: Api, stack) -> None:
    """An attempt that holds the key (its transaction is open) makes a second one 409."""
    patient = (await admin.create_patient())["userName"]
    path = f"/v1/users/{patient}/visits"
    body = visit_body()
    key = IdempotencyKey("admin", path, "in-flight", hashlib.sha256(b"").digest())
    shard = stack.shard_map.shard(stack.shard_map.shard_id_for(patient))
    holder = await asyncpg.connect(shard.postgres)
    try:
        # What a first attempt's transaction holds while it runs.
        await holder.execute("SELECT pg_advisory_lock($1)", key.lock_id)
        second = await admin.call("POST", path, body, headers={"Idempotency-Key": "in-flight"})
        assert second.status == 409 and second.problem
        assert "in progress" in second.body["detail"]
    finally:
        await holder.close()
    assert await visit_count(stack, patient) == 0
    racers = await asyncio.gather(
        *(admin.call("POST", path, body, headers={"Idempotency-Key": "race"}) for _ in range(6))
    )
    assert {r.status for r in racers} <= {201, 409}
    created = [r for r in racers if r.status == 201]
    assert len([r for r in created if "Idempotent-Replayed" not in r.headers]) == 1
    assert len({r.body["visitId"] for r in created}) == 1
    assert await visit_count(stack, patient) == 1


async def test_an_fe_server_killed_mid_burst_costs_keyed_posts_nothing(
    admin: Api, stack, http
) -> None:
    """Keyed POSTs in flight when an FE server dies are retried by the gateway on the other one."""
    patients: list[str] = []
    while len(patients) < 4:
        user = (await admin.create_patient())["userName"]
        if stack.shard_map.shard_id_for(user) == 0:
            patients.append(user)
    victim = stack.fe[0][0]
    lost_before = await lost_connections(http, stack)
    answers: list[tuple[str, str, int, dict]] = []
    stop = asyncio.Event()

    async def writer(user_name: str, w: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            key = f"{user_name}-{w}-{n}"
            reply = await admin.call(
                "POST",
                f"/v1/users/{user_name}/visits",
                visit_body(n % 24),
                headers={"Idempotency-Key": key},
            )
            answers.append((user_name, key, reply.status, reply.body))

    tasks = [asyncio.create_task(writer(u, w)) for u in patients for w in range(3)]
    try:
        await asyncio.sleep(0.5)
        await victim.kill()
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await victim.start()
    assert [a for a in answers if a[2] != 201] == [], "every keyed POST got its success"
    assert await lost_connections(http, stack) > lost_before, "the kill cut POSTs in flight"
    for user_name in patients:
        keys = [a for a in answers if a[0] == user_name]
        # Exactly one row per key: as many visits as keys, each answer's visit among them.
        assert await visit_count(stack, user_name) == len(keys)
        stored = await shard_rows(
            stack,
            user_name,
            "SELECT count(*) FROM idempotency_keys WHERE caller = 'admin' AND path = $1",
            f"/v1/users/{user_name}/visits",
        )
        assert stored == len(keys)
        ids = {a[3]["visitId"] for a in keys}
        assert len(ids) == len(keys)
    # A replay of one of them answers the same body, marked replayed.
    user_name, key, _, body = answers[0]
    replay = await admin.call(
        "POST",
        f"/v1/users/{user_name}/visits",
        visit_body(int(key.rsplit("-", 1)[1]) % 24),
        headers={"Idempotency-Key": key},
    )
    assert replay.status == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.body == body


async def lost_connections(http, stack) -> float:
    """Connections the gateways lost to shard 0's FE servers after sending a request."""
    total = 0.0
    pattern = re.compile(
        r'^medsvc_gateway_upstream_requests_total\{'
        r'(?=[^}]*outcome="lost")(?=[^}]*shard="0")[^}]*\} (\S+)$',
        re.M,
    )
    for gw in stack.gateways:
        async with http.get(gw.url + "/metrics") as resp:
            total += sum(float(v) for v in pattern.findall(await resp.text()))
    return total


async def test_study_and_run_creations_replay_with_their_key(http, stack, token) -> None:
    researcher = Api(http, stack.base_url, token("dr.keyed", "researcher"))
    study_id = unique("keyed")
    body = {"studyId": study_id, "title": "Keyed"}
    key = {"Idempotency-Key": f"study-{study_id}"}
    first = await researcher.call("POST", "/v1/studies", body, headers=key)
    assert first.status == 201
    again = await researcher.call("POST", "/v1/studies", body, headers=key)
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body
    other = await researcher.call("POST", "/v1/studies", body | {"title": "Other"}, headers=key)
    assert other.status == 422 and other.problem
    unkeyed = await researcher.call("POST", "/v1/studies", body)
    assert unkeyed.status == 409  # without a key, a retry is a second attempt

    path = f"/v1/studies/{study_id}/runs"
    run_key = {"Idempotency-Key": f"run-{study_id}"}
    run = await researcher.call("POST", path, headers=run_key)
    assert run.status == 202
    replay = await researcher.call("POST", path, headers=run_key)
    assert replay.status == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.body["runId"] == run.body["runId"]
    assert replay.headers["Location"] == run.headers["Location"]
    runs = await researcher.call("GET", path)
    assert [r["runId"] for r in runs.body["items"]] == [run.body["runId"]]


async def test_a_keyed_audit_event_is_recorded_once(admin: Api) -> None:
    entity = f"keyed-{uuid.uuid4()}"
    body = {"entityType": "note", "entityId": entity, "action": "create"}
    key = {"Idempotency-Key": f"audit-{entity}"}
    first = await admin.call("POST", "/v1/audit/events", body, headers=key)
    assert first.status == 201
    again = await admin.call("POST", "/v1/audit/events", body, headers=key)
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body
    assert (
        await admin.call("POST", "/v1/audit/events", body | {"action": "update"}, headers=key)
    ).status == 422
    events = await admin.call(
        "GET", "/v1/audit/events", params={"entityType": "note", "entityId": entity}
    )
    assert [e["eventId"] for e in events.body["items"]] == [first.body["eventId"]]


async def test_a_key_older_than_24_hours_is_forgotten_and_purged(admin: Api, stack) -> None:
    patient = (await admin.create_patient())["userName"]
    path = f"/v1/users/{patient}/visits"
    key = {"Idempotency-Key": "yesterday"}
    first = await admin.call("POST", path, visit_body(), headers=key)
    assert first.status == 201
    conn = await asyncpg.connect(
        stack.shard_map.shard(stack.shard_map.shard_id_for(patient)).postgres
    )
    try:
        # A day and a bit later (the clock moved by ageing the row).
        await conn.execute(
            """UPDATE idempotency_keys SET created_at = now() - interval '25 hours'
               WHERE caller = 'admin' AND path = $1""",
            path,
        )
        fresh = await admin.call("POST", path, visit_body(11), headers=key)
        assert fresh.status == 201 and "Idempotent-Replayed" not in fresh.headers
        assert fresh.body["visitId"] != first.body["visitId"]
        assert await visit_count(stack, patient) == 2
        await conn.execute(
            """UPDATE idempotency_keys SET created_at = now() - interval '25 hours'
               WHERE caller = 'admin' AND path = $1""",
            path,
        )
        assert await purge_expired(conn) >= 1
        assert (
            await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE path = $1", path) == 0
        )
    finally:
        await conn.close()
