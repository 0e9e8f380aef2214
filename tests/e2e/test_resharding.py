"""Growth, end to end: a shard added to a running stack, buckets moved to it under load.

Its own stack (2 shards × 2 FE servers, 2 gateways, nginx): adding a shard and moving buckets
must not disturb the other modules' session stack. The resharder runs as the operator runs it,
``python -m resharder move ...`` in a subprocess, while a load generator reads and writes
users and visits of moving and non-moving buckets through nginx.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from deploy.localstack import Stack
from deploy.localstack.stack import REPO_ROOT
from deploy.localstack.throwaway import throwaway_stack
from resharder.move import STALL_POINTS
from shared.cachekeys import user_group
from shared.ownership import OWNERSHIP_CUT_LOCK
from shared.shardmap import bucket_of, load_shard_map
from tests.e2e.api import Api

pytestmark = pytest.mark.timeout(600)


@pytest_asyncio.fixture(scope="module")
async def grow(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    async with throwaway_stack(
        "medsvc-grow-", keep=lambda: request.session.testsfailed > 0, fast=True
    ) as st:
        yield st


@pytest_asyncio.fixture
async def admin(grow: Stack) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        yield Api(http, grow.base_url, grow.token("admin", ["admin"]))


def env(stack: Stack) -> dict[str, str]:
    return {
        **os.environ,
        "MEDSVC_SHARD_MAP": str(stack.shard_map_path),
        "MEDSVC_CENTRAL_DSN": stack.central_dsn,
        "PYTHONUNBUFFERED": "1",
    }


async def resharder(stack: Stack, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "resharder",
        *args,
        cwd=REPO_ROOT,
        env=env(stack),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, dict[str, Any], str]:
    out, err = await proc.communicate()
    text = out.decode()
    doc = orjson.loads(text.strip().splitlines()[-1]) if text.strip().startswith("{") else {}
    return proc.returncode or 0, doc, err.decode()


async def move_phase(stack: Stack, move_id: int | None = None) -> tuple[int, str] | None:
    conn = await asyncpg.connect(stack.central_dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('resharder_moves') IS NOT NULL"):
            return None
        row = await conn.fetchrow(
            "SELECT move_id, phase FROM resharder_moves ORDER BY move_id DESC LIMIT 1"
        )
        return (row["move_id"], row["phase"]) if row else None
    finally:
        await conn.close()


async def wait_phase(stack: Stack, phases: set[str], after: int = 0, timeout: float = 120) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        got = await move_phase(stack)
        if got and got[0] > after and got[1] in phases:
            return got[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no move reached {phases}")


async def last_move_id(stack: Stack) -> int:
    got = await move_phase(stack)
    return got[0] if got else 0


def names_in(lo: int, hi: int, count: int, prefix: str) -> list[str]:
    """``count`` userNames whose buckets fall in lo..hi."""
    out = []
    for i in itertools.count():
        name = f"{prefix}.{i}"
        if lo <= bucket_of(name) <= hi:
            out.append(name)
            if len(out) == count:
                return out
    raise AssertionError("unreachable")


async def owners(stack: Stack, shard: int, lo: int, hi: int) -> set[int]:
    conn = await asyncpg.connect(stack.postgres[shard].dsn)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT owner FROM shard_buckets WHERE bucket BETWEEN $1 AND $2", lo, hi
        )
        return {r["owner"] for r in rows}
    finally:
        await conn.close()


async def rows_in(stack: Stack, shard: int, lo: int, hi: int) -> int:
    conn = await asyncpg.connect(stack.postgres[shard].dsn)
    try:
        return sum(
            [
                await conn.fetchval(
                    f"SELECT count(*) FROM {t} WHERE bucket BETWEEN $1 AND $2", lo, hi
                )
                for t in ("users", "visits", "study_consents")
            ]
        )
    finally:
        await conn.close()


async def assert_no_replication_left(stack: Stack) -> None:
    """No shard keeps anything of a finished or rolled-back move: no publication, subscription,
    slot (the streams' nor a table sync's), replication origin or fence marker."""
    for shard, server in stack.postgres.items():
        conn = await asyncpg.connect(server.dsn)
        try:
            for what in ("pg_publication", "pg_subscription", "pg_replication_slots",
                         "pg_replication_origin", "move_markers"):  # fmt: skip
                assert await conn.fetchval(f"SELECT count(*) FROM {what}") == 0, (shard, what)
        finally:
            await conn.close()


# -- ownership in the databases ------------------------------------------------------------


async def test_the_databases_compute_the_buckets_and_refuse_what_they_do_not_own(
    grow: Stack, admin: Api
) -> None:
    name = names_in(0, 511, 1, "own")[0]  # shard 0's
    await admin.create_patient(name)
    conn = await asyncpg.connect(grow.postgres[1].dsn)
    try:
        for probe in ("alice.smith", "bob", "zed", name):
            assert await conn.fetchval("SELECT medsvc_bucket($1)", probe) == bucket_of(probe)
        # A write on the wrong shard is refused by the database itself, whatever the caller.
        with pytest.raises(asyncpg.PostgresError) as refused:
            async with conn.transaction():
                await conn.execute("SELECT set_config('medsvc.actor', 'test', true)")
                await conn.execute(
                    "INSERT INTO users (user_name, role, given_name, family_name, birth_date)"
                    " VALUES ($1, 'patient', 'A', 'B', '1980-01-01')",
                    name,
                )
        assert refused.value.sqlstate == "MS421"
    finally:
        await conn.close()
    # A process with a stale map (here: shard 1's FE server asked directly) answers 421 and
    # changes nothing; through nginx the same user is served by its owner.
    fe1 = grow.fe[1][0].url
    headers = {
        "Authorization": f"Bearer {admin.token}",
        "Content-Type": "application/merge-patch+json",
    }
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fe1}/v1/users/{name}", headers=headers) as resp:
            assert resp.status == 421
            assert resp.headers["Content-Type"].startswith("application/problem+json")
        async with http.patch(
            f"{fe1}/v1/users/{name}", data=b'{"phone": "+1-555-0199"}', headers=headers
        ) as resp:
            assert resp.status == 421
    reply = await admin.call("GET", f"/v1/users/{name}")
    assert reply.status == 200 and reply.body["phone"] is None and reply.body["version"] == 1


# -- add a shard, then move a quarter of shard 0 under load --------------------------------


@dataclass
class Load:
    """Readers and writers through nginx; what was acknowledged, what failed."""

    api: Api
    users: list[str]
    failures: list[str] = field(default_factory=list)
    phones: dict[str, str] = field(default_factory=dict)  # last acknowledged phone per user
    visits: dict[str, dict[str, Any]] = field(default_factory=dict)  # acknowledged visits
    requests: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, mine: list[str], seed: int) -> None:
        rnd = random.Random(seed)
        counter = itertools.count()
        while not self.stop.is_set():
            user = rnd.choice(mine)
            op = rnd.random()
            self.requests += 1
            try:
                if op < 0.5:
                    r = await self.api.call("GET", f"/v1/users/{user}")
                    ok = r.status == 200 and (
                        user not in self.phones or r.body["phone"] == self.phones[user]
                    )
                    if not ok:
                        self.failures.append(f"GET {user}: {r.status} {r.body}")
                elif op < 0.65:
                    r = await self.api.call(
                        "GET", f"/v1/users/{user}/visits", params={"limit": "50"}
                    )
                    if r.status != 200:
                        self.failures.append(f"GET visits {user}: {r.status}")
                elif op < 0.85:
                    phone = f"+1-555-{next(counter) % 10000:04d}"
                    r = await self.api.call(
                        "PATCH",
                        f"/v1/users/{user}",
                        raw=orjson.dumps({"phone": phone}),
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
                    if r.status == 200:
                        self.phones[user] = phone
                    else:
                        self.failures.append(f"PATCH {user}: {r.status} {r.body}")
                else:
                    r = await self.api.call(
                        "POST",
                        f"/v1/users/{user}/visits",
                        {
                            "type": "outpatient",
                            "startedAt": "2026-11-20T09:00:00Z",
                            "reason": f"load {seed}",
                        },
                    )
                    if r.status == 201:
                        self.visits[r.body["visitId"]] = r.body
                    else:
                        self.failures.append(f"POST visit {user}: {r.status} {r.body}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.failures.append(f"{user}: {type(exc).__name__}")

    async def run(self, workers: int) -> None:
        # Each user has one writer, so that its last acknowledged write is well defined.
        parts = [self.users[i::workers] for i in range(workers)]
        await asyncio.gather(*(self.worker(p, i) for i, p in enumerate(parts)))


async def test_add_a_shard_and_move_a_quarter_of_shard_0_under_load(
    grow: Stack, admin: Api
) -> None:
    before = load_shard_map(grow.shard_map_path)
    new_id = await grow.add_shard()
    after = load_shard_map(grow.shard_map_path)
    assert new_id == 2 and after.version > before.version and after.shard(2).buckets == []

    # The running gateways learn of it without a restart (each reports the map it routes with).
    async with aiohttp.ClientSession() as http:
        for gw in grow.gateways:
            for _ in range(100):
                async with http.get(f"{gw.url}/metrics") as resp:
                    text = await resp.text()
                if f"medsvc_shard_map_version {float(after.version)}" in text:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{gw.name} still runs an older map")

    moving = names_in(0, 127, 24, "mv")
    staying = names_in(128, 511, 8, "st") + names_in(512, 1023, 8, "other")
    for name in moving + staying:
        await admin.create_patient(name, familyName="Growth")
        await admin.create_visit(name)
    load = Load(admin, moving + staying)
    generator = asyncio.create_task(load.run(workers=6))
    await asyncio.sleep(1.0)

    proc = await resharder(grow, "move", "--buckets", "0-127", "--to", "2", "--json")
    code, summary, err = await finish(proc)
    await asyncio.sleep(1.0)  # and some load on the new owner
    load.stop.set()
    await generator

    print(
        f"\nmove under load: {summary}; {load.requests} requests, "
        f"{len(load.phones)} users written, {len(load.visits)} visits created"
    )
    assert code == 0, err
    assert summary["outcome"] == "done"
    for table, diff in summary["diff"].items():
        assert diff == {"missing": 0, "extra": 0, "mismatched": 0, "notCompared": 0}, table
    assert summary["rows"]["users"] == len(moving)
    assert summary["streams"] > 1  # the copy ran in parallel streams over sub-ranges
    assert load.failures == [] and load.requests > 100
    await assert_no_replication_left(grow)

    # Ownership flipped in the databases; the source's copies are gone; the map says so.
    assert await owners(grow, 0, 0, 127) == {2} and await owners(grow, 2, 0, 127) == {2}
    assert await rows_in(grow, 0, 0, 127) == 0 and await rows_in(grow, 2, 0, 127) > 0
    final = load_shard_map(grow.shard_map_path)
    assert final.shard(2).buckets == [(0, 127)] and final.version == summary["mapVersion"]

    # Every acknowledged write reads back, moved or not.
    for user, phone in load.phones.items():
        reply = await admin.call("GET", f"/v1/users/{user}")
        assert reply.status == 200 and reply.body["phone"] == phone, user
    for visit_id, visit in load.visits.items():
        reply = await admin.call("GET", f"/v1/users/{visit['userName']}/visits/{visit_id}")
        assert reply.status == 200 and reply.body == visit

    # A search lists each user once.
    found: list[str] = []
    cursor = None
    while True:
        params = {"familyName": "Growth", "limit": "100", **({"cursor": cursor} if cursor else {})}
        reply = await admin.call("GET", "/v1/users", params=params)
        assert reply.status == 200
        found += [u["userName"] for u in reply.body["items"]]
        cursor = reply.body["nextCursor"]
        if not cursor:
            break
    assert sorted(found) == sorted(moving + staying)

    # Audit: each moved user's events are exactly its create and its acknowledged updates, in
    # version order (none added by the copy, none lost or doubled), and the chain verifies.
    for user in moving:
        reply = await admin.call("GET", f"/v1/users/{user}")
        expected = reply.body["version"]
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            events = (
                await admin.call(
                    "GET",
                    "/v1/audit/events",
                    params={"entityType": "user", "entityId": user, "limit": "200"},
                )
            ).body["items"]
            if len(events) >= expected or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert [e["after"]["version"] for e in events] == list(range(1, expected + 1)), user
        assert events[0]["action"] == "create"
    verdict = await admin.call("GET", "/v1/audit/verify")
    assert verdict.status == 200 and verdict.body["ok"] is True

    # status names the finished move and the map version of the processes it can reach.
    proc = await resharder(grow, "status", "--json", *(f"--url={g.url}" for g in grow.gateways))
    out, _ = await proc.communicate()
    status = orjson.loads(out)
    assert status["mapVersion"] == final.version
    assert status["moves"][0]["phase"] == "done"
    assert all(v == final.version for v in status["processes"].values()), status["processes"]


async def test_a_move_stalled_past_the_fence_limit_aborts_and_the_source_keeps_everything(
    grow: Stack, admin: Api
) -> None:
    lo, hi = 128, 191
    users = names_in(lo, hi, 6, "ab")
    for name in users:
        await admin.create_patient(name)
    target = grow.postgres[2].dsn
    version_before = load_shard_map(grow.shard_map_path).version
    previous = await last_move_id(grow)
    proc = await resharder(
        grow,
        "move",
        "--buckets",
        f"{lo}-{hi}",
        "--to",
        "2",
        "--json",
        "--fence-limit",
        "1",
        "--hold-before-fence",
        "3",
    )
    await wait_phase(grow, {"catchup"}, after=previous)
    # Stall the catch-up: hold a lock on the target's copy of a moving user, then change that
    # user on the source. The target cannot apply it, so the fence never sees it arrive.
    blocker = await asyncpg.connect(target)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("SELECT 1 FROM users WHERE user_name = $1 FOR UPDATE", users[0])
    patched = await admin.call(
        "PATCH",
        f"/v1/users/{users[0]}",
        raw=b'{"phone": "+1-555-0142"}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status == 200
    try:
        await wait_phase(grow, {"rollback", "aborted"}, after=previous)
    finally:
        await tx.rollback()
        await blocker.close()
    code, summary, err = await finish(proc)
    assert code == 1, err
    assert summary["outcome"] == "aborted" and "fence limit" in summary["reason"]

    # The source owns the buckets, in its database and in the map; the target kept nothing.
    assert await owners(grow, 0, lo, hi) == {0} and await owners(grow, 2, lo, hi) == {0}
    assert await rows_in(grow, 2, lo, hi) == 0
    assert load_shard_map(grow.shard_map_path).version == version_before
    await assert_no_replication_left(grow)
    # Nothing lost: the write made during the move is there, every user reads and writes.
    reply = await admin.call("GET", f"/v1/users/{users[0]}")
    assert reply.status == 200 and reply.body["phone"] == "+1-555-0142"
    for name in users:
        assert (
            await admin.call(
                "PATCH",
                f"/v1/users/{name}",
                raw=b'{"phone": "+1-555-0143"}',
                headers={"Content-Type": "application/merge-patch+json"},
            )
        ).status == 200


async def test_overlapping_moves_refuse_each_other_and_a_killed_move_resumes(
    grow: Stack, admin: Api
) -> None:
    lo, hi = 192, 255
    users = names_in(lo, hi, 6, "rs")
    for name in users:
        await admin.create_patient(name)
        await admin.create_visit(name)
    previous = await last_move_id(grow)
    first = await resharder(
        grow, "move", "--buckets", f"{lo}-{hi}", "--to", "2", "--json", "--hold-before-fence", "30"
    )
    await wait_phase(grow, {"catchup"}, after=previous)
    # Another move of overlapping buckets is refused while this one is unfinished.
    other = await resharder(grow, "move", "--buckets", f"{hi}-{hi + 10}", "--to", "2", "--json")
    code, _, err = await finish(other)
    assert code == 2 and "overlaps" in err
    # Kill the first in its catch-up, then run the same move again: it resumes and finishes.
    first.send_signal(signal.SIGKILL)
    await first.wait()
    again = await resharder(grow, "move", "--buckets", f"{lo}-{hi}", "--to", "2", "--json")
    code, summary, err = await finish(again)
    assert code == 0, err
    assert summary["resumed"] is True and summary["outcome"] == "done"
    assert all(d["missing"] == d["extra"] == d["mismatched"] == 0 for d in summary["diff"].values())
    assert await owners(grow, 0, lo, hi) == {2} and await rows_in(grow, 0, lo, hi) == 0
    for name in users:
        reply = await admin.call("GET", f"/v1/users/{name}/visits")
        assert reply.status == 200 and len(reply.body["items"]) == 1


async def test_a_study_after_a_move_emits_exactly_the_changes_made_during_and_after_it(
    grow: Stack, admin: Api
) -> None:
    from tests.e2e.studies_client import Researcher, by_kind, consent, keys

    lo, hi = 256, 319
    users = names_in(lo, hi, 6, "sy")
    visits = {}
    for name in users:
        await admin.create_patient(name)
        visits[name] = await admin.create_visit(name)
    research = Researcher(admin)
    study = await research.create_study()
    for name in users:
        await consent(admin, name, study)
    _, first = await research.run(study)
    assert len(by_kind(first)["participant"]) == 6 and len(by_kind(first)["visit"]) == 6

    async def patch(name: str, phone: str) -> None:
        reply = await admin.call(
            "PATCH",
            f"/v1/users/{name}",
            raw=orjson.dumps({"phone": phone}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert reply.status == 200, reply.body

    previous = await last_move_id(grow)
    proc = await resharder(
        grow, "move", "--buckets", f"{lo}-{hi}", "--to", "2", "--json", "--hold-before-fence", "2"
    )
    await wait_phase(grow, {"catchup"}, after=previous)
    # Changes during the move (on the source) and after it (on the target); users[4] and
    # users[5] and the other visits do not change: they moved, nothing more.
    during = await admin.create_visit(users[0], reason="during the move")
    await patch(users[1], "+1-555-0101")
    code, summary, err = await finish(proc)
    assert code == 0 and summary["outcome"] == "done", err
    after = await admin.create_visit(users[2], reason="after the move")
    await patch(users[3], "+1-555-0103")

    k = keys(study)
    _, second = await research.run(study)
    got = by_kind(second)
    # Exactly the changes, once each: not a moved participant or visit more.
    assert sorted(r["vid"] for r in got["visit"]) == sorted(
        [k.vid(during["visitId"]), k.vid(after["visitId"])]
    )
    assert sorted(r["pid"] for r in got["participant"]) == sorted(
        [k.pid(users[1]), k.pid(users[3])]
    )
    assert got["withdrawal"] == []
    # The next run, with no change since, emits nothing.
    _, third = await research.run(study)
    assert third == []


async def audit_in_order(admin: Api, user: str) -> None:
    """The user's audit events: its create and its updates, versions 1..current, each once."""
    reply = await admin.call("GET", f"/v1/users/{user}")
    expected = reply.body["version"]
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        events = (
            await admin.call(
                "GET",
                "/v1/audit/events",
                params={"entityType": "user", "entityId": user, "limit": "200"},
            )
        ).body["items"]
        if len(events) >= expected or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert [e["after"]["version"] for e in events] == list(range(1, expected + 1)), user
    assert events[0]["action"] == "create"


