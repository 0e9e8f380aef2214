"""Operator scenarios for the audit trail: audit_service down, an FE server killed mid-burst.

"None is ever lost, none is doubled": the shards' databases are the truth each scenario
compares the audit store with. Each scenario restarts what it stopped or killed.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from tests.e2e.api import Api, unique
from tests.e2e.test_audit import all_events, audit_dsn, wait_for_events


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


async def metric(http: aiohttp.ClientSession, url: str, name: str, shard: int) -> float | None:
    """One sample of an FE server's metric for ``shard`` (None when absent)."""
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    found = re.search(rf'^{name}\{{shard="{shard}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


async def relay_leaders(http: aiohttp.ClientSession, stack, shard: int) -> list[Any]:
    """The FE servers of ``shard`` that are currently its shipping relay."""
    out = []
    for fe in stack.fe[shard]:
        if fe.running and await metric(http, fe.url, "medsvc_audit_relay_leader", shard) == 1:
            out.append(fe)
    return out


async def outbox_size(stack) -> int:
    total = 0
    for pg in stack.postgres.values():
        conn = await asyncpg.connect(pg.dsn)
        try:
            total += await conn.fetchval("SELECT count(*) FROM audit_outbox")
        finally:
            await conn.close()
    return total


async def drained(stack, timeout: float = 30) -> None:
    """Wait until every shard's outbox is empty (all events shipped and acknowledged)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await outbox_size(stack) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert await outbox_size(stack) == 0, "the outbox did not drain"


async def test_events_wait_while_audit_service_is_down_and_arrive_once(
    admin: Api, http, stack
) -> None:
    user_name = unique("aud.down")
    shard = stack.shard_map.shard_id_for(user_name)
    audit = stack.services["audit"]
    auditor = Api(http, stack.base_url, stack.token("audrey", ["auditor"]))
    for proc in audit:
        await proc.stop()
    try:
        await admin.create_patient(user_name)
        for i in range(99):
            reply = await admin.call(
                "PATCH", f"/v1/users/{user_name}", {"phone": f"+1-555-{i:04d}"}
            )
            assert reply.status == 200, reply.body
        reply = await auditor.call("GET", "/v1/audit/events", params={"entityId": user_name})
        assert reply.status == 503 and reply.problem and reply.headers.get("Retry-After")
        conn = await asyncpg.connect(stack.postgres[shard].dsn)
        try:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM audit_outbox WHERE entity_id = $1", user_name
            )
        finally:
            await conn.close()
        assert waiting == 100
        [leader] = await relay_leaders(http, stack, shard)
        for _ in range(30):  # the leader refreshes its backlog metrics every second
            backlog = await metric(http, leader.url, "medsvc_audit_outbox_backlog", shard)
            if backlog is not None and backlog >= 100:
                break
            await asyncio.sleep(0.2)
        assert backlog is not None and backlog >= 100
        assert await metric(http, leader.url, "medsvc_audit_outbox_oldest_age_seconds", shard) > 0
    finally:
        for proc in audit:
            await proc.start()
    events = await wait_for_events(auditor, 100, timeout=30, entityType="user", entityId=user_name)
    await drained(stack)
    events = await all_events(auditor, entityType="user", entityId=user_name)
    assert len(events) == 100 and len({e["eventId"] for e in events}) == 100
    assert [e["after"]["version"] for e in events] == list(range(1, 101)), "in commit order"
    assert [e["action"] for e in events] == ["create"] + ["update"] * 99


def names_on_shard(stack, shard: int, prefix: str) -> Iterator[str]:
    """An endless supply of fresh userNames that shard ``shard`` owns."""
    fresh = (f"{prefix}.{i}" for i in itertools.count())
    return (n for n in fresh if stack.shard_map.shard_id_for(n) == shard)


async def test_an_fe_server_killed_mid_burst_loses_no_event_and_invents_none(
    admin: Api, http, stack
) -> None:
    shard = 0
    leaders = await relay_leaders(http, stack, shard)
    assert len(leaders) == 1, "exactly one relay ships per shard"
    victim = leaders[0]  # the relay leader: its FE work and its relay die together
    prefix = unique("aud.kill")
    names = names_on_shard(stack, shard, prefix)
    patients = [await admin.create_patient(next(names)) for _ in range(4)]
    attempted = [p["userName"] for p in patients]
    acked_users = list(attempted)
    acked_visits: list[tuple[str, str]] = []
    acked_patches: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def writer(i: int) -> None:
        patient = patients[i % len(patients)]["userName"]
        while not stop.is_set():
            kind = i % 3
            try:
                if kind == 0:
                    name = next(names)
                    attempted.append(name)
                    reply = await admin.call("POST", "/v1/users", {
                        "userName": name, "role": "patient", "givenName": "K", "familyName": "Ill",
                        "birthDate": "1990-01-01"})  # fmt: skip
                    if reply.status == 201:
                        acked_users.append(name)
                elif kind == 1:
                    reply = await admin.call(
                        "POST",
                        f"/v1/users/{patient}/visits",
                        {"type": "emergency", "startedAt": "2026-11-20T09:00:00Z"},
                    )
                    if reply.status == 201:
                        acked_visits.append((patient, reply.body["visitId"]))
                else:
                    reply = await admin.call(
                        "PATCH", f"/v1/users/{patient}", {"email": f"{i}@example.org"}
                    )
                    if reply.status == 200:
                        acked_patches.append((patient, reply.body["version"]))
            except aiohttp.ClientError:
                pass

    writers = [asyncio.create_task(writer(i)) for i in range(18)]
    try:
        await asyncio.sleep(0.7)
        await victim.kill()
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await asyncio.gather(*writers)
        await victim.start()
    assert acked_users and acked_visits and acked_patches
    await drained(stack)
    print(
        f"\nburst: {len(attempted)} creates tried, {len(acked_users)} acknowledged; "
        f"{len(acked_visits)} visits and {len(acked_patches)} updates acknowledged"
    )

    shard_db = await asyncpg.connect(stack.postgres[shard].dsn)
    store = await asyncpg.connect(audit_dsn(stack))
    try:
        committed_users = {
            r["user_name"]
            for r in await shard_db.fetch(
                "SELECT user_name FROM users WHERE user_name LIKE $1", prefix + "%"
            )
        }
        user_ids = [p["userName"] for p in patients]
        committed_visits = {
            f"{r['user_name']}/{r['visit_id']}"
            for r in await shard_db.fetch(
                "SELECT user_name, visit_id FROM visits WHERE user_name = ANY($1)", user_ids
            )
        }
        versions = dict(
            await shard_db.fetch(
                "SELECT user_name, version FROM users WHERE user_name = ANY($1)", user_ids
            )
        )
        events = [
            orjson.loads(r["body"])
            for r in await store.fetch(
                "SELECT body FROM audit_events WHERE subject LIKE $1 ORDER BY seq", prefix + "%"
            )
        ]
    finally:
        await shard_db.close()
        await store.close()

    assert set(acked_users) <= committed_users, "every acknowledged create committed"
    assert committed_users <= set(attempted)
    creates = [
        e["entityId"] for e in events if e["entityType"] == "user" and e["action"] == "create"
    ]
    assert sorted(creates) == sorted(committed_users), (
        "one create event per committed user, no other"
    )
    visit_events = [e["entityId"] for e in events if e["entityType"] == "visit"]
    assert sorted(visit_events) == sorted(committed_visits), (
        "one event per committed visit, no other"
    )
    assert {f"{u}/{v}" for u, v in acked_visits} <= committed_visits
    for user_name, version in versions.items():
        history = [e["after"]["version"] for e in events if e["entityId"] == user_name]
        assert history == list(range(1, version + 1)), (user_name, history)
    for user_name, version in acked_patches:
        assert version <= versions[user_name]
    assert len({e["eventId"] for e in events}) == len(events)
    leaders = await relay_leaders(http, stack, shard)
    assert len(leaders) == 1
