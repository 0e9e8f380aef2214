"""The per-shard read cache: fast, and never stale after a write (issue: Redis read cache)."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from shared.cache import GROUP_MAX_ENTRIES, ReadCache, pack_entry, unpack_entry
from shared.cachekeys import user_group, visits_group
from shared.settings import FESettings
from tests.e2e.api import Api, unique


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


async def patient_on_shard(admin: Api, stack, shard: int) -> dict:
    while True:
        user = await admin.create_patient(unique("cache"))
        if stack.shard_map.shard_id_for(user["userName"]) == shard:
            return user


async def cache_events(http, stack, shard: int, entity: str) -> dict[str, float]:
    """Sum of the cache counters for ``shard`` of its FE servers and of the gateways, by event."""
    totals: dict[str, float] = {}
    for proc in [*stack.fe[shard], *stack.gateways]:
        async with http.get(f"{proc.url}/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            if family.name != "medsvc_cache_events":
                continue
            for sample in family.samples:
                if (
                    sample.name.endswith("_total")
                    and sample.labels["entity"] == entity
                    and sample.labels["shard"] == str(shard)
                ):
                    totals[sample.labels["event"]] = (
                        totals.get(sample.labels["event"], 0) + sample.value
                    )
    return totals


def delta(after: dict[str, float], before: dict[str, float], event: str) -> float:
    return after.get(event, 0) - before.get(event, 0)


async def test_reads_are_served_from_the_cache_and_see_every_write(admin: Api, stack, http) -> None:
    user = await patient_on_shard(admin, stack, 0)
    path = f"/v1/users/{user['userName']}"
    before = await cache_events(http, stack, 0, "user")
    for i in range(20):
        patched = await admin.call("PATCH", path, {"phone": f"+1 555 02{i:02d}"})
        assert patched.status == 200
        for _ in range(3):  # through both gateways and both FE servers of the shard
            read = await admin.call("GET", path)
            assert read.body["version"] == patched.body["version"], (
                "a read after a write saw the old version"
            )
            assert read.headers["ETag"] == f'"{patched.body["version"]}"'
    after = await cache_events(http, stack, 0, "user")
    assert delta(after, before, "hit") >= 20, after


async def test_visit_list_sees_a_new_visit_at_once(admin: Api, stack) -> None:
    user = await admin.create_patient(unique("vl"))
    path = f"/v1/users/{user['userName']}/visits"
    for i in range(5):
        assert len((await admin.call("GET", path)).body["items"]) == i
        visit = await admin.create_visit(user["userName"], startedAt=f"2026-09-0{i + 1}T08:00:00Z")
        assert (await admin.call("GET", path)).body["items"][0]["visitId"] == visit["visitId"]
    one = f"{path}/{visit['visitId']}"
    assert (await admin.call("GET", one)).body["version"] == 1
    await admin.call("PATCH", one, {"reason": "corrected"})
    assert (await admin.call("GET", one)).body["reason"] == "corrected"
    assert (await admin.call("GET", path)).body["items"][0]["reason"] == "corrected"


async def test_a_slow_reader_cannot_put_back_a_value_older_than_a_write(admin: Api, stack) -> None:
    """The stale-set race, made to happen: the reader loads v1, the writer commits v2 and
    invalidates, then the reader tries to fill. The cache must not end up holding v1."""
    user = await patient_on_shard(admin, stack, 0)
    name = user["userName"]
    cache = ReadCache(stack.shard_map.shard(0).redis, 0)
    db = await asyncpg.connect(stack.shard_map.shard(0).postgres)
    loaded, release = asyncio.Event(), asyncio.Event()

    async def slow_load() -> bytes:
        version = await db.fetchval("SELECT version FROM users WHERE user_name = $1", name)
        loaded.set()
        await release.wait()  # the barrier: the write happens here
        return pack_entry("patient", version, b"{}")

    try:
        reader = asyncio.create_task(cache.get("user", user_group(name), "u", slow_load))
        await loaded.wait()
        patched = await admin.call("PATCH", f"/v1/users/{name}", {"email": "race@example.org"})
        assert patched.status == 200 and patched.body["version"] == 2
        release.set()
        _, read_version, _ = unpack_entry(await reader)
        assert read_version == 1  # the reader's own answer predates the write: that is fine
        r = aioredis.Redis.from_url(stack.shard_map.shard(0).redis)
        stored = await r.hget(f"{{{user_group(name)}}}", "u")
        await r.aclose()
        assert stored is None or unpack_entry(stored)[1] == 2, "v1 was put back after the write"
        assert (await admin.call("GET", f"/v1/users/{name}")).body["version"] == 2
    finally:
        await db.close()
        await cache.close()


async def test_a_herd_of_misses_reads_the_database_once(admin: Api, stack, http) -> None:
    user = await patient_on_shard(admin, stack, 1)
    await admin.call(
        "PATCH", f"/v1/users/{user['userName']}", {"email": "cold@example.org"}
    )  # now cold
    before = await cache_events(http, stack, 1, "user")
    replies = await asyncio.gather(
        *(admin.call("GET", f"/v1/users/{user['userName']}") for _ in range(60))
    )
    assert {r.status for r in replies} == {200}
    assert {r.body["version"] for r in replies} == {2}
    after = await cache_events(http, stack, 1, "user")
    loads = (
        delta(after, before, "miss")
        + delta(after, before, "timeout")
        + delta(after, before, "bypass")
    )
    assert loads == 1, after


async def test_concurrent_readers_and_writers_leave_the_cache_equal_to_the_database(
    admin: Api, stack
) -> None:
    users = [await patient_on_shard(admin, stack, s) for s in (0, 0, 1, 1)]
    rng = random.Random(7)

    async def worker(n: int) -> None:
        for _ in range(40):
            name = rng.choice(users)["userName"]
            if rng.random() < 0.3:
                assert (
                    await admin.call("PATCH", f"/v1/users/{name}", {"phone": f"+1 555 {n:04d}"})
                ).status == 200
            else:
                assert (await admin.call("GET", f"/v1/users/{name}")).status == 200

    await asyncio.gather(*(worker(n) for n in range(16)))
    for user in users:
        shard = stack.shard_map.shard_for(user["userName"])
        conn = await asyncpg.connect(shard.postgres)
        db_version = await conn.fetchval(
            "SELECT version FROM users WHERE user_name = $1", user["userName"]
        )
        await conn.close()
        r = aioredis.Redis.from_url(shard.redis)
        stored = await r.hget(f"{{{user_group(user['userName'])}}}", "u")
        await r.aclose()
        if stored is not None:
            assert unpack_entry(stored)[1] == db_version, user["userName"]
        assert (await admin.call("GET", f"/v1/users/{user['userName']}")).body[
            "version"
        ] == db_version


async def test_redis_stopped_and_restarted_fails_no_read_and_serves_nothing_stale(
    admin: Api, stack
) -> None:
    """Reads go on from PostgreSQL; a write the FE server cannot fence is refused (503) and
    changes nothing, since other hops might still reach Redis (shared/cache.py)."""
    users = [await patient_on_shard(admin, stack, s) for s in (0, 1)]
    latest = {u["userName"]: 1 for u in users}
    applied = {u["userName"]: 0 for u in users}
    refused = {u["userName"]: 0 for u in users}
    failures: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def traffic(name: str) -> None:
        while not stop.is_set():
            patched = await admin.call("PATCH", f"/v1/users/{name}", {"phone": "+1 555 7777"})
            if patched.status == 503 and patched.problem and patched.headers.get("Retry-After"):
                refused[name] += 1
                await asyncio.sleep(0.05)
                continue
            if patched.status != 200:
                failures.append(("PATCH", patched.status))
                continue
            applied[name] += 1
            latest[name] = max(latest[name], patched.body["version"])
            floor = latest[name]  # every write acknowledged before this read began
            read = await admin.call("GET", f"/v1/users/{name}")
            if read.status != 200:
                failures.append(("GET", read.status))
            elif read.body["version"] < floor:
                failures.append(("stale", read.body["version"]))

    tasks = [asyncio.create_task(traffic(u["userName"])) for u in users for _ in range(2)]
    try:
        await asyncio.sleep(0.5)
        await stack.redis[0].stop()
        # Down until shard 0's writes have met it (bounded): on a loaded machine a fixed 1.5 s
        # may end before any write got through its fence retries to the refusal.
        deadline = asyncio.get_running_loop().time() + 15
        while refused[users[0]["userName"]] == 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        await stack.redis[0].start()
        await asyncio.sleep(2.5)  # past the breaker's cool-down: the cache is back in use
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert failures == []
    shard0, shard1 = (u["userName"] for u in users)
    assert refused[shard0] > 0 and refused[shard1] == 0, refused
    for name, version in latest.items():
        read = (await admin.call("GET", f"/v1/users/{name}")).body["version"]
        assert read == version == 1 + applied[name], "a refused write changed nothing"


async def test_cached_entries_are_served_only_to_those_allowed(
    admin: Api, stack, http, token
) -> None:
    """The gateway answers cached reads itself: it must apply the same role rules."""
    patient = await admin.create_patient(unique("priv"))
    visit = await admin.create_visit(patient["userName"])
    staff = unique("staff")
    assert (
        await admin.call(
            "POST",
            "/v1/users",
            {
                "userName": staff,
                "role": "clinician",
                "givenName": "S",
                "familyName": "T",
                "birthDate": "1980-01-01",
            },
        )
    ).status == 201
    paths = [
        f"/v1/users/{patient['userName']}",
        f"/v1/users/{patient['userName']}/visits",
        f"/v1/users/{patient['userName']}/visits/{visit['visitId']}",
    ]
    for path in [*paths, f"/v1/users/{staff}"]:  # fill the cache
        assert (await admin.call("GET", path)).status == 200
        assert (await admin.call("GET", path)).status == 200
    intruder = Api(http, stack.base_url, token(unique("other"), "patient"))
    for path in paths:
        assert (await intruder.call("GET", path)).status == 403, path
    for role in ("researcher", "auditor"):
        assert (
            await Api(http, stack.base_url, token("x", role)).call("GET", paths[0])
        ).status == 403
    doc = Api(http, stack.base_url, token("dr.other", "clinician"))
    assert (await doc.call("GET", f"/v1/users/{staff}")).status == 403
    assert (await doc.call("GET", paths[2])).status == 200
    assert (await Api(http, stack.base_url, None).call("GET", paths[0])).status == 401


async def test_a_patient_cannot_grow_their_cache_group_without_bound(
    admin: Api, stack, http, token
) -> None:
    """Distinct ``since=`` values each make a list page; the group keeps a bounded number."""
    user = await patient_on_shard(admin, stack, 0)
    name = user["userName"]
    visit = await admin.create_visit(name, startedAt="2026-03-01T08:00:00Z")
    me = Api(http, stack.base_url, token(name, "patient"))
    for minute in range(GROUP_MAX_ENTRIES * 2):
        since = f"2026-01-01T00:{minute // 60:02d}:{minute % 60:02d}Z"
        page = await me.call("GET", f"/v1/users/{name}/visits", params={"since": since})
        assert page.status == 200 and [v["visitId"] for v in page.body["items"]] == [
            visit["visitId"]
        ]
    r = aioredis.Redis.from_url(stack.shard_map.shard(0).redis)
    try:
        held = await r.hlen(f"{{{visits_group(name)}}}")
    finally:
        await r.aclose()
    assert 0 < held <= GROUP_MAX_ENTRIES
    # What stays cached is still right: a new visit shows at once on a cached page.
    later = await admin.create_visit(name, startedAt="2026-04-01T08:00:00Z")
    page = await me.call(
        "GET", f"/v1/users/{name}/visits", params={"since": "2026-01-01T00:00:05Z"}
    )
    assert [v["visitId"] for v in page.body["items"]] == [later["visitId"], visit["visitId"]]


async def test_entries_filled_together_do_not_expire_together(admin: Api, stack) -> None:
    """Many patients read at once (a clinic opening, a cache refilled after a Redis restart)
    fill their entries in the same seconds. Each entry lives between half the TTL and the
    whole of it, so they do not all expire, and send all their readers to PostgreSQL, at once."""
    ttl = FESettings.model_fields["cache_ttl"].default  # the stack's FE servers run with it
    users = [await admin.create_patient(unique("ttl")) for _ in range(40)]
    replies = await asyncio.gather(
        *(admin.call("GET", f"/v1/users/{u['userName']}") for u in users)
    )
    assert {r.status for r in replies} == {200}
    redises = {s.id: aioredis.Redis.from_url(s.redis) for s in stack.shard_map.shards}
    try:
        lives = [
            await redises[stack.shard_map.shard_id_for(u["userName"])].pttl(
                f"{{{user_group(u['userName'])}}}"
            )
            / 1000
            for u in users
        ]
    finally:
        for r in redises.values():
            await r.aclose()
    assert all(ttl / 2 - 30 < life <= ttl for life in lives), lives  # 30 s: this test's time
    assert max(lives) - min(lives) > ttl / 4, lives  # spread, not one moment
