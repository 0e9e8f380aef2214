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
history; someone who was gets the rows changed in the window. Someone whose consent has a
different version than at the last run withdrew and consented again in between: a withdrawal
record, then their whole history again.

Two phases, in the one snapshot: first the consents and the participants' user rows (the
run needs every shard's before it can apply k-anonymity and write the head of the body:
withdrawals and participant records), then, once the head is written, the visits, streamed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from anonymizer import deidentify
from anonymizer.deidentify import StudyKeys
from shared.db import create_pool, db_errors
from shared.errors import Unavailable
from shared.shardmap import Shard, ShardMap

# A batch of visit records as NDJSON bytes, and how many records it holds.
Emit = Callable[[bytes, int], Awaitable[None]]
# Called with the shard's participants (phase one); returns once the head of the body is written.
HeadDone = Callable[["ShardResult"], Awaitable[None]]

# participants_now: the study's consents in force in this snapshot, with their versions.
_CONSENTS = """
SELECT user_name, version FROM study_consents WHERE study_id = $1 AND withdrawn_at IS NULL"""
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

    def __init__(self, shard_map: ShardMap, password: str | None, max_size: int) -> None:
        self.shard_map = shard_map
        self._password = password
        self._max_size = max_size
        self._pools: dict[int, asyncpg.Pool] = {}
        self._lock = asyncio.Lock()

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
    # pid → the version of its consent in force.
    active: dict[str, int] = field(default_factory=dict)
    # pid → de-identified participant record, for participants new or changed in the window.
    fresh: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Participants at the last run whose consent was withdrawn and given again since.
    renewed: set[str] = field(default_factory=set)
    visits: int = 0
    left: Counter[str] = field(default_factory=Counter)


def is_new(pid: str, version: int, previous: str | None, known: Mapping[str, Any]) -> bool:
    """Does ``pid`` get its whole history (never read here, new, or consent renewed)?"""
    if previous is None or pid not in known:
        return True
    before = known[pid]
    return before is not None and before != version


async def read_shard(
    pool: asyncpg.Pool, shard_id: int, study_id: str, keys: StudyKeys, previous: str | None,
    known: Mapping[str, int | None], cutoff: int, head_done: HeadDone, emit: Emit, batch_rows: int,
) -> ShardResult:
    """Read one shard for one run: its participants to ``head_done``, its visits to ``emit``.

    ``previous``: the shard's watermark (None: never read for this study, everyone is new);
    ``known``: pid → consent version of the participants at the last successful run.
    """
    with db_errors(f"shard {shard_id}"):
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # The first statement fixes the transaction's snapshot; this is it.
            snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
            result = ShardResult(shard_id, snapshot)
            pid_of: dict[str, str] = {}
            new: list[str] = []
            continuing: list[str] = []
            for user_name, version in await conn.fetch(_CONSENTS, study_id):
                pid = pid_of[user_name] = keys.pid(user_name)
                result.active[pid] = version
                if is_new(pid, version, previous, known):
                    new.append(user_name)
                    if previous is not None and pid in known:
                        result.renewed.add(pid)
                else:
                    continuing.append(user_name)
            users = await conn.fetch(_USERS_ALL, new) if new else []
            if continuing:
                users += await conn.fetch(_USERS_CHANGED, continuing, previous)
            for r in users:
                record = deidentify.participant(
                    keys, r["user_name"], r["birth_date"], r["sex"], r["address"], cutoff,
                    result.left,
                )  # fmt: skip
                result.fresh[record["pid"]] = record
            await head_done(result)
            queries = [(_VISITS_ALL, (new,))] if new else []
            if continuing:
                queries.append((_VISITS_CHANGED, (continuing, previous)))
            for query, args in queries:
                result.visits += await _stream_visits(
                    conn, query, args, keys, pid_of, emit, batch_rows, result.left
                )  # fmt: skip
    return result


async def _stream_visits(
    conn: asyncpg.Connection, query: str, args: tuple[Any, ...], keys: StudyKeys,
    pid_of: dict[str, str], emit: Emit, batch_rows: int, left: Counter[str],
) -> int:
    """De-identify the visits ``query`` selects, ``batch_rows`` at a time; return how many."""
    n = 0
    record, loads, dumps = deidentify.visit_record, orjson.loads, orjson.dumps
    cursor = await conn.cursor(query, *args)
    while rows := await cursor.fetch(batch_rows):
        lines = [
            dumps(record(  # jsonb text is never empty: `and` only keeps a NULL (None) as is
                keys, pid_of[user_name], visit_id, visit_type, year, seconds,
                diagnoses and loads(diagnoses), vitals and loads(vitals), meds and loads(meds), left,
            ))
            for user_name, visit_id, visit_type, year, seconds, diagnoses, vitals, meds in rows
        ]  # fmt: skip
        lines.append(b"")
        await emit(b"\n".join(lines), len(rows))
        n += len(rows)
    return n


async def count_participants(pools: ShardPools, study_id: str) -> int:
    """Consents in force now, over every shard (Unavailable when a shard cannot answer)."""

    async def one(shard: Shard) -> int:
        pool = await pools.get(shard)
        with db_errors(f"shard {shard.id}"):
            # count_participants: this shard's consents in force.
            return await asyncio.wait_for(pool.fetchval(
                "SELECT count(*) FROM study_consents WHERE study_id = $1 AND withdrawn_at IS NULL",
                study_id,
            ), timeout=5)  # fmt: skip

    try:
        counts = await asyncio.gather(*(one(s) for s in pools.shard_map.shards))
    except Unavailable as exc:
        raise Unavailable(f"{exc.detail}: the participant count cannot be complete") from exc
    return sum(counts)


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()
