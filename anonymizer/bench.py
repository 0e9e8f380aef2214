"""Extraction throughput, for ``make bench``: a full run against a raw COPY of the same rows.

:func:`extraction_benchmark` seeds patients and visits straight into the shards (once; the
seed is reused when present), registers a fresh study with every seeded patient consenting,
then times, in interleaved rounds (the median reported),

* a full extraction run (this process, the real code path: lock, parallel shard reads,
  de-identification, records stored and committed), and
* the ceiling: ``COPY (SELECT <the columns a run reads> ...) TO STDOUT`` of the same rows on
  every shard in parallel, the output counted and discarded.

Run alone against a running stack, or on a throwaway local stack started for it::

    MEDSVC_CENTRAL_DSN=... MEDSVC_SHARD_MAP=var/shardmap.json python -m anonymizer.bench
    python -m anonymizer.bench 100000 --local-stack

:func:`streaming_benchmark` (``make bench``: 1,000,000 visits) downloads a run's records
through nginx while sampling the RSS of nginx, the gateways and the anonymizer.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from anonymizer import store
from anonymizer.app import extractor_scope
from anonymizer.extract import Extractor, begin_run, execute
from anonymizer.models import StudyIn
from anonymizer.settings import AnonymizerSettings
from shared.shardmap import ShardMap, load_shard_map

PREFIX = "bench-x"
# The seeded visits: one coded and one uncoded medication, a coded diagnosis with display text.
# copy_from_query wraps it in COPY (...) TO STDOUT.
_COPY = """
    SELECT v.user_name, v.visit_id, v.type, v.started_at, v.ended_at, v.diagnoses, v.vitals,
           v.medications
    FROM study_consents c JOIN visits v USING (user_name)
    WHERE c.study_id = $1 AND c.withdrawn_at IS NULL"""
_VISITS = """
INSERT INTO visits (visit_id, user_name, clinician, type, started_at, ended_at, reason,
                    diagnoses, vitals, medications, notes)
SELECT gen_random_uuid(), p.user_name, 'dr.bench',
       (ARRAY['outpatient', 'inpatient', 'emergency', 'telehealth'])[1 + n % 4],
       timestamptz '2020-01-01' + n * interval '7 days',
       timestamptz '2020-01-01' + n * interval '7 days' + interval '35 minutes',
       'follow-up', '[{"system": "ICD-10", "code": "E11.9", "display": "Type 2 diabetes"}]',
       jsonb_build_object('heartRate', 60 + n % 40, 'systolic', 110 + n % 30),
       '[{"name": "metformin", "dose": "500 mg", "frequency": "twice daily"},
         {"name": "metformin 500 mg tablet", "system": "RxNorm", "code": "860975"}]',
       'free text notes of a bench visit'
