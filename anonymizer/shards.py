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

Moved rows. A bucket move (resharder/) copies rows with their ``updated_xid`` and
``written_on`` (the shard whose database wrote them) as they were: a row is judged against the
previous watermark of the shard it was written on (a study's watermarks include every shard it
read), so a participant who moved is not new only because they moved. A shard never read by
the study, or a row's writer of which the study has no watermark: the row is new. This is exact
because a run's snapshots are an ownership cut (:class:`OwnershipCut`): a move flips ownership
in two databases, and no run takes its snapshots between the two flips; every row read on the
bucket's owner then was written before the snapshot of the shard that wrote it.

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
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from anonymizer import deidentify
from anonymizer.deidentify import StudyKeys
from anonymizer.visitlines import CodedFields, VisitLines
from shared.db import create_pool, db_errors
from shared.dbsetup import dsn_with
from shared.errors import Unavailable
from shared.ownership import OWNERSHIP_CUT_LOCK
from shared.shardmap import MapWatcher, Shard, ShardMap

# A batch of visit records as NDJSON bytes, and how many records it holds.
Emit = Callable[[bytes, int], Awaitable[None]]
# Called with the shard's participants (phase one), before the visits are streamed.
HeadDone = Callable[["ShardResult"], Awaitable[None]]

# participants_now: the study's consents in force in this snapshot with their versions, in the
# buckets this shard owns in the same snapshot (a move's copy on its way in, or the source's
# copy before cleanup, is not read twice). arrived: the bucket came to this shard (resharder)
# after the previous watermark $2 (or the shard was never read): its rows may have been written
# on another shard, and are judged each in its writer's id space (users_arrived).
_CONSENTS = """
SELECT c.user_name, c.version,
       $2::text IS NULL OR NOT pg_visible_in_snapshot(sb.since_xid, $2::text::pg_snapshot)
FROM study_consents c
JOIN shard_buckets sb ON sb.bucket = c.bucket
JOIN shard_identity si ON sb.owner = si.shard_id
WHERE c.study_id = $1 AND c.withdrawn_at IS NULL"""
# snapshot: the run's snapshot of the shard, and the buckets this shard owns in it (the run
# checks that no two shards claim one: a move killed between its two flips, extract.py).
_SNAPSHOT = """
SELECT pg_current_snapshot()::text,
       (SELECT coalesce(array_agg(sb.bucket), '{}') FROM shard_buckets sb
        JOIN shard_identity si ON sb.owner = si.shard_id)"""
_USER_COLUMNS = "u.user_name, u.birth_date, u.sex, u.address"
# users_all: the participant rows of new participants ($1). (Their visits: visits_sql.)
_USERS_ALL = f"""
SELECT {_USER_COLUMNS} FROM unnest($1::text[]) AS p(user_name) JOIN users u USING (user_name)"""
_TYPES = ", ".join(f"'{t}'" for t in sorted(deidentify.VISIT_TYPES))
# visits_all: the visits of new participants ($1 userNames). The shard builds what needs no
# judgement and costs per row in Python: the line's head after the vid — the UTC year
# (1900..9999), the type (one of the four, else null), the duration in minutes — from typed
# columns (the year by date_part: a double, exact for a year, where extract's numeric costs
# more per row). Here the userName picks the line's start (with the pid) and the vid is
# computed (keyed hashes: the key stays in this process); the coded fields come as jsonb text,
# checked here (deidentify). Nothing else of the row is read. A filter, not a join with the
# names: the planner has no statistics of an unnest's values and hashed the whole of
# ``visits`` before it sent a row (spilling to disk, ~0.1 s on 50,000 visits); the list is a
# constant in a COPY, which PostgreSQL looks up by hash, row by row, as it scans.
_VISITS_ALL = f"""
SELECT '","year":' || CASE WHEN v.started_at >= '1900-01-01Z' AND v.started_at < '10000-01-01Z'
                              THEN date_part('year', v.started_at AT TIME ZONE 'UTC')::int::text
                              ELSE 'null' END
       || ',"type":' || CASE WHEN v.type IN ({_TYPES}) THEN '"' || v.type || '"' ELSE 'null' END
       || ',"durationMinutes":'
       || coalesce(round(extract(epoch FROM v.ended_at - v.started_at) / 60)::bigint::text, 'null')
       AS head,
       v.user_name, v.visit_id::text AS visit_id, v.type IN ({_TYPES}) AS type_ok,
       v.diagnoses::text AS diagnoses, v.vitals::text AS vitals, v.medications::text AS medications
FROM visits v
WHERE v.user_name = ANY($1::text[])"""
# visits_changed: the same for continuing participants, the rows written on this shard ($3)
# since $2. Rows another shard wrote came with a move and are not judged here: a bucket that
# arrived since $2 is read with visits_arrived; one that arrived before it, by the ownership
# cut, held only rows its writers' watermarks of $2's run already covered.
_VISITS_CHANGED = (
    _VISITS_ALL
    + """
  AND v.updated_xid >= pg_snapshot_xmin($2::text::pg_snapshot)
  AND NOT pg_visible_in_snapshot(v.updated_xid, $2::text::pg_snapshot)
  AND coalesce(v.written_on, $3) = $3"""
)
# users_changed: continuing participants' ($1) rows whose writer the previous
# snapshot ($2) did not see. The xmin bound follows from the visibility test; it lets the
# index on updated_xid skip the older rows.
_USERS_CHANGED = (
    _USERS_ALL
    + """
WHERE u.updated_xid >= pg_snapshot_xmin($2::text::pg_snapshot)
  AND NOT pg_visible_in_snapshot(u.updated_xid, $2::text::pg_snapshot)
  AND coalesce(u.written_on, $3) = $3"""
)
# *_arrived: continuing participants in buckets that arrived since the previous run: each row
# judged against the previous watermark of the shard that wrote it (shards $s, watermarks $w;
# $self: this shard, for rows written before it knew its id); none for that shard: new.
_ARRIVED = """NOT coalesce(pg_visible_in_snapshot({t}.updated_xid,
    (${w}::text[])[array_position(${s}::int[], coalesce({t}.written_on, ${self}))]::pg_snapshot),
    false)"""
