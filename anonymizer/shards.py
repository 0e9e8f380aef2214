"""What a run reads from one shard, in one REPEATABLE READ snapshot.

The watermark. Every ``users`` and ``visits`` row carries ``updated_xid``: the id of the
transaction that last wrote it (migrations ``*_updated_xid.sql``; a trigger sets it on insert
and update). A run reads each shard in one REPEATABLE READ transaction whose first statement
takes ``pg_current_snapshot()``, stored as the shard's watermark when the run succeeds. The
next run takes the rows whose writer is not visible in that stored snapshot: the writers
visible in the new snapshot and not in the old one. Visibility is decided by the snapshot, not
by time, so a transaction that was in flight when a run took its snapshot (listed in its
``xip``) is not visible to that run, and is to the next one: each committed write falls in
exactly one run's window, however long it ran and whenever it committed.

Participants. Consent is read in the same snapshot. Someone consenting now who was not a
participant at the last successful run (the registry keeps the pids) gets their whole
history; someone who was gets the rows changed in the window.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from anonymizer import deidentify
from anonymizer.deidentify import StudyKeys
from anonymizer.store import KIND_CODES, RecordRow
from shared.db import create_pool, db_errors
from shared.errors import Unavailable
from shared.shardmap import MapWatcher, Shard, ShardMap

Emit = Callable[[list[RecordRow]], Awaitable[None]]
_VISIT = KIND_CODES["visit"]

# participants_now: the study's consents in force in this snapshot, in the buckets this shard
# owns in the same snapshot (a move's copy on its way in, or the source's copy before cleanup,
# is not read twice). moved_in: the bucket came to this shard (resharder) after the previous
# watermark $2, so the participant's rows are new here, whatever their updated_xid: the whole
# history is read, and nothing changed on the old shard since its last run is missed.
_CONSENTS = """
SELECT c.user_name, coalesce(NOT pg_visible_in_snapshot(sb.since_xid, $2::text::pg_snapshot), false)
FROM study_consents c
JOIN shard_buckets sb ON sb.bucket = c.bucket
JOIN shard_identity si ON sb.owner = si.shard_id
WHERE c.study_id = $1 AND c.withdrawn_at IS NULL"""
_USER_COLUMNS = "u.user_name, u.birth_date, u.sex, u.address"
# The start's UTC year and the length in seconds (exact: extract gives a numeric, its float8 is
# timedelta.total_seconds()) instead of the two timestamps: less to send and to decode.
_VISIT_COLUMNS = (
    "v.user_name, v.visit_id::text AS visit_id, v.type,"
    " extract(year FROM v.started_at AT TIME ZONE 'UTC')::int AS year,"
    " extract(epoch FROM v.ended_at - v.started_at)::float8 AS duration_seconds,"
    # The jsonb values as text, parsed here: the same objects as the pool's jsonb codec gives
    # (orjson.loads of the same text), without a Python codec call per value inside the driver.
    " v.diagnoses::text AS diagnoses, v.vitals::text AS vitals, v.medications::text AS medications"
)
# users_all / visits_all: the whole history of new participants ($1).
_USERS_ALL = f"""
SELECT {_USER_COLUMNS} FROM unnest($1::text[]) AS p(user_name) JOIN users u USING (user_name)"""
_VISITS_ALL = f"""
SELECT {_VISIT_COLUMNS} FROM unnest($1::text[]) AS p(user_name) JOIN visits v USING (user_name)"""
# users_changed / visits_changed: continuing participants' ($1) rows whose writer the previous
# snapshot ($2) did not see. The xmin bound follows from the visibility test; it lets the
# index on updated_xid skip the older rows.
_USERS_CHANGED = _USERS_ALL + """
WHERE u.updated_xid >= pg_snapshot_xmin($2::text::pg_snapshot)
  AND NOT pg_visible_in_snapshot(u.updated_xid, $2::text::pg_snapshot)"""
_VISITS_CHANGED = _VISITS_ALL + """
WHERE v.updated_xid >= pg_snapshot_xmin($2::text::pg_snapshot)
  AND NOT pg_visible_in_snapshot(v.updated_xid, $2::text::pg_snapshot)"""


class ShardPools:
    """One small pool per shard, opened on first use (a shard that is down fails its use only)."""

    def __init__(self, shard_map: ShardMap | MapWatcher, password: str | None, max_size: int) -> None:
        self._map = shard_map
        self._password = password
        self._max_size = max_size
        self._pools: dict[int, asyncpg.Pool] = {}
        self._lock = asyncio.Lock()

    @property
    def shard_map(self) -> ShardMap:
        """The current map (a watched file is re-read when it changed: one stat)."""
        if isinstance(self._map, MapWatcher):
            self._map.reload()
            return self._map.current
        return self._map

    async def get(self, shard: Shard) -> asyncpg.Pool:
        """The shard's pool (Unavailable when it cannot be opened now)."""
        pool = self._pools.get(shard.id)
        if pool is not None:
            return pool
        async with self._lock:
            if shard.id not in self._pools:
                with db_errors(f"shard {shard.id}"):
                    self._pools[shard.id] = await create_pool(
                        shard.postgres, password=self._password, min_size=0,
                        max_size=self._max_size, attempts=1, what=f"shard-{shard.id}",
                    )  # fmt: skip
            return self._pools[shard.id]

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()