FROM unnest($1::text[]) AS p(user_name), generate_series(1, $2) AS n"""


def _names_by_shard(shard_map: ShardMap, patients: int, prefix: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {s.id: [] for s in shard_map.shards}
    for i in range(patients):
        name = f"{prefix}.{i:06d}"
        out[shard_map.shard_id_for(name)].append(name)
    return out


async def _superuser(dsn: str, password: str | None) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, password=password)
    # Seeding bypasses the triggers (audit outbox): a benchmark fixture, not a clinical write.
    await conn.execute("SET session_replication_role = replica")
    return conn


async def seed(
    shard_map: ShardMap,
    patients: int,
    per_patient: int,
    password: str | None = None,
    prefix: str = PREFIX,
) -> None:
    """Bench patients with ``per_patient`` visits each, on their own shards (kept if present).

    Straight into the shard databases (one ``INSERT ... SELECT generate_series``), not through
    the API: a fixture of hundreds of thousands of visits in seconds.
    """

    async def one(shard_id: int, names: list[str]) -> None:
        conn = await _superuser(shard_map.shard(shard_id).postgres, password)
        try:
            have = await conn.fetchval(
                "SELECT count(*) FROM visits WHERE user_name LIKE $1", prefix + ".%"
            )
            if have == len(names) * per_patient:
                return
            async with conn.transaction():
                await conn.execute(
                    "DELETE FROM study_consents WHERE user_name LIKE $1", prefix + ".%"
                )
                await conn.execute("DELETE FROM visits WHERE user_name LIKE $1", prefix + ".%")
                await conn.execute("DELETE FROM users WHERE user_name LIKE $1", prefix + ".%")
                await conn.copy_records_to_table(
                    "users",
                    columns=[
                        "user_name",
                        "role",
                        "given_name",
                        "family_name",
                        "birth_date",
                        "sex",
                        "address",
                    ],
                    records=[
                        (
                            n,
                            "patient",
                            "Bench",
                            "Patient",
                            _birth(i),
                            ("female", "male")[i % 2],
                            orjson.dumps(
                                {"postalCode": f"{600 + i % 50}01", "country": "US"}
                            ).decode(),
                        )
                        for i, n in enumerate(names)
                    ],
                )
                await conn.execute(_VISITS, names, per_patient)
        finally:
            await conn.close()

    await asyncio.gather(
        *(one(s, n) for s, n in _names_by_shard(shard_map, patients, prefix).items())
    )


def _birth(i: int) -> Any:
    import datetime as dt

    return dt.date(1940 + i % 60, 1 + i % 12, 1 + i % 28)


async def consent_all(
    shard_map: ShardMap, study_id: str, password: str | None, prefix: str = PREFIX
) -> None:
    """Every seeded patient consents to ``study_id`` (straight into the shards)."""

    async def one(dsn: str) -> None:
        conn = await _superuser(dsn, password)
        try:
            await conn.execute(
                """INSERT INTO study_consents (user_name, study_id)
                   SELECT user_name, $2 FROM users WHERE user_name LIKE $1""",
                prefix + ".%",
                study_id,
            )
        finally:
            await conn.close()

    await asyncio.gather(*(one(s.postgres) for s in shard_map.shards))


async def raw_copy(
    shard_map: ShardMap, study_id: str, password: str | None = None
) -> tuple[int, float]:
    """(rows, seconds) of the COPY ceiling over every shard in parallel."""
    conns = [await asyncpg.connect(s.postgres, password=password) for s in shard_map.shards]
    rows = 0

    async def sink(chunk: bytes) -> None:
        nonlocal rows
        rows += chunk.count(b"\n")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(c.copy_from_query(_COPY, study_id, output=sink) for c in conns))
        return rows, time.perf_counter() - started
    finally:
        for c in conns:
            await c.close()


async def timed_run(ex: Extractor, study_id: str) -> tuple[asyncpg.Record, float]:
    """One run of ``study_id``, started and executed here, as a manual run would be; its
    final row (it must have succeeded) and its seconds."""
    started = time.perf_counter()
    handle = await begin_run(ex, study_id, "cli", "bench")
    assert handle is not None
    row = await execute(handle)
    seconds = time.perf_counter() - started
    assert row["status"] == "succeeded", row["error"]
    return row, seconds


async def settle(shard_map: ShardMap, password: str | None) -> None:
    """Vacuum and analyse the shards' tables and checkpoint them: what a settled database
    looks like. Right after a seed (or the bench's load scenarios), autovacuum, hint bits and
    the write-back of the dirty pages would otherwise run during whichever of the two timed
    reads comes first, on a machine of two cores."""

    async def one(dsn: str) -> None:
        conn = await asyncpg.connect(dsn, password=password)
        try:
            await conn.execute("VACUUM (ANALYZE) users, visits, study_consents")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    await asyncio.gather(*(one(s.postgres) for s in shard_map.shards))


async def extraction_benchmark(
    settings: AnonymizerSettings, visits: int = 100_000, per_patient: int = 50, rounds: int = 3
) -> dict[str, Any]:
    """Seed (if needed), then time full runs against the COPY ceiling of the same rows.

    ``rounds`` times, interleaved, after one such round unmeasured (the warm-up: the first
    run on a fresh stack also pays for the registry's first WAL segments and table extents):
    a fresh study that every seeded patient consents to, the COPY of its rows, then its run.
    The figures are the round with the median ratio; every round's ratio is listed
    (``ratios``): the machine is shared and a single pair is noisy.
    """
    shard_map = load_shard_map(settings.shard_map)
    password = settings.pg_password.get_secret_value() if settings.pg_password else None
    patients = max(1, visits // per_patient)
    await seed(shard_map, patients, per_patient, password)
    results: list[dict[str, Any]] = []
    async with extractor_scope(settings, shard_map) as ex:
        # Both on open connections: the COPY's are opened before its clock starts, and a
        # service's shard pools (reads and ownership cuts) outlive its runs (here they would
        # open within the run).
        await asyncio.gather(*(ex.shard_pools.get(shard) for shard in shard_map.shards))
        await asyncio.gather(*(ex.shard_pools.cut_pool(shard) for shard in shard_map.shards))
        for n in range(-1, rounds):
            study_id = f"bench-{uuid.uuid4().hex[:12]}"
            await store.insert_study(ex.registry, StudyIn(studyId=study_id, title="bench"), "bench")
            await consent_all(shard_map, study_id, password)
            await settle(shard_map, password)
            copy_rows, copy_seconds = await raw_copy(shard_map, study_id, password)
            row, seconds = await timed_run(ex, study_id)
            if n < 0:
                continue  # the warm-up round (as every wrk figure has its warm-up)
            extracted = row["counts"]["visit"]
            results.append({
                "study": study_id, "visits": extracted,
                "participants": row["counts"]["participant"],
                "extractSeconds": round(seconds, 3),
                "extractRowsPerSecond": round(extracted / seconds),
                "copyRows": copy_rows, "copySeconds": round(copy_seconds, 3),
                "copyRowsPerSecond": round(copy_rows / copy_seconds),
                "ratio": round((extracted / seconds) / (copy_rows / copy_seconds), 3),
            })  # fmt: skip
    median = sorted(results, key=lambda r: r["ratio"])[len(results) // 2]
    return {**median, "ratios": [r["ratio"] for r in results]}


async def streaming_benchmark(
    settings: AnonymizerSettings,
    base_url: str,
    token: str,
    hops: dict[str, int],
    visits: int = 1_000_000,
    per_patient: int = 50,
) -> dict[str, Any]:
    """Seed ``visits`` (prefix ``bench-s``), run a study over them, download its records
    through ``base_url`` (nginx) while sampling each hop's RSS (``hops``: name → pid)."""
    shard_map = load_shard_map(settings.shard_map)
    password = settings.pg_password.get_secret_value() if settings.pg_password else None
    prefix = "bench-s"
    await seed(shard_map, max(1, visits // per_patient), per_patient, password, prefix=prefix)
    study_id = f"bench-{uuid.uuid4().hex[:12]}"
    async with extractor_scope(settings, shard_map) as ex:
        await store.insert_study(ex.registry, StudyIn(studyId=study_id, title="bench"), "bench")
        await consent_all(shard_map, study_id, password, prefix=prefix)
        row, run_seconds = await timed_run(ex, study_id)
    url = f"{base_url}/v1/studies/{study_id}/runs/{row['run_id']}/records"
    got = await sampled_download(url, token, hops)
    assert got["sha256"] == row["manifest"]["recordsSha256"], "the download is not the run's body"
    growth = {h: got["rssPeakKiB"][h] - got["rssBeforeKiB"][h] for h in hops}
    return {
        "visits": row["counts"]["visit"], "runSeconds": round(run_seconds, 3),
        "bytes": got["bytes"], "firstByteSeconds": round(got["firstByteSeconds"], 3),
        "downloadSeconds": round(got["seconds"], 3),
        "downloadBytesPerSecond": round(got["bytesPerSecond"]), "rssGrowthKiB": growth,
    }  # fmt: skip


async def _on_a_throwaway_stack(visits: int, fast: bool) -> dict[str, Any]:
    """The extraction benchmark on a fresh local stack (started here, stopped after): durable
    PostgreSQL as in ``make bench``, or with fsync off (``fast``)."""
    from deploy.localstack.throwaway import throwaway_stack
    from shared.settings import load

    async with throwaway_stack("medsvc-xbench-", fast=fast) as stack:
        settings = load(
            AnonymizerSettings, central_dsn=stack.central_dsn, shard_map=str(stack.shard_map_path)
        )
        return await extraction_benchmark(settings, visits)


def main() -> None:
    """``python -m anonymizer.bench [VISITS] [--local-stack [--fast]]`` (default 100,000 visits).

    Without ``--local-stack`` the running stack named by the environment is used; ``--fast``
    starts the local stack's PostgreSQL with fsync off.
    """
    import uvloop

    from shared.settings import load

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    visits = int(args[0]) if args else 100_000
    # On uvloop, as the anonymizer's runs are (its service, shared/runner.py; its CLI).
    if "--local-stack" in sys.argv:
        result = uvloop.run(_on_a_throwaway_stack(visits, fast="--fast" in sys.argv))
    else:
        result = uvloop.run(extraction_benchmark(load(AnonymizerSettings), visits))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()


# -- the download through the load balancer, with every hop's memory sampled ----------------------


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (nginx's workers), from ``/proc``."""
    total = 0
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)  # fmt: skip
        pending += [int(c) for c in children]
    return total


async def sampled_download(
    url: str, token: str, hops: dict[str, int], every: float = 0.05
) -> dict[str, Any]:
    """Download ``url`` as it comes, sampling each hop's RSS (name → pid) meanwhile.

    Returns the time to the first byte (from sending the request), the seconds, the bytes,
    their SHA-256, and per hop the RSS before and the peak during (KiB).
    """
    import aiohttp

    before = {name: rss_kib(pid) for name, pid in hops.items()}
    peak = dict(before)
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            for name, pid in hops.items():
                peak[name] = max(peak[name], rss_kib(pid))
            await asyncio.sleep(every)

    sampler = asyncio.create_task(sample())
    digest, size, first = hashlib.sha256(), 0, None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            started = time.perf_counter()
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"download answered {resp.status}: {await resp.text()}")
                headers = dict(resp.headers)
                async for chunk in resp.content.iter_any():
                    if first is None:
                        first = time.perf_counter() - started
                    digest.update(chunk)
                    size += len(chunk)
            seconds = time.perf_counter() - started
    finally:
        done.set()
        await sampler
    return {
        "firstByteSeconds": first, "seconds": seconds, "bytes": size,
        "sha256": digest.hexdigest(), "headers": headers,
        "rssBeforeKiB": before, "rssPeakKiB": peak,
        "bytesPerSecond": size / seconds if seconds else None,
    }  # fmt: skip