_USERS_ARRIVED = _USERS_ALL + "\nWHERE " + _ARRIVED.format(t="u", s=2, w=3, self=4)
_VISITS_ARRIVED = _VISITS_ALL + "\n  AND " + _ARRIVED.format(t="v", s=2, w=3, self=4)


class ShardPools:
    """One small pool per shard, opened on first use (a shard that is down fails its use only)."""

    def __init__(
        self,
        shard_map: ShardMap | MapWatcher,
        password: str | None,
        max_size: int,
        user: str | None = None,
    ) -> None:
        self._map = shard_map
        self._password = password
        self._user = user
        self._max_size = max_size
        self._pools: dict[int, asyncpg.Pool] = {}
        self._cut_pools: dict[int, asyncpg.Pool] = {}
        self._lock = asyncio.Lock()

    @property
    def shard_map(self) -> ShardMap:
        """The current map (a watched file is re-read when it changed: one stat)."""
        if isinstance(self._map, MapWatcher):
            self._map.reload()
            return self._map.current
        return self._map

    async def get(self, shard: Shard) -> asyncpg.Pool:
        """The shard's pool for reads (Unavailable when it cannot be opened now).

        Its sessions keep no state (a run's settings are transaction-local), so a connection
        goes back without asyncpg's reset round trip; JIT is off from the start: compiling
        the visit query costs more than it saves (over a second, measured)."""
        return await self._pool(
            self._pools, shard, reset_sessions=False, server_settings={"jit": "off"}
        )

    async def cut_pool(self, shard: Shard) -> asyncpg.Pool:
        """The shard's connections for :class:`OwnershipCut` (their session lock is let go by
        asyncpg's reset when a connection goes back): apart from the reads, so that a cut never
        waits for a reader's connection while readers wait for it to be taken."""
        return await self._pool(
            self._cut_pools, shard, max_size=2,
            server_settings={"lock_timeout": OwnershipCut.TIMEOUT},
        )  # fmt: skip

    async def _pool(
        self, pools: dict[int, asyncpg.Pool], shard: Shard, max_size: int | None = None,
        **options: Any,
    ) -> asyncpg.Pool:
        pool = pools.get(shard.id)
        if pool is not None:
            return pool
        async with self._lock:
            if shard.id not in pools:
                with db_errors(f"shard {shard.id}"):
                    dsn = (
                        dsn_with(shard.postgres, user=self._user) if self._user else shard.postgres
                    )
                    pools[shard.id] = await create_pool(
                        dsn, password=self._password, min_size=0,
                        max_size=max_size or self._max_size, attempts=1,
                        what=f"shard-{shard.id}", **options,
                    )  # fmt: skip
            return pools[shard.id]

    async def close(self) -> None:
        for pool in [*self._pools.values(), *self._cut_pools.values()]:
            await pool.close()
        self._pools.clear()
        self._cut_pools.clear()