async def stalled(stack: Stack, point: str, *args: str) -> asyncio.subprocess.Process:
    """A move started with the resharder told to stall at ``point``, once it says it has."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "resharder", *args, cwd=REPO_ROOT,
        env={**env(stack), "MEDSVC_RESHARDER_STALL": point},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    lines = []
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=120)
        lines.append(line.decode())
        assert line, f"the move ended before stalling at {point}: {''.join(lines)}"
        if f"stalled at {point}" in line.decode():
            return proc


# One bucket range of shard 0 per stall point (shard 0 owns 0-511; lower ranges are taken).
_KILLS = {point: (384 + 16 * i, 399 + 16 * i) for i, point in enumerate(STALL_POINTS)}


@pytest.mark.parametrize("point", STALL_POINTS)
async def test_a_move_killed_in_any_phase_resumes_and_loses_nothing(
    grow: Stack, admin: Api, point: str
) -> None:
    lo, hi = _KILLS[point]
    users = names_in(lo, hi, 3, f"k{point}")
    for name in users:
        await admin.create_patient(name)
        await admin.create_visit(name)
    args = ("move", "--buckets", f"{lo}-{hi}", "--to", "2", "--json")
    first = await stalled(grow, point, *args)
    if point == "fence":
        # Writes to the moving users wait while the fence holds: killed, they go through.
        writes = [
            asyncio.create_task(
                admin.call(
                    "PATCH",
                    f"/v1/users/{name}",
                    raw=b'{"phone": "+1-555-0170"}',
                    headers={"Content-Type": "application/merge-patch+json"},
                )
            )  # fmt: skip
            for name in users
        ]
        await asyncio.sleep(0.3)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    if point == "fence":
        assert [r.status for r in await asyncio.gather(*writes)] == [200] * len(users)

    # Meanwhile writes to the moving users go on; none may be lost (all at once: between the
    # flip and the switch each waits until the gateway follows the refusing shard's hint).
    async def write(name: str) -> dict[str, Any]:
        reply = await admin.call(
            "PATCH",
            f"/v1/users/{name}",
            raw=b'{"phone": "+1-555-0177"}',
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert reply.status == 200, reply.body
        return await admin.create_visit(name, reason=f"killed in {point}")

    created = dict(zip(users, await asyncio.gather(*(write(name) for name in users))))
    again = await resharder(grow, *args)
    code, summary, err = await finish(again)
    assert code == 0, err
    assert summary["outcome"] == "done" and summary["resumed"] is True, summary
    assert all(d["missing"] == d["extra"] == d["mismatched"] == 0 for d in summary["diff"].values())
    assert await owners(grow, 0, lo, hi) == {2} and await owners(grow, 2, lo, hi) == {2}
    assert await rows_in(grow, 0, lo, hi) == 0
    await assert_no_replication_left(grow)
    for name in users:
        reply = await admin.call("GET", f"/v1/users/{name}")
        assert reply.status == 200 and reply.body["phone"] == "+1-555-0177"
        listed = await admin.call("GET", f"/v1/users/{name}/visits")
        assert listed.status == 200 and len(listed.body["items"]) == 2
        assert created[name] in listed.body["items"]
        await audit_in_order(admin, name)
    verdict = await admin.call("GET", "/v1/audit/verify")
    assert verdict.status == 200 and verdict.body["ok"] is True


async def test_a_copy_that_differs_aborts_before_the_flip_and_the_source_keeps_everything(
    grow: Stack, admin: Api
) -> None:
    lo, hi = 496, 511
    users = names_in(lo, hi, 3, "cs")
    for name in users:
        await admin.create_patient(name)
        await admin.create_visit(name)
    version_before = load_shard_map(grow.shard_map_path).version
    first = await stalled(grow, "catchup", "move", "--buckets", f"{lo}-{hi}", "--to", "2",
                          "--json")  # fmt: skip
    first.send_signal(signal.SIGKILL)
    await first.wait()
    # Corrupt the target's copy of one moving user (as replication apply writes: no trigger
    # but the bucket's), then let the move go on.
    conn = await asyncpg.connect(grow.postgres[2].dsn)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            status = await conn.execute(
                "UPDATE users SET given_name = 'Corrupted' WHERE user_name = $1", users[0]
            )
            assert status == "UPDATE 1"
    finally:
        await conn.close()
    proc = await resharder(grow, "move", "--buckets", f"{lo}-{hi}", "--to", "2", "--json")
    code, summary, err = await finish(proc)
    assert code == 1, err
    assert summary["outcome"] == "aborted" and "checksums differ" in summary["reason"], summary
    assert "users" in summary["reason"]
    # The source owns, in both databases and in the map; the target kept nothing.
    assert await owners(grow, 0, lo, hi) == {0} and await owners(grow, 2, lo, hi) == {0}
    assert await rows_in(grow, 2, lo, hi) == 0 and await rows_in(grow, 0, lo, hi) == 6
    assert load_shard_map(grow.shard_map_path).version == version_before
    await assert_no_replication_left(grow)
    for name in users:
        reply = await admin.call("GET", f"/v1/users/{name}")
        assert reply.status == 200 and reply.body["givenName"] != "Corrupted"


async def test_a_run_takes_its_snapshots_between_moves_never_between_two_flips(
    grow: Stack, admin: Api
) -> None:
    from tests.e2e.studies_client import Researcher, consent

    lo, hi = 320, 351
    name = names_in(lo, hi, 1, "cut")[0]
    await admin.create_patient(name)
    research = Researcher(admin)
    study = await research.create_study()
    await consent(admin, name, study)

    # A move between its flips holds the ownership cut on its shards: a run waits for it.
    mover = await asyncpg.connect(grow.postgres[1].dsn)
    try:
        tx = mover.transaction()
        await tx.start()
        await mover.execute("SELECT pg_advisory_xact_lock($1)", OWNERSHIP_CUT_LOCK)
        started = await research.start(study)
        assert started.status == 202, started.body
        await asyncio.sleep(1.5)
        reply = await admin.call("GET", started.headers["Location"])
        assert reply.body["status"] == "running"
        await tx.rollback()
        run = await research.wait(started.headers["Location"])
        assert run["status"] == "succeeded", run
    finally:
        await mover.close()

    # A run holds it while it takes its snapshots: a move's flip waits for it (here, past
    # its fence limit: the move aborts, the source keeps the buckets).
    reader = await asyncpg.connect(grow.postgres[0].dsn)
    try:
        await reader.execute("SELECT pg_advisory_lock_shared($1)", OWNERSHIP_CUT_LOCK)
        proc = await resharder(
            grow, "move", "--buckets", f"{lo}-{hi}", "--to", "2", "--json", "--fence-limit", "2"
        )
        code, summary, err = await finish(proc)
    finally:
        await reader.close()
    assert code == 1, err
    assert "extraction's snapshots" in summary["reason"], summary
    assert await owners(grow, 0, lo, hi) == {0} and await owners(grow, 2, lo, hi) == {0}

    # A move killed between its flips leaves two owners: a run refuses to read them twice.
    bucket = bucket_of(name)
    target = await asyncpg.connect(grow.postgres[2].dsn)
    try:
        await target.execute("UPDATE shard_buckets SET owner = 2 WHERE bucket = $1", bucket)
        started = await research.start(study)
        run = await research.wait(started.headers["Location"])
        assert run["status"] == "failed"
        assert f"bucket {bucket} is owned by shards 0 and 2" in run["error"], run
    finally:
        await target.execute("UPDATE shard_buckets SET owner = 0 WHERE bucket = $1", bucket)
        await target.close()
    run, records = await research.run(study)
    assert records == []


async def test_a_gateway_following_an_owner_hint_before_the_switch_serves_no_stale_read(
    grow: Stack, admin: Api
) -> None:
    lo, hi = 352, 383
    name = names_in(lo, hi, 1, "hint")[0]
    await admin.create_patient(name)
    # Cached on the source: the first read fills shard 0's Redis, the second is served from it.
    for _ in range(2):
        assert (await admin.call("GET", f"/v1/users/{name}")).status == 200
    args = ("move", "--buckets", f"{lo}-{hi}", "--to", "2", "--json")
    # The move stops for good between its flip and its switch: the map still names shard 0,
    # whose database refuses; the gateway follows the owner it names, shard 2, which writes.
    first = await stalled(grow, "flipped", *args)
    try:
        patched = await admin.call(
            "PATCH",
            f"/v1/users/{name}",
            raw=b'{"phone": "+1-555-0188"}',
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert patched.status == 200, patched.body
        # The next read, routed by the same map, must not be shard 0's cached copy.
        reply = await admin.call("GET", f"/v1/users/{name}")
        assert reply.status == 200 and reply.body["phone"] == "+1-555-0188", reply.body
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    code, summary, err = await finish(await resharder(grow, *args))
    assert code == 0 and summary["outcome"] == "done", err
    reply = await admin.call("GET", f"/v1/users/{name}")
    assert reply.status == 200 and reply.body["phone"] == "+1-555-0188"


class HeldReplies:
    """A TCP proxy that holds back its server's replies while ``held`` (then delivers them)."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 5432
        self.held = False
        self.waiting = 0  # bytes held back
        self._release = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def release(self) -> None:
        self.held = False
        self._release.set()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.links):
            w.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self.links |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer, hold=False),
            self._pump(up_reader, writer, hold=True),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self.links.discard(w)
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: bool
    ) -> None:
        while data := await reader.read(65536):
            if hold and self.held:
                self.waiting += len(data)
                await self._release.wait()
            writer.write(data)
            await writer.drain()


