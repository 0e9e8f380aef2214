"""Extraction throughput, for ``make bench``: a full run against a raw COPY of the same rows.

:func:`extraction_benchmark` seeds patients and visits straight into the shards (once; the
seed is reused when present), registers a fresh study with every seeded patient consenting,
then times

* a full extraction run (this process, the real code path: lock, parallel shard reads,
  de-identification, records stored and committed), and
* the ceiling: ``COPY (SELECT <the columns a run reads> ...) TO STDOUT`` of the same rows on
  every shard in parallel, the output counted and discarded.

Run alone against a running stack::

    MEDSVC_CENTRAL_DSN=... MEDSVC_SHARD_MAP=var/shardmap.json python -m anonymizer.bench
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any

import asyncpg
import orjson

from anonymizer.app import extractor_scope
from anonymizer.extract import begin_run, execute
from anonymizer.models import StudyIn
from anonymizer.settings import AnonymizerSettings
from anonymizer import store
from shared.shardmap import ShardMap, load_shard_map

PREFIX = "bench-x"
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
       '[{"name": "metformin", "dose": "500 mg", "frequency": "twice daily"}]',
       'free text notes of a bench visit'
FROM unnest($1::text[]) AS p(user_name), generate_series(1, $2) AS n"""


def _names_by_shard(shard_map: ShardMap, patients: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {s.id: [] for s in shard_map.shards}
    for i in range(patients):
        name = f"{PREFIX}.{i:06d}"
        out[shard_map.shard_id_for(name)].append(name)
    return out


async def _superuser(dsn: str, password: str | None) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, password=password)
    # Seeding bypasses the triggers (audit outbox): a benchmark fixture, not a clinical write.
    await conn.execute("SET session_replication_role = replica")
    return conn


async def seed(shard_map: ShardMap, patients: int, per_patient: int, password: str | None = None) -> None:
    """Bench patients with ``per_patient`` visits each, on their own shards (kept if present)."""

    async def one(shard_id: int, names: list[str]) -> None:
        conn = await _superuser(shard_map.shard(shard_id).postgres, password)
        try:
            have = await conn.fetchval(
                "SELECT count(*) FROM visits WHERE user_name LIKE $1", PREFIX + ".%")
            if have == len(names) * per_patient:
                return
            async with conn.transaction():
                await conn.execute("DELETE FROM study_consents WHERE user_name LIKE $1", PREFIX + ".%")
                await conn.execute("DELETE FROM visits WHERE user_name LIKE $1", PREFIX + ".%")
                await conn.execute("DELETE FROM users WHERE user_name LIKE $1", PREFIX + ".%")
                await conn.copy_records_to_table(
                    "users", columns=["user_name", "role", "given_name", "family_name", "birth_date",
                                      "sex", "address"],
                    records=[(n, "patient", "Bench", "Patient", _birth(i), ("female", "male")[i % 2],
                              orjson.dumps({"postalCode": f"{600 + i % 50}01", "country": "US"}).decode())
                             for i, n in enumerate(names)],
                )  # fmt: skip
                await conn.execute(_VISITS, names, per_patient)
        finally:
            await conn.close()

    await asyncio.gather(*(one(s, n) for s, n in _names_by_shard(shard_map, patients).items()))


def _birth(i: int) -> Any:
    import datetime as dt

    return dt.date(1940 + i % 60, 1 + i % 12, 1 + i % 28)


async def _consent_all(shard_map: ShardMap, study_id: str, password: str | None) -> None:
    async def one(dsn: str) -> None:
        conn = await _superuser(dsn, password)
        try:
            await conn.execute(
                """INSERT INTO study_consents (user_name, study_id)
                   SELECT user_name, $2 FROM users WHERE user_name LIKE $1""",
                PREFIX + ".%", study_id,
            )
        finally:
            await conn.close()

    await asyncio.gather(*(one(s.postgres) for s in shard_map.shards))


async def raw_copy(shard_map: ShardMap, study_id: str, password: str | None = None) -> tuple[int, float]:
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


async def extraction_benchmark(
    settings: AnonymizerSettings, visits: int = 100_000, per_patient: int = 50
) -> dict[str, Any]:
    """Seed (if needed), then time one full run and the COPY ceiling of the same rows."""
    shard_map = load_shard_map(settings.shard_map)
    password = settings.pg_password.get_secret_value() if settings.pg_password else None
    patients = max(1, visits // per_patient)
    await seed(shard_map, patients, per_patient, password)
    study_id = f"bench-{uuid.uuid4().hex[:12]}"
    async with extractor_scope(settings, shard_map) as ex:
        await store.insert_study(ex.registry, StudyIn(studyId=study_id, title="bench"), "bench")
        await _consent_all(shard_map, study_id, password)
        copy_rows, copy_seconds = await raw_copy(shard_map, study_id, password)
        started = time.perf_counter()
        handle = await begin_run(ex, study_id, "cli", "bench")
        assert handle is not None
        row = await execute(handle)
        seconds = time.perf_counter() - started
    assert row["status"] == "succeeded", row["error"]
    extracted = row["counts"]["visit"]
    return {
        "study": study_id, "visits": extracted, "participants": row["counts"]["participant"],
        "extractSeconds": round(seconds, 3), "extractRowsPerSecond": round(extracted / seconds),
        "copyRows": copy_rows, "copySeconds": round(copy_seconds, 3),
        "copyRowsPerSecond": round(copy_rows / copy_seconds),
        "ratio": round((extracted / seconds) / (copy_rows / copy_seconds), 3),
    }  # fmt: skip


def main() -> None:
    from shared.settings import load

    visits = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    result = asyncio.run(extraction_benchmark(load(AnonymizerSettings), visits))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