class OwnershipCut:
    """A run's snapshots taken while no bucket move is between its two flips.

    :meth:`hold` takes the shared ownership-cut lock (shared/ownership.py) on every shard, in
    ascending id order, on connections of their own (:meth:`ShardPools.cut_pool`); the
    readers take their snapshots; the last one's :meth:`taken` lets go. A move holds the lock
    exclusively on its two shards from before its first flip until after its second, so every
    snapshot of the run sees both flips or neither. The readers' connections stay out of it
    (they may wait for their pool).
    """

    # A move holds the lock for its flips (milliseconds); a wait this long means trouble.
    TIMEOUT = "30s"

    def __init__(self, readers: int) -> None:
        self._held: list[tuple[asyncpg.Pool, asyncpg.pool.PoolConnectionProxy]] = []
        self._waiting = readers

    @classmethod
    async def hold(cls, pools: ShardPools, shard_list: list[Shard]) -> OwnershipCut:
        cut = cls(len(shard_list))
        try:
            for shard in sorted(shard_list, key=lambda s: s.id):
                pool = await pools.cut_pool(shard)
                with db_errors(f"shard {shard.id}"):
                    conn = await pool.acquire()
                    cut._held.append((pool, conn))
                    await conn.execute("SELECT pg_advisory_lock_shared($1)", OWNERSHIP_CUT_LOCK)
        except asyncpg.LockNotAvailableError as exc:
            await cut.release()
            raise Unavailable(
                f"a bucket move held shard {shard.id}'s ownership cut for {cls.TIMEOUT}"
            ) from exc
        except BaseException:
            await cut.release()
            raise
        return cut

    async def taken(self) -> None:
        """One reader has its snapshot; the last one releases the cut."""
        self._waiting -= 1
        if self._waiting == 0:
            await self.release()

    async def release(self) -> None:
        """Let go (the pool's reset unlocks the session's advisory locks; a connection whose
        reset fails is closed, which drops them too); idempotent."""
        held, self._held = self._held, []
        for pool, conn in held:
            with contextlib.suppress(Exception):
                await pool.release(conn, timeout=5)


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
    # The buckets this shard owns in the snapshot.
    owned: list[int] = field(default_factory=list)


def is_new(pid: str, version: int, known: Mapping[str, Any]) -> bool:
    """Does ``pid`` get its whole history (new to the study, or consent renewed)?

    A participant the study knows, on a shard it never read, is not: they moved there, and
    their rows are judged each against its writer's watermark (``*_ARRIVED``)."""
    if pid not in known:
        return True
    before = known[pid]
    return before is not None and before != version


async def read_shard(
    pool: asyncpg.Pool,
    shard_id: int,
    study_id: str,
    keys: StudyKeys,
    marks: Mapping[int, str],
    known: Mapping[str, int | None],
    cutoff: int,
    head_done: HeadDone,
    emit: Emit,
    batch_rows: int = 2000,
    snapshot_taken: Callable[[], Awaitable[None]] | None = None,
) -> ShardResult:
    """Read one shard for one run: its participants to ``head_done``, its visits to ``emit``.

    ``marks``: the study's watermark of each shard it read at the last successful run (this
    shard's missing: never read here); ``known``: pid → consent version of the participants at
    the last successful run; ``snapshot_taken``: awaited once the snapshot is taken (the
    ownership cut, :class:`OwnershipCut`).
    """
    previous = marks.get(shard_id)
    mark_shards, mark_snapshots = list(marks), list(marks.values())
    with db_errors(f"shard {shard_id}"):
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            # The first statement fixes the transaction's snapshot; this is it (and the
            # buckets the shard owns in it).
            snapshot, owned = await conn.fetchrow(_SNAPSHOT)
            if snapshot_taken is not None:
                await snapshot_taken()
            result = ShardResult(shard_id, snapshot, owned=owned)
            pid_of: dict[str, str] = {}
            new: list[str] = []
            continuing: list[str] = []
            arrived: list[str] = []
            for user_name, version, moved_in in await conn.fetch(_CONSENTS, study_id, previous):
                pid = pid_of[user_name] = keys.pid(user_name)
                result.active[pid] = version
                whole = is_new(pid, version, known)
                if whole and pid in known:
                    result.renewed.add(pid)
                (new if whole else arrived if moved_in else continuing).append(user_name)
            users = await conn.fetch(_USERS_ALL, new) if new else []
            if continuing:
                users += await conn.fetch(_USERS_CHANGED, continuing, previous, shard_id)
            if arrived:
                users += await conn.fetch(
                    _USERS_ARRIVED, arrived, mark_shards, mark_snapshots, shard_id
                )
            for r in users:
                record = deidentify.participant(
                    keys, r["user_name"], r["birth_date"], r["sex"], r["address"], cutoff,
                    result.left,
                )  # fmt: skip
                result.fresh[record["pid"]] = record
            await head_done(result)
            queries: list[tuple[str, tuple[Any, ...]]] = []
            if new:
                queries.append((_VISITS_ALL, (new,)))
            if continuing:
                queries.append((_VISITS_CHANGED, (continuing, previous, shard_id)))
            if arrived:
                queries.append((_VISITS_ARRIVED, (arrived, mark_shards, mark_snapshots, shard_id)))
            coded = CodedFields(keys)
            lines = VisitLines(coded, VisitLines.starts(pid_of))
            for query, args in queries:
                result.visits += await _stream_visits(conn, query, args, emit, batch_rows, lines)
            coded.count_into(result.left)
    return result