async def test_a_read_checked_before_the_flip_cannot_fill_the_old_shards_cache_after_it(
    grow: Stack, admin: Api, tmp_path: Any
) -> None:
    from deploy.localstack.ports import free_port
    from deploy.localstack.service import ServiceProcess

    lo, hi = 320, 351  # (the ownership-cut test's move of these aborted: shard 0 owns them)
    name, other = names_in(lo, hi, 2, "refill")
    for user in (name, other):
        await admin.create_patient(user)
    redis_url = grow.shard_map.shard(0).redis
    assert redis_url
    # A third FE server of shard 0 whose database replies the test can hold back.
    proxy = HeldReplies(grow.postgres[0].dsn)
    port = await proxy.start()
    doc = orjson.loads(grow.shard_map_path.read_bytes())
    for shard in doc["shards"]:
        if shard["id"] == 0:
            parts = urlsplit(shard["postgres"])
            shard["postgres"] = parts._replace(
                netloc=parts.netloc.replace(f":{parts.port}", f":{port}")
            ).geturl()
    (tmp_path / "shardmap.json").write_bytes(orjson.dumps(doc))
    twin = grow.fe[0][0]
    fe = ServiceProcess(
        "fe-shard-0-held", twin.module, free_port(), grow.logs_dir / "fe-shard-0-held.log",
        args=twin.argv[3 : twin.argv.index("--port")],
        # One database connection, warmed below: the held read's statements are prepared, so
        # its ownership check runs at once (only the reply waits).
        env={**(twin.env or {}), "MEDSVC_SHARD_MAP": str(tmp_path / "shardmap.json"),
             "MEDSVC_PG_POOL_MIN": "1", "MEDSVC_PG_POOL_MAX": "1"},
        cwd=twin.cwd,
    )  # fmt: skip
    await fe.start()
    args = ("move", "--buckets", f"{lo}-{hi}", "--to", "2", "--json")
    mover = None
    try:
        async with aiohttp.ClientSession() as http:
            direct = Api(http, fe.url, admin.token)
            assert (await direct.call("GET", f"/v1/users/{other}")).status == 200
            # The read's ownership check runs while shard 0 owns the user; its answer is held
            # back until the move has flipped and dropped the moved users' cache entries.
            proxy.held = True
            read = asyncio.create_task(direct.call("GET", f"/v1/users/{name}"))
            for _ in range(500):
                if proxy.waiting:
                    break
                await asyncio.sleep(0.01)
            assert proxy.waiting, "the read never reached its database"
            mover = await stalled(grow, "switch", *args)  # flipped, entries dropped, map old
            proxy.release()
            reply = await read
        # Once it has its lease, it checks again: refused, and it filled nothing.
        assert reply.status == 421, reply.body
        r = aioredis.Redis.from_url(redis_url)
        try:
            assert await r.exists(f"{{{user_group(name)}}}") == 0
        finally:
            await r.aclose()
    finally:
        proxy.release()
        if mover is not None:
            mover.send_signal(signal.SIGKILL)
            await mover.wait()
        await fe.stop()
        await proxy.close()
    code, summary, err = await finish(await resharder(grow, *args))
    assert code == 0 and summary["outcome"] == "done", err
    assert (await admin.call("GET", f"/v1/users/{name}")).status == 200