@dataclass
class ShardResult:
    """What one shard gave a run: its snapshot, its participants, its participant records."""

    shard_id: int
    snapshot: str
    active: set[str] = field(default_factory=set)
    # pid → de-identified participant record, for participants new or changed in the window.
    fresh: dict[str, dict[str, Any]] = field(default_factory=dict)
    visits: int = 0


async def read_shard(
    pool: asyncpg.Pool, shard_id: int, study_id: str, keys: StudyKeys, previous: str | None,
    known: Collection[str], cutoff: int, emit: Emit, batch_rows: int,
) -> ShardResult:
    """Read one shard for one run: return its participants, pass its visit records to ``emit``.

    ``previous``: the shard's watermark (None: never read for this study, everyone is new);
    ``known``: the pids that were participants at the last successful run.
    """
    with db_errors(f"shard {shard_id}"):
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # The first statement fixes the transaction's snapshot; this is it.
            snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
            result = ShardResult(shard_id, snapshot)
            consents = await conn.fetch(_CONSENTS, study_id, previous)
            pid_of = {u: keys.pid(u) for u, _ in consents}
            moved_in = {u for u, m in consents if m}
            result.active = set(pid_of.values())
            new = [u for u, p in pid_of.items() if previous is None or p not in known or u in moved_in]
            fresh = set(new)
            continuing = [u for u in pid_of if u not in fresh]
            users = await conn.fetch(_USERS_ALL, new) if new else []
            if continuing:
                users += await conn.fetch(_USERS_CHANGED, continuing, previous)
            for r in users:
                record = deidentify.participant(
                    keys, r["user_name"], r["birth_date"], r["sex"], r["address"], cutoff
                )
                result.fresh[record["pid"]] = record
            queries = [(_VISITS_ALL, (new,))] if new else []
            if continuing:
                queries.append((_VISITS_CHANGED, (continuing, previous)))
            for query, args in queries:
                result.visits += await _stream_visits(conn, query, args, keys, pid_of, emit, batch_rows)
    return result


async def _stream_visits(
    conn: asyncpg.Connection, query: str, args: tuple[Any, ...], keys: StudyKeys,
    pid_of: dict[str, str], emit: Emit, batch_rows: int,
) -> int:
    """De-identify the visits ``query`` selects, ``batch_rows`` at a time; return how many."""
    n = 0
    record, loads, dumps, kind = deidentify.visit_record, orjson.loads, orjson.dumps, _VISIT
    cursor = await conn.cursor(query, *args)
    while rows := await cursor.fetch(batch_rows):
        batch: list[RecordRow] = []
        append = batch.append
        for user_name, visit_id, visit_type, year, seconds, diagnoses, vitals, meds in rows:
            pid = pid_of[user_name]
            rec = record(  # jsonb text is never empty: `and` only keeps a NULL (None) as is
                keys, pid, visit_id, visit_type, year, seconds,
                diagnoses and loads(diagnoses), vitals and loads(vitals), meds and loads(meds),
            )  # fmt: skip
            append((kind, pid, rec["vid"], dumps(rec).decode()))
        await emit(batch)
        n += len(batch)
    return n


async def count_participants(pools: ShardPools, study_id: str) -> int:
    """Consents in force now, over every shard (Unavailable when a shard cannot answer)."""

    async def one(shard: Shard) -> int:
        pool = await pools.get(shard)
        with db_errors(f"shard {shard.id}"):
            # count_participants: this shard's consents in force.
            return await asyncio.wait_for(pool.fetchval(
                "SELECT count(*) FROM study_consents WHERE study_id = $1 AND withdrawn_at IS NULL"
                " AND medsvc_owns(bucket)",
                study_id,
            ), timeout=5)  # fmt: skip

    try:
        counts = await asyncio.gather(*(one(s) for s in pools.shard_map.shards))
    except Unavailable as exc:
        raise Unavailable(f"{exc.detail}: the participant count cannot be complete") from exc
    return sum(counts)


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()