# A visit stream fails after this long without data (the pool's command timeout, per batch).
IDLE_SECONDS = 30.0
# asyncpg bounds a COPY as a whole (its default: the command timeout): a day, the idle guard
# being what stops a stalled one.
_COPY_TIMEOUT = 86_400.0

async def _stream_visits(
    conn: asyncpg.Connection,
    query: str,
    args: tuple[Any, ...],
    emit: Emit,
    batch_rows: int,
    lines: VisitLines,
    idle: float = IDLE_SECONDS,
) -> int:
    """The visit lines ``query`` selects, at least ``batch_rows`` at a time, to ``emit``; how many.

    Streamed with ``COPY (query) TO STDOUT``: the shard sends rows as fast as they come and
    the socket's flow control is the back-pressure, so the shard computes the next rows while
    this process de-identifies the last (a cursor would wait a round trip per batch). Each
    piece that arrives is de-identified at once, its whole lines in bulk (``lines``). (The
    arguments are inlined by asyncpg as quoted literals: COPY takes no parameters.)

    A COPY of a large shard may take long, so it has no total timeout; ``idle`` seconds
    without data from the shard fail it, as the pool's command timeout failed a cursor's
    fetch. (Time spent waiting for the writer to take a batch does not count: the head of a
    large study, written before any visit, may take long.)
    """
    loop = asyncio.get_running_loop()
    n = rows = 0
    pending: list[bytes] = []
    rest = b""
    failure: BaseException | None = None

    async def sink(chunk: bytes | bytearray) -> None:
        # Nothing may leave the sink while the COPY runs: asyncpg answers it by cancelling the
        # query, and when the shard had already sent everything (asyncpg pauses reading while
        # the sink works) the connection then hangs until the command timeout. So a failure,
        # or a cancellation (another shard failed, the process stops), is kept and raised
        # once the COPY has ended, the rest of it read and dropped.
        nonlocal failure
        if failure is None:
            try:
                await take(chunk)
            except BaseException as exc:  # noqa: BLE001 - raised below, after the COPY
                failure = exc

    async def take(chunk: bytes | bytearray) -> None:
        nonlocal rows, rest
        guard.reschedule(loop.time() + idle)
        data = rest + chunk  # bytes (asyncpg gives a bytearray)
        end = data.rfind(b"\n") + 1
        # asyncpg hands over whole COPY messages (one row each): usually no rest to keep.
        whole, rest = (data, b"") if end == len(data) else (data[:end], data[end:])
        if whole:
            records, count = lines.records(whole)
            pending.append(records)
            rows += count
            if rows >= batch_rows:
                await flush()

    async def flush() -> None:
        nonlocal n, rows
        if rows:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            n += rows
            count, rows = rows, 0
            guard.reschedule(None)  # waiting for the writer is not the shard's silence
            await emit(data, count)
            guard.reschedule(loop.time() + idle)

    async with asyncio.timeout(idle) as guard:
        await conn.copy_from_query(query, *args, output=sink, timeout=_COPY_TIMEOUT)
        if failure is not None:
            raise failure
        if rest:
            raise ValueError("COPY ended within a row")
        await flush()
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
