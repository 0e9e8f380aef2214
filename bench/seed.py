"""Seed data for the benchmark, written straight into each shard's PostgreSQL.

The data is deterministic (one :class:`random.Random` seed makes the same users and visits
every time) and loaded with ``COPY`` (asyncpg ``copy_records_to_table``) on the shard that
owns each userName, routed by the same :mod:`shared.shardmap` as every other component.
That takes a second or two for the default 10,000 users and 50,000 visits, where the HTTP
API would take minutes. Every user is a patient and owns visits (``n_visits / n_users``
each, dealt round-robin), so any seeded userName is a valid target for every scenario.

If the shard has audit triggers that read the writer from settings, the seeding connection
sets ``medsvc.actor``, ``medsvc.source`` and ``medsvc.request_id`` for its whole session.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson

from shared.shardmap import ShardMap

USER_PREFIX = "bench.p"
_GIVEN = ("Alice", "Bob", "Carol", "Dmitri", "Eva", "Farid", "Grace", "Hiro", "Ines", "Jon")
_FAMILY = ("Smith", "Jones", "Garcia", "Nguyen", "Okafor", "Schmidt", "Rossi", "Kim", "Silva")
_CITIES = (("Springfield", "IL", "62701"), ("Portland", "OR", "97201"), ("Austin", "TX", "73301"))
_DIAGNOSES = (
    ("E11.9", "Type 2 diabetes mellitus"), ("I10", "Essential hypertension"),
    ("J06.9", "Acute upper respiratory infection"), ("M54.5", "Low back pain"),
)  # fmt: skip
_TYPES = ("outpatient", "inpatient", "emergency", "telehealth")
_USER_COLUMNS = (
    "user_name", "role", "given_name", "family_name", "birth_date", "sex", "email", "phone",
    "address",
)  # fmt: skip
_VISIT_COLUMNS = (
    "visit_id", "user_name", "clinician", "type", "started_at", "ended_at", "reason",
    "diagnoses", "vitals", "medications", "notes",
)  # fmt: skip


@dataclass
class Dataset:
    """Rows to load, grouped by the shard that owns them."""

    user_names: list[str]
    visit_keys: list[tuple[str, str]]  # (userName, visitId)
    users_by_shard: dict[int, list[tuple]]  # type: ignore[type-arg]
    visits_by_shard: dict[int, list[tuple]]  # type: ignore[type-arg]

    def write_target_files(self, folder: Path) -> tuple[Path, Path]:
        """``users.txt`` (a userName a line) and ``visits.txt`` ("userName visitId") for wrk."""
        folder.mkdir(parents=True, exist_ok=True)
        users, visits = folder / "users.txt", folder / "visits.txt"
        users.write_text("".join(f"{u}\n" for u in self.user_names))
        visits.write_text("".join(f"{u} {v}\n" for u, v in self.visit_keys))
        return users, visits


def _json(value: object) -> str:
    # asyncpg's default jsonb codec takes the JSON text.
    return orjson.dumps(value).decode()


def make_dataset(shard_map: ShardMap, n_users: int, n_visits: int, seed: int = 1) -> Dataset:
    """Build ``n_users`` patients and ``n_visits`` visits, the same for the same ``seed``."""
    rng = random.Random(seed)
    users_by_shard: dict[int, list[tuple]] = {s.id: [] for s in shard_map.shards}  # type: ignore[type-arg]
    visits_by_shard: dict[int, list[tuple]] = {s.id: [] for s in shard_map.shards}  # type: ignore[type-arg]
    width = max(5, len(str(n_users)))
    names = [f"{USER_PREFIX}{i:0{width}d}" for i in range(1, n_users + 1)]
    owner = {}
    for name in names:
        city, region, postal = rng.choice(_CITIES)
        shard = shard_map.shard_id_for(name)
        owner[name] = shard
        users_by_shard[shard].append((
            name, "patient", rng.choice(_GIVEN), rng.choice(_FAMILY),
            dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(33000)),
            rng.choice(("female", "male", "other", "unknown")),
            f"{name}@example.org", f"+1-555-{rng.randrange(10000):04d}",
            _json({"line": f"{rng.randrange(1, 999)} Main St", "city": city, "region": region,
                   "postalCode": postal, "country": "US"}),
        ))  # fmt: skip
    keys = []
    epoch = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    for i in range(n_visits):
        name = names[i % n_users] if n_users else None
        if name is None:
            break
        visit_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        started = epoch + dt.timedelta(minutes=rng.randrange(6 * 365 * 24 * 60))
        code, display = rng.choice(_DIAGNOSES)
        visits_by_shard[owner[name]].append((
            visit_id, name, "dr.bench", rng.choice(_TYPES), started,
            started + dt.timedelta(minutes=rng.choice((15, 30, 45, 60))), "follow-up",
            _json([{"system": "ICD-10", "code": code, "display": display}]),
            _json({"heightCm": 150 + rng.randrange(50), "weightKg": 50 + rng.randrange(60),
                   "systolic": 100 + rng.randrange(60), "diastolic": 60 + rng.randrange(30),
                   "heartRate": 50 + rng.randrange(60), "temperatureC": 36.5}),
            _json([{"name": "metformin", "dose": "500 mg", "frequency": "twice daily"}]),
            "seeded by make bench",
        ))  # fmt: skip
        keys.append((name, str(visit_id)))
    return Dataset(names, keys, users_by_shard, visits_by_shard)


async def _load_shard(dsn: str, users: Sequence[tuple], visits: Sequence[tuple]) -> None:  # type: ignore[type-arg]
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        # Session-wide (is_local = false): every row below is written by the "bench-seed" actor.
        await conn.execute(
            """SELECT set_config('medsvc.actor', 'bench-seed', false),
                      set_config('medsvc.source', 'bench/seed', false),
                      set_config('medsvc.request_id', $1, false)""",
            f"bench-seed-{uuid.uuid4()}",
        )
        async with conn.transaction():
            await conn.copy_records_to_table("users", records=users, columns=_USER_COLUMNS)
            await conn.copy_records_to_table("visits", records=visits, columns=_VISIT_COLUMNS)
        # Fresh statistics and visibility map now, not an autovacuum in the middle of a run.
        await conn.execute("VACUUM ANALYZE users, visits")
    finally:
        await conn.close()


async def load_dataset(shard_map: ShardMap, data: Dataset) -> float:
    """Write ``data`` into every shard at once; return the seconds it took."""
    started = time.perf_counter()
    await asyncio.gather(*(
        _load_shard(shard.postgres, data.users_by_shard[shard.id], data.visits_by_shard[shard.id])
        for shard in shard_map.shards
    ))  # fmt: skip
    return time.perf_counter() - started
