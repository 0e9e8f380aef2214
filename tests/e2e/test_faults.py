"""Operator scenarios: a shard's database stops, an FE server or a gateway is killed.

Each scenario puts the stack back as it found it.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.e2e.api import Api, unique


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


async def users_on_each_shard(admin: Api, stack) -> dict[int, str]:
    found: dict[int, str] = {}
    while len(found) < len(stack.shard_map.shards):
        user = await admin.create_patient()
        found.setdefault(stack.shard_map.shard_id_for(user["userName"]), user["userName"])
    return found


async def test_a_user_is_stored_on_the_shard_the_map_names(admin: Api, stack) -> None:
    by_shard = await users_on_each_shard(admin, stack)
    for shard_id, user_name in by_shard.items():
        for other in stack.shard_map.shards:
            conn = await asyncpg.connect(other.postgres)
            try:
                count = await conn.fetchval(
                    "SELECT count(*) FROM users WHERE user_name = $1", user_name
                )
            finally:
                await conn.close()
            assert count == (1 if other.id == shard_id else 0), (user_name, other.id)


async def test_when_a_shards_database_stops_only_its_users_get_503(admin: Api, stack) -> None:
    by_shard = await users_on_each_shard(admin, stack)
    down, up = by_shard[0], by_shard[1]
    await stack.postgres[0].stop()
    try:
        reply = await admin.call("GET", f"/v1/users/{down}/visits")
        assert reply.status == 503 and reply.problem and reply.headers.get("Retry-After")
        write = await admin.call("PATCH", f"/v1/users/{down}", {"email": "down@example.org"})
        assert write.status == 503 and write.problem
        assert (await admin.call("GET", f"/v1/users/{up}/visits")).status == 200
        assert (
            await admin.call("PATCH", f"/v1/users/{up}", {"email": "up@example.org"})
        ).status == 200
        search = await admin.call("GET", "/v1/users", params={"familyName": "Ient"})
        assert search.status == 503 and search.headers.get("Retry-After"), (
            "never a silently partial list"
        )
    finally:
        await stack.postgres[0].start()
    for _ in range(50):
        if (await admin.call("GET", f"/v1/users/{down}")).status == 200:
            break
        await asyncio.sleep(0.2)
    reply = await admin.call("GET", f"/v1/users/{down}")
    assert reply.status == 200 and reply.body.get("email") != "down@example.org"
    assert (await admin.call("GET", "/v1/users", params={"familyName": "Ient"})).status == 200


async def test_killing_an_fe_server_fails_no_read_and_loses_no_acknowledged_write(
    admin: Api, stack
) -> None:
    patients = list((await users_on_each_shard(admin, stack)).values())
    victim = stack.fe[0][0]
    acknowledged: list[tuple[str, str]] = []
    failed_reads: list[int] = []
    stop = asyncio.Event()

    async def reader(user_name: str) -> None:
        while not stop.is_set():
            reply = await admin.call("GET", f"/v1/users/{user_name}/visits")
            if reply.status != 200:
                failed_reads.append(reply.status)

    async def writer(user_name: str) -> None:
        while not stop.is_set():
            reply = await admin.call(
                "POST",
                f"/v1/users/{user_name}/visits",
                {"type": "emergency", "startedAt": "2026-11-22T01:00:00Z"},
            )
            if reply.status == 201:
                acknowledged.append((user_name, reply.body["visitId"]))
            else:
                assert reply.status == 503 and reply.problem, reply.body  # not acknowledged

    tasks = [asyncio.create_task(f(u)) for u in patients for f in (reader, reader, writer)]
    try:
        await asyncio.sleep(0.5)
        await victim.kill()
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await victim.start()
    assert failed_reads == []
    assert acknowledged
    for user_name, visit_id in acknowledged:
        assert (await admin.call("GET", f"/v1/users/{user_name}/visits/{visit_id}")).status == 200


async def test_killing_a_gateway_fails_no_read(admin: Api, stack) -> None:
    user = await admin.create_patient(unique("gw"))
    victim = stack.gateways[0]
    await victim.kill()
    try:
        replies = await asyncio.gather(
            *(admin.call("GET", f"/v1/users/{user['userName']}") for _ in range(40))
        )
        assert [r.status for r in replies] == [200] * 40
    finally:
        await victim.start()
