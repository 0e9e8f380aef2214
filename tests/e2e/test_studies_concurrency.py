"""The run watermark under concurrent writes, and runs that die midway.

Each scenario is what an operator fears: writes committing while a run reads, a transaction
that stays open across a run, the process running a run killed in the middle of it.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import uuid

import asyncpg
import pytest

from deploy.localstack.stack import REPO_ROOT
from tests.e2e.api import Api
from tests.e2e.studies_client import Researcher, by_kind, consent, keys, patient_on_shard, tag


@pytest.fixture
def clinician(http, stack, token) -> Api:
    return Api(http, stack.base_url, token("dr.jones", "clinician"))


@pytest.fixture
def researcher(http, stack, token) -> Researcher:
    return Researcher(Api(http, stack.base_url, token("rita.research", "researcher")))


def med_tag(record: dict) -> int:
    """The change a visit record shows (the writers name the medication after it)."""
    return int(record["medications"][0]["code"])


async def test_every_concurrent_change_is_extracted_exactly_once(
    clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study()
    patients = [(await patient_on_shard(clinician, stack, s))["userName"] for s in (0, 1, 0, 1)]
    for p in patients:
        await consent(clinician, p, study)
    k = keys(study)
    loop = asyncio.get_running_loop()
    writes: list[tuple[str, int, float]] = []  # (vid, change tag, acknowledged at)
    writers_done = asyncio.Event()

    async def writer(seed: int, mine: list[str]) -> None:
        # Each writer changes only its own visits, so a visit's changes commit in tag order.
        rnd, visits = random.Random(seed), []
        for _ in range(70):
            n = tag()
            if not visits or rnd.random() < 0.35:
                v = await clinician.create_visit(
                    rnd.choice(mine),
                    medications=[{"name": f"m{n}", "system": "RxNorm", "code": str(n)}],
                )
                visits.append((v["userName"], v["visitId"]))
                visit_id = v["visitId"]
            else:
                user, visit_id = rnd.choice(visits)
                reply = await clinician.call(
                    "PATCH",
                    f"/v1/users/{user}/visits/{visit_id}",
                    {"medications": [{"name": f"m{n}", "system": "RxNorm", "code": str(n)}]},
                )
                assert reply.status == 200, reply.body
            writes.append((k.vid(visit_id), n, loop.time()))
            await asyncio.sleep(rnd.random() * 0.01)

    runs: list[tuple[float, list[dict]]] = []  # (requested at, records)

    async def runner() -> None:
        while not writers_done.is_set() or len(runs) < 8:
            requested = loop.time()
            run, records = await researcher.run(study)
            runs.append((requested, records))

    slow_patient = await patient_on_shard(clinician, stack, 0)
    await consent(clinician, slow_patient["userName"], study)
    slow_visits = []
    for _ in range(3):
        n = tag()
        slow_visits.append(
            await clinician.create_visit(
                slow_patient["userName"],
                medications=[{"name": f"m{n}", "system": "RxNorm", "code": str(n)}],
            )
        )
        writes.append((k.vid(slow_visits[-1]["visitId"]), n, loop.time()))

    async def slow_writer(seed: int) -> None:
        # Transactions held open for a while, straight on the shard, while the others commit.
        rnd = random.Random(seed)
        conn = await asyncpg.connect(stack.shard_map.shard(0).postgres)
        try:
            for _ in range(25):
                n, visit_id = tag(), rnd.choice(slow_visits)["visitId"]
                async with conn.transaction():
                    await conn.execute(
                        "SELECT set_config('medsvc.actor', 'dr.jones', true),"
                        " set_config('medsvc.source', 'e2e/slow-writer', true)"
                    )
                    await conn.execute(
                        """UPDATE visits SET version = version + 1, updated_at = now(),
                                  medications = jsonb_build_array(jsonb_build_object(
                                      'name', 'm' || $2::text, 'system', 'RxNorm',
                                      'code', $2::text))
                           WHERE visit_id = $1""",
                        uuid.UUID(visit_id),
                        str(n),
                    )
                    await asyncio.sleep(rnd.random() * 0.05)
                writes.append((k.vid(visit_id), n, loop.time()))
        finally:
            await conn.close()

    async def writers() -> None:
        await asyncio.gather(writer(1, patients[:2]), writer(2, patients[2:]), slow_writer(3))
        writers_done.set()

    await asyncio.gather(writers(), runner())
    runs.append((loop.time(), (await researcher.run(study))[1]))  # after every write returned

    assert sorted(r["pid"] for r in by_kind(runs[0][1])["participant"]) == sorted(
        map(k.pid, [*patients, slow_patient["userName"]])
    )
    written = {(vid, n) for vid, n, _ in writes}
    seen: dict[str, list[tuple[int, int]]] = {}  # vid → [(run index, tag)]
    for i, (_, records) in enumerate(runs):
        visits = by_kind(records)["visit"]
        assert len({r["vid"] for r in visits}) == len(visits), "a visit twice in one run"
        assert i == 0 or not by_kind(records)["participant"], "nobody's profile changed"
        for r in visits:
            assert (r["vid"], med_tag(r)) in written, "a change nobody made"
            seen.setdefault(r["vid"], []).append((i, med_tag(r)))
    for vid, emitted in seen.items():
        tags = [n for _, n in emitted]
        assert tags == sorted(set(tags)), f"{vid}: a change emitted twice, or out of order: {tags}"
    # Never neither: a change acknowledged before a run was requested is in that run or an
    # earlier one (itself, or a later change of the same visit that superseded it).
    for vid, n, acked in writes:
        first_after = next(i for i, (requested, _) in enumerate(runs) if requested > acked)
        assert any(i <= first_after and m >= n for i, m in seen.get(vid, [])), (vid, n)
    assert len(runs) >= 9 and len(writes) == 168


async def test_a_transaction_open_across_a_run_is_in_the_next_run(
    clinician: Api, researcher: Researcher, stack
) -> None:
    """The case a timestamp watermark gets wrong: the change is older than the run, and
    commits after it."""
    study = await researcher.create_study()
    p = await patient_on_shard(clinician, stack, 0)
    visit = await clinician.create_visit(p["userName"])
    await consent(clinician, p["userName"], study)
    await researcher.run(study)
    conn = await asyncpg.connect(stack.shard_map.shard(0).postgres)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            "SELECT set_config('medsvc.actor', 'dr.jones', true),"
            " set_config('medsvc.source', 'e2e/slow-writer', true)"
        )
        await conn.execute(
            """UPDATE visits
               SET medications = '[{"name": "slow", "system": "RxNorm", "code": "314076"}]',
                   version = version + 1, updated_at = now()
               WHERE visit_id = $1""",
            uuid.UUID(visit["visitId"]),
        )
        new_id = uuid.uuid4()
        await conn.execute(
            """INSERT INTO visits (visit_id, user_name, clinician, type, started_at)
               VALUES ($1, $2, 'dr.jones', 'telehealth', now())""",
            new_id,
            p["userName"],
        )
        # A later transaction commits first, so the open one sits inside the run's snapshot
        # (below its xmax, in its in-progress list) rather than above it.
        await clinician.create_visit((await patient_on_shard(clinician, stack, 0))["userName"])
        _, during = await researcher.run(study)
        assert during == []
        await tx.commit()
    finally:
        await conn.close()
    k = keys(study)
    _, after = await researcher.run(study)
    assert sorted((r["vid"], r["medications"]) for r in after) == sorted(
        [
            (k.vid(visit["visitId"]), [{"system": "RxNorm", "code": "314076"}]),
            (k.vid(str(new_id)), []),
        ]
    )
    _, again = await researcher.run(study)
    assert again == []


async def test_a_run_killed_midway_leaves_nothing_and_the_next_run_gives_it_all(
    clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study()
    on0 = await patient_on_shard(clinician, stack, 0)
    on1 = await patient_on_shard(clinician, stack, 1)
    visits = [await clinician.create_visit(u["userName"]) for u in (on0, on0, on1)]
    for u in (on0, on1):
        await consent(clinician, u["userName"], study)
    k = keys(study)
    expected = sorted(
        [k.pid(on0["userName"]), k.pid(on1["userName"])] + [k.vid(v["visitId"]) for v in visits]
    )

    # Shard 1's visits are locked, so a run reads shard 0 and then waits on shard 1.
    blocker = await asyncpg.connect(stack.shard_map.shard(1).postgres)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("LOCK TABLE visits IN ACCESS EXCLUSIVE MODE")
    env = dict(
        os.environ,
        MEDSVC_CENTRAL_DSN=stack.central_dsn,
        MEDSVC_SHARD_MAP=str(stack.shard_map_path),
        MEDSVC_LOG_LEVEL="WARNING",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "anonymizer", "run", study, env=env, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):
            waiting = await blocker.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'visits'::regclass"
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the run never reached shard 1")
        listed = await researcher.api.call("GET", f"/v1/studies/{study}/runs")
        run = listed.body["items"][0]
        assert run["status"] == "running" and run["trigger"] == "cli"
        busy = await researcher.start(study)
        assert busy.status == 409 and busy.problem, "one run at a time, across processes"
        pending = await researcher.api.call(
            "GET", f"/v1/studies/{study}/runs/{run['runId']}/records"
        )
        assert pending.status == 409
        proc.kill()
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await tx.rollback()
        await blocker.close()

    location = f"/v1/studies/{study}/runs/{run['runId']}"
    dead = await researcher.wait(location, timeout=10)
    assert dead["status"] == "failed" and dead["counts"] is None and "stopped" in dead["error"]
    gone = await researcher.api.call("GET", location + "/records")
    assert gone.status == 409 and gone.problem
    rerun, records = await researcher.run(study)
    assert sorted(r.get("vid") or r["pid"] for r in records) == expected
    assert rerun["counts"] == {"participant": 2, "visit": 3, "withdrawal": 0}
