"""One bucket move, phase by phase (DESIGN.md "Growth: adding a shard and moving buckets online").

copy     the source A publishes the moving buckets' rows (a publication with a row filter on
         the ``bucket`` column); the target B subscribes: PostgreSQL copies the rows, then
         streams every later change. The range is split into streams, each a publication,
         a subscription and a slot over a bucket sub-range, so that several initial COPYs
         (PostgreSQL runs one per table and subscription) run side by side. Apply runs with
         session_replication_role = replica, so B's audit and ownership triggers do not
         fire: the copy adds no audit event.
catchup  wait until B is close behind A (replication lag, bytes of WAL).
fence    lock the moving buckets' rows of A's ``shard_buckets`` FOR UPDATE: every write to
         them waits in its ownership trigger (it does not fail). Insert a marker per stream
         on A (one transaction) and wait until B has applied every one (each stream applies
         in commit order: B then has every commit A made), and until A's outbox holds
         no event of a moving user (the audit chain keeps each entity's order). Compare
         checksums of the moving rows, per table, on both sides at once: a mismatch aborts
         with A the owner. Flip the owner on B, then on A (one transaction with the lock),
         both under the ownership-cut lock (shared/ownership.py: no extraction run sees one
         flip without the other), all within the fence limit; past it, roll back: A stays
         the owner.
switch   invalidate the moved users' cache entries on both shards, then publish the next map
         version. Writes that waited on A are refused with 421 once the flip commits; the
         gateways hold them until they see the new map and send them to B.
verify   per table, every row of the range on A (now frozen: it refuses writes) against B as
         it was at the flip: missing = extra = mismatched = 0, by checksum of every column
         (the anonymizer's watermark included: replication keeps a row's writer and its
         transaction id, user_service/migrations/008_written_on.sql).
cleanup  drop the subscriptions (and their slots) and the publications, then delete A's
         copies.

Resuming: what has happened is read from the databases themselves (who owns the range on A
and on B, which replication objects exist), not only from the registry's phase. A move
resumed in its cleanup was verified before it: it only finishes the cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis import asyncio as aioredis

from resharder import publish
from resharder.progress import Progress
from resharder.state import Move, set_phase
from shared.cache import _keys as cache_keys  # the one place that knows the key layout
from shared.cachekeys import user_group, visits_group
from shared.ownership import OWNERSHIP_CUT_LOCK
from shared.shardmap import ShardMap

# Tables keyed by userName, parents first, with the key that identifies a row.
TABLES: tuple[tuple[str, str], ...] = (
    ("users", "user_name"),
    ("visits", "visit_id::text"),
    ("study_consents", "user_name || '/' || study_id"),
)
# Not compared: the bucket, a function of the key (A's trigger computed it; replication
# carries it: user_service/migrations/009_bucket_kept_by_replication.sql).
_NOT_COMPARED = ("bucket",)
# At most this many streams (publication + subscription + slot, each over a bucket
# sub-range): each takes 1 + max_sync_workers_per_subscription replication workers on B and
# as many slots and WAL senders on A while it copies, so fewer when the servers lack room.
MAX_STREAMS = 4
# Connections per side that compute the fence's checksums, each over a part of the range:
# the fence lasts while they run, and several backends get more of a busy machine's CPU.
CHECKSUM_CONNECTIONS = 4


async def invalidate(redis_url: str, user_names: list[str]) -> None:
    """Drop the cache groups (and their leases) of ``user_names``: what a write would drop."""
    keys = [k for u in user_names for g in (user_group(u), visits_group(u)) for k in cache_keys(g)]
    client = aioredis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        # One round trip: the switch is inside the time writes to these users wait.
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(keys), 1000):
            pipe.delete(*keys[i : i + 1000])
        await pipe.execute()
    finally:
        await client.aclose()


class Aborted(Exception):
    """The move stopped before the flip and was rolled back: the source still owns."""


@dataclass
class Options:
    fence_limit: float = 2.0
    # Catch up at least this long before fencing (lets an operator watch a move; tests).
    hold_before_fence: float = 0.0
    # Fence once B is this close behind A (bytes of WAL).
    catchup_bytes: int = 1 << 20
    catchup_timeout: float = 600.0
    copy_timeout: float = 3600.0
    # Replication streams to copy with (0: as many as both servers have room for, at most
    # MAX_STREAMS). Fixed when the move's publications are created; a resumed move keeps them.
    streams: int = 0
    # Tests: stop for good at this point (STALL_POINTS), saying so on stderr, to be killed.
    stall_at: str = ""


# Where a move can be told to stall (Options.stall_at): inside each phase.
STALL_POINTS = ("copy", "catchup", "fence", "flipped", "switch", "verify", "cleanup")


@dataclass
class Summary:
    move_id: int
    lo: int
    hi: int
    source: int
    target: int
    outcome: str = "running"
    reason: str | None = None
    resumed: bool = False
    phases: dict[str, float] = field(default_factory=dict)
    fence_seconds: float | None = None
    rows: dict[str, int] = field(default_factory=dict)
    copy_rows_per_second: float | None = None
    streams: int | None = None  # replication streams the copy ran in (None: no copy this run)
    diff: dict[str, dict[str, int]] = field(default_factory=dict)
    map_version: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "moveId": self.move_id,
            "buckets": [self.lo, self.hi],
            "source": self.source,
            "target": self.target,
            "outcome": self.outcome,
            "reason": self.reason,
            "resumed": self.resumed,
            "phaseSeconds": {k: round(v, 3) for k, v in self.phases.items()},
            "fenceSeconds": None if self.fence_seconds is None else round(self.fence_seconds, 3),
            "rows": self.rows,
            "copyRowsPerSecond": self.copy_rows_per_second,
            "streams": self.streams,
            "diff": self.diff,
            "mapVersion": self.map_version,
        }


def conninfo(dsn: str, password: str | None) -> str:
    """A libpq connection string for CREATE SUBSCRIPTION (a literal, quotes doubled)."""
    if password:
        sep = "&" if "?" in dsn else "?"
        from urllib.parse import quote

        dsn = f"{dsn}{sep}password={quote(password, safe='')}"
    return "'" + dsn.replace("'", "''") + "'"


class Mover:
    """Runs one move against the shard databases named by the map."""

    def __init__(
        self,
        move: Move,
        shard_map: ShardMap,
        registry: asyncpg.Connection,
        map_path: str,
        password: str | None,
        options: Options,
        progress: Progress,
        configmap: str = "",
    ) -> None:
        self.m = move
        self.map = shard_map
        self.registry = registry
        self.map_path = map_path
        self.password = password
        self.opts = options
        self.progress = progress
        self.configmap = configmap
        self.src = shard_map.shard(move.source)
        self.dst = shard_map.shard(move.target)
        self.summary = Summary(move.move_id, move.lo, move.hi, move.source, move.target)
        self.a: asyncpg.Connection
        self.b: asyncpg.Connection
        self.b_snapshot: asyncpg.Connection | None = None
        self.streams: list[str] = []  # the move's streams, once its publications exist

    async def _connect(self, dsn: str) -> asyncpg.Connection:
        # One time zone on every connection: the checksums hash rows as text.
        return await asyncpg.connect(
            dsn, password=self.password, timeout=10, server_settings={"TimeZone": "UTC"}
        )

    # -- the whole move -----------------------------------------------------------------

    async def _stall(self, point: str) -> None:
        if self.opts.stall_at == point:
            print(f"resharder: stalled at {point}", file=sys.stderr, flush=True)
            await asyncio.Event().wait()

    async def run(self, resumed: bool) -> Summary:
        self.summary.resumed = resumed
        verified = resumed and self.m.phase == "cleanup"
        self.a = await self._connect(self.src.postgres)
        self.b = await self._connect(self.dst.postgres)
        try:
            flipped = await self._owned_by_target(self.a)
            if not flipped:
                if await self._owned_by_target(self.b):
                    # Killed between the two flips: A never let go, nothing reached B.
                    await self._set_owner(self.b, self.m.source)
                try:
                    await self._timed("copy", self._copy())
                    await self._timed("catchup", self._catch_up())
                    await self._timed("fence", self._fence())
                except Aborted as exc:
                    await self._rollback(str(exc))
                    return self.summary
                await self._stall("flipped")
            # Resumed in the cleanup: switched and verified before it (A's copies may be gone).
            if not verified:
                await self._timed("switch", self._switch())
            ok = verified or await self._timed(
                "verify", self._verify(exact=self.b_snapshot is not None)
            )
            if not ok:
                self.summary.outcome = "verify_failed"
                self.summary.reason = "the copies differ: the source's copies are kept"
                await set_phase(self.registry, self.m, "verify_failed", diff=self.summary.diff)
                return self.summary
            await self._timed("cleanup", self._cleanup())
            self.summary.outcome = "done"
            await set_phase(self.registry, self.m, "done", summary=self.summary.as_json())
            return self.summary
        finally:
            for conn in (self.a, self.b, self.b_snapshot):
                if conn is not None and not conn.is_closed():
                    await conn.close()

    async def _timed(self, phase: str, coro: Any) -> Any:
        self.progress.phase(phase)
        if phase != "switch" and phase != "fence":
            await set_phase(self.registry, self.m, phase)
        started = time.monotonic()
        try:
            return await coro
        finally:
            self.summary.phases[phase] = (
                self.summary.phases.get(phase, 0.0) + time.monotonic() - started
            )

    # -- ownership -------------------------------------------------------------------------

    async def _owned_by_target(self, conn: asyncpg.Connection) -> bool:
        owners = await conn.fetch(
            "SELECT DISTINCT owner FROM shard_buckets WHERE bucket BETWEEN $1 AND $2",
            self.m.lo,
            self.m.hi,
        )
        return [r["owner"] for r in owners] == [self.m.target]

    async def _set_owner(self, conn: asyncpg.Connection, owner: int) -> None:
        await conn.execute(
            "UPDATE shard_buckets SET owner = $3, since_xid = pg_current_xact_id()"
            " WHERE bucket BETWEEN $1 AND $2",
            self.m.lo,
            self.m.hi,
            owner,
        )

    # -- copy and catch up -----------------------------------------------------------------

    async def _count(self, conn: asyncpg.Connection) -> dict[str, int]:
        out = {}
        for table, _ in TABLES:
            out[table] = await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE bucket BETWEEN $1 AND $2", self.m.lo, self.m.hi
            )
        return out

    async def _count_on(self, dsn: str) -> dict[str, int]:
        conn = await self._connect(dsn)
        try:
            return await self._count(conn)
        finally:
            await conn.close()

    async def _stamp_unknown_writer(self) -> None:
        """Rows of the range written before A knew its shard id (written_on NULL) are A's:
        say so before they travel, without firing a trigger (their updated_xid stays; no
        audit event). Replica role: no trigger fires (the bucket's would only for a change
        of the userName or the bucket)."""
        async with self.a.transaction():
            await self.a.execute("SET LOCAL session_replication_role = replica")
            for table, _ in TABLES:
                await self.a.execute(
                    f"UPDATE {table} SET written_on = $3"
                    " WHERE bucket BETWEEN $1 AND $2 AND written_on IS NULL",
                    self.m.lo, self.m.hi, self.m.source,
                )  # fmt: skip

    # -- streams ---------------------------------------------------------------------------

    def _stream_name(self, i: int) -> str:
        return f"{self.m.name}_s{i}"

    def _ours(self, names: list[str]) -> list[str]:
        """This move's streams among replication object names, in stream order (the bare move
        name is a stream too: a move begun before there were several)."""
        pattern = re.compile(re.escape(self.m.name) + r"(_s(\d+))?")
        found = {n: m for n in names if (m := pattern.fullmatch(n))}
        return sorted(found, key=lambda n: int(found[n].group(2) or -1))

    async def _streams(self) -> list[str]:
        """The move's streams, as its publications on A say (created in one transaction)."""
        return self._ours(
            [r["pubname"] for r in await self.a.fetch("SELECT pubname FROM pg_publication")]
        )

    async def _room(self) -> int:
        """How many streams both servers can run at once: each needs an apply worker and its
        table-sync workers on B, and a slot and a WAL sender for each of them on A."""
        per = 1 + int(await self.b.fetchval("SHOW max_sync_workers_per_subscription"))
        workers = int(await self.b.fetchval("SHOW max_logical_replication_workers"))
        busy = await self.b.fetchval(
            "SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL"
        )
        slots = int(await self.a.fetchval("SHOW max_replication_slots"))
        used = await self.a.fetchval("SELECT count(*) FROM pg_replication_slots")
        senders = int(await self.a.fetchval("SHOW max_wal_senders"))
        sending = await self.a.fetchval("SELECT count(*) FROM pg_stat_replication")
        room = min(workers - busy, slots - used, senders - sending) // per
        return max(1, int(room))

    def _ranges(self, k: int) -> list[tuple[int, int]]:
        """``k`` contiguous sub-ranges of the move's buckets, as even as can be (a bucket's
        users are a hash's: rows spread evenly over buckets)."""
        lo, n = self.m.lo, self.m.hi - self.m.lo + 1
        k = max(1, min(k, n))
        bounds = [lo + (n * i) // k for i in range(k + 1)]
        return [(bounds[i], bounds[i + 1] - 1) for i in range(k)]

    async def _publish(self) -> list[str]:
        """The streams' publications on A, all or none (one transaction)."""
        streams = await self._streams()
        if streams:
            return streams
        await self._stamp_unknown_writer()
        k = self.opts.streams or min(MAX_STREAMS, await self._room())
        ranges = self._ranges(k)
        streams = [self._stream_name(i) for i in range(len(ranges))]
        async with self.a.transaction():
            for name, (lo, hi) in zip(streams, ranges, strict=True):
                where = f"WHERE (bucket BETWEEN {int(lo)} AND {int(hi)})"
                tables = ", ".join(f"{t} {where}" for t, _ in TABLES)
                await self.a.execute(
                    f"CREATE PUBLICATION {name} FOR TABLE {tables},"
                    f" move_markers WHERE (move_name = '{name}')"
                )
        return streams

    async def _subscribe(self, streams: list[str]) -> None:
        """B's subscription to each stream, created disabled (one at a time: each creates its
        slot on A), then all enabled in one transaction: PostgreSQL's launcher starts the
        apply workers of the subscriptions it finds enabled in one pass, and then no other
        for wal_retrieve_retry_interval (5 s by default), which one by one would cost."""
        rows = await self.b.fetch("SELECT subname, subenabled FROM pg_subscription")
        existing = set(self._ours([r["subname"] for r in rows]))
        disabled = set(self._ours([r["subname"] for r in rows if not r["subenabled"]]))
        missing = [name for name in streams if name not in existing]
        await self._create_subscriptions(missing, fresh=not existing)
        async with self.b.transaction():
            for name in streams:
                if name in missing or name in disabled:
                    await self.b.execute(f"ALTER SUBSCRIPTION {name} ENABLE")

    async def _create_subscriptions(self, missing: list[str], fresh: bool) -> None:
        if not missing:
            return
        # Slots left by a CREATE SUBSCRIPTION killed before it committed on B.
        await self.a.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = ANY($1::text[])",
            missing,
        )
        if fresh:
            # Leftovers of an earlier aborted move of these buckets would collide with the copy.
            await self._delete_unowned(self.b)
        for name in missing:
            await self.b.execute(
                f"CREATE SUBSCRIPTION {name} "
                f"CONNECTION {conninfo(self.src.postgres, self.password)}"
                f" PUBLICATION {name} WITH (copy_data = true, enabled = false)"
            )

    async def _copy(self) -> None:
        started = time.monotonic()
        streams = self.streams = await self._publish()
        self.summary.streams = len(streams)
        await self._subscribe(streams)
        await self._stall("copy")
        # The rows to copy, for the progress: counted on A beside the copy, not before it.
        counting = asyncio.create_task(self._count_on(self.src.postgres))
        try:
            await self._wait_synced(streams, counting, started)
        except BaseException:
            counting.cancel()
            raise
        elapsed = time.monotonic() - started
        total = sum((await counting).values())
        self.summary.copy_rows_per_second = round(total / elapsed, 1) if elapsed > 0 else None

    async def _wait_synced(
        self, streams: list[str], counting: asyncio.Task[dict[str, int]], started: float
    ) -> None:
        """Until every stream has copied every table (sync state ready, or done and waiting
        for its apply worker), showing the progress."""
        counted: dict[str, int] = {}
        deadline = time.monotonic() + self.opts.copy_timeout
        expected = len(streams) * (len(TABLES) + 1)
        while True:
            states = await self.b.fetch(
                "SELECT r.srrelid::regclass::text AS rel, r.srsubstate::text AS state"
                " FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid"
                " WHERE s.subname = ANY($1::text[])",
                streams,
            )
            pending = {r["rel"] for r in states if r["state"] not in ("r", "s")}
            if len(states) == expected and not pending:
                return
            # The tables every stream has copied, and the copies in progress as PostgreSQL
            # reports them (no count over growing tables).
            running = await self.b.fetchval(
                "SELECT coalesce(sum(tuples_processed), 0) FROM pg_stat_progress_copy"
                " WHERE datname = current_database() AND command = 'COPY FROM'"
            )
            if not counted and counting.done():
                counted = counting.result()
            copied = int(running) + sum(
                n for t, n in counted.items() if len(states) == expected and t not in pending
            )
            total = sum(counted.values())
            elapsed = time.monotonic() - started
            self.progress.copy(
                copied, total, copied / elapsed if elapsed > 0 else 0.0, await self._lag()
            )
            if time.monotonic() > deadline:
                raise Aborted(f"the copy did not finish in {self.opts.copy_timeout:.0f} s")
            await asyncio.sleep(0.05)

    async def _lag(self) -> int | None:
        """Bytes of WAL the furthest-behind stream has still to confirm (None: a slot is not
        there yet)."""
        streams = self.streams or await self._streams()
        row = await self.a.fetchrow(
            "SELECT count(*) AS n,"
            " max((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint) AS lag"
            " FROM pg_replication_slots WHERE slot_name = ANY($1::text[])",
            streams,
        )
        if not streams or row["n"] < len(streams) or row["lag"] is None:
            return None
        return max(int(row["lag"]), 0)

    async def _catch_up(self) -> None:
        await self._stall("catchup")
        started = time.monotonic()
        while True:
            lag = await self._lag()
            self.progress.lag(lag)
            held = time.monotonic() - started >= self.opts.hold_before_fence
            if held and lag is not None and lag <= self.opts.catchup_bytes:
                return
            if time.monotonic() - started > self.opts.catchup_timeout:
                raise Aborted(f"the target did not catch up in {self.opts.catchup_timeout:.0f} s")
            await asyncio.sleep(0.1)

    # -- fence and flip --------------------------------------------------------------------

    async def _fence(self) -> None:
        await set_phase(self.registry, self.m, "fence")
        limit = self.opts.fence_limit
        lo, hi = self.m.lo, self.m.hi
        # The checksums' connections and the columns they hash, ready before the fence (its
        # limit counts from here on).
        columns = {table: ", ".join(await self._columns(table)) for table, _ in TABLES}
        extra = CHECKSUM_CONNECTIONS - 1
        helpers: list[asyncpg.Connection] = await asyncio.gather(
            *(self._connect(sh.postgres) for sh in (self.src, self.dst) for _ in range(extra))
        )
        started = time.monotonic()

        def check(what: str) -> None:
            if time.monotonic() - started > limit:
                raise Aborted(f"fence limit {limit:g} s exceeded waiting for {what}")

        try:
            fence = await self._connect(self.src.postgres)
        except BaseException:
            for conn in helpers:
                await conn.close()
            raise
        b_flipped = b_open = committed = False
        tx = fence.transaction()
        try:
            await fence.execute(f"SET lock_timeout = '{max(int(limit * 1000), 1)}ms'")
            await tx.start()
            try:
                # Every write to these buckets now waits in its ownership trigger.
                await fence.execute(
                    "SELECT bucket FROM shard_buckets WHERE bucket BETWEEN $1 AND $2 FOR UPDATE",
                    lo,
                    hi,
                )
            except asyncpg.LockNotAvailableError as exc:
                raise Aborted("fence limit exceeded waiting for writes in flight") from exc
            nonce = uuid.uuid4()
            streams = self.streams or await self._streams()
            # One marker per stream, one transaction: each stream carries its own.
            await self.a.execute(
                "INSERT INTO move_markers (move_name, nonce) SELECT unnest($1::text[]), $2",
                streams,
                nonce,
            )
            while await self.b.fetchval(
                "SELECT count(*) FROM move_markers WHERE move_name = ANY($1::text[])"
                " AND nonce = $2",
                streams,
                nonce,
            ) < len(streams):
                check("the target to catch up")
                await asyncio.sleep(0.005)
            while await self.a.fetchval(
                "SELECT count(*) FROM audit_outbox"
                " WHERE medsvc_bucket(split_part(entity_id, '/', 1)) BETWEEN $1 AND $2",
                lo,
                hi,
            ):
                check("the source's outbox to ship the moving users' audit events")
                await asyncio.sleep(0.01)
            await self._stall("fence")
            # B has every row A has: the checksums of the moving rows must agree before B
            # may own them (a mismatch aborts here, A still the owner).
            differ = await self._checksums_differ(
                check, columns, [self.a, *helpers[:extra]], [self.b, *helpers[extra:]]
            )
            if differ:
                raise Aborted(f"checksums differ before the flip: {', '.join(differ)}")
            # B as it is at the flip, for the verification (A stays frozen after it).
            snap = await self._connect(self.dst.postgres)
            await snap.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await snap.fetchval("SELECT count(*) FROM shard_buckets")
            self.b_snapshot = snap
            check("the flip")
            # The ownership cut on both databases, in ascending shard id order (as every
            # extraction run takes it), held until both flips commit.
            b_tx = self.b.transaction()
            await b_tx.start()
            b_open = True
            remaining = max(int((limit - (time.monotonic() - started)) * 1000), 1)
            for conn in (fence, self.b):
                await conn.execute(f"SET LOCAL lock_timeout = '{remaining}ms'")
            ordered = sorted([(self.m.source, fence), (self.m.target, self.b)], key=lambda c: c[0])
            try:
                for _, conn in ordered:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", OWNERSHIP_CUT_LOCK)
            except asyncpg.LockNotAvailableError as exc:
                raise Aborted("fence limit exceeded waiting for an extraction's snapshots") from exc
            await self._set_owner(self.b, self.m.target)
            check("the flip")
            await self._set_owner(fence, self.m.target)
            await b_tx.commit()
            b_open, b_flipped = False, True
            await tx.commit()
            committed = True
        except BaseException:
            if b_open:
                with contextlib.suppress(Exception):
                    await b_tx.rollback()
            if not committed:
                with contextlib.suppress(Exception):  # the connection is closed below either way
                    await tx.rollback()
            if b_flipped and not await self._owned_by_target(self.a):
                await self._set_owner(self.b, self.m.source)
            raise
        finally:
            await fence.close()
            for conn in helpers:
                await conn.close()
        self._fence_started = started

    async def _checksums_differ(
        self,
        check: Any,
        columns: dict[str, str],
        a_conns: list[asyncpg.Connection],
        b_conns: list[asyncpg.Connection],
    ) -> list[str]:
        """The tables whose moving rows differ between A and B (count and an order-free sum of
        row hashes), both sides read at once; A is fenced, B caught up to it. It costs fence
        time in proportion to the range (~4 µs a row on the development machine), shared by
        each side's connections: each sums a part of the buckets of every table."""
        parts = [(t, lo, hi) for t in columns for lo, hi in self._ranges(len(a_conns))]

        async def sums(conn: asyncpg.Connection, mine: list[tuple[str, int, int]]) -> list[Any]:
            return [
                await conn.fetchrow(
                    f"SELECT count(*) AS n, coalesce(sum(hashtextextended(ROW({columns[t]})::text,"
                    f" 0)), 0) AS h FROM {t} WHERE bucket BETWEEN $1 AND $2",
                    lo,
                    hi,
                )  # fmt: skip
                for t, lo, hi in mine
            ]

        async def side(conns: list[asyncpg.Connection]) -> dict[str, tuple[int, int]]:
            mine = [parts[i :: len(conns)] for i in range(len(conns))]
            rows = await asyncio.gather(*(sums(c, m) for c, m in zip(conns, mine, strict=True)))
            out = dict.fromkeys(columns, (0, 0))
            for m, got in zip(mine, rows, strict=True):
                for (table, _, _), row in zip(m, got, strict=True):
                    n, h = out[table]
                    out[table] = (n + row["n"], h + int(row["h"]))
            return out

        # Connections opened before the lock (idle now): none is set up inside the fence.
        a_sums, b_sums = await asyncio.gather(side(a_conns), side(b_conns))
        check("the checksums")
        return [table for table, _ in TABLES if a_sums[table] != b_sums[table]]

    async def _switch(self) -> None:
        await set_phase(self.registry, self.m, "switch")
        names = [
            r["user_name"]
            for r in await self.a.fetch(
                "SELECT user_name FROM users WHERE bucket BETWEEN $1 AND $2", self.m.lo, self.m.hi
            )
        ]
        # Both shards: the source's entries would be served by a gateway still on the old
        # map, the target's could be left from an earlier move of these buckets. A failure
        # stops the move here (before the new map): run it again to resume.
        await asyncio.gather(*(invalidate(s.redis, names) for s in (self.src, self.dst) if s.redis))
        await self._stall("switch")
        self.summary.map_version = await publish.publish(
            self.map_path, self.m.lo, self.m.hi, self.m.target, self.configmap
        )
        started = getattr(self, "_fence_started", None)
        if started is not None:
            self.summary.fence_seconds = time.monotonic() - started

    # -- verify and clean up ---------------------------------------------------------------

    async def _columns(self, table: str) -> list[str]:
        rows = await self.a.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND table_name = $1 ORDER BY ordinal_position",
            table,
        )
        return [r["column_name"] for r in rows if r["column_name"] not in _NOT_COMPARED]

    async def _verify(self, exact: bool) -> bool:
        """Compare A (frozen) with B at the flip; without the flip's snapshot (resumed), with
        B's rows not written since the flip."""
        b = self.b_snapshot if self.b_snapshot is not None else self.b
        ok = True
        for table, key in TABLES:
            cols = ", ".join(await self._columns(table))
            query = (f"SELECT {key} AS k, md5(ROW({cols})::text) AS h FROM {table}"
                     " WHERE bucket BETWEEN $1 AND $2")  # fmt: skip
            a_rows = {r["k"]: r["h"] for r in await self.a.fetch(query, self.m.lo, self.m.hi)}
            if exact:
                b_rows = {r["k"]: r["h"] for r in await b.fetch(query, self.m.lo, self.m.hi)}
                skipped: set[str] = set()
            else:
                # Written on B since the flip: by B (replication keeps A's stamp), after it.
                since = (f"SELECT {key} AS k FROM {table} t WHERE bucket BETWEEN $1 AND $2 AND"
                         " written_on = $3 AND updated_xid >= (SELECT max(since_xid)"
                         " FROM shard_buckets WHERE bucket BETWEEN $1 AND $2)")  # fmt: skip
                m = self.m
                skipped = {r["k"] for r in await b.fetch(since, m.lo, m.hi, m.target)}
                b_rows = {
                    r["k"]: r["h"]
                    for r in await b.fetch(query, self.m.lo, self.m.hi)
                    if r["k"] not in skipped
                }
                a_rows = {k: h for k, h in a_rows.items() if k not in skipped}
            missing = len(a_rows.keys() - b_rows.keys())
            extra = len(b_rows.keys() - a_rows.keys())
            mismatched = sum(1 for k in a_rows.keys() & b_rows.keys() if a_rows[k] != b_rows[k])
            self.summary.rows[table] = len(a_rows) + len(skipped)
            self.summary.diff[table] = {
                "missing": missing,
                "extra": extra,
                "mismatched": mismatched,
                "notCompared": len(skipped),
            }
            ok = ok and missing == extra == mismatched == 0
            await self._stall("verify")
        if self.b_snapshot is not None:
            await self.b_snapshot.execute("COMMIT")
        return ok

    async def _drop_replication(self) -> None:
        """Drop every stream's subscription, slot and publication, and the markers, whatever
        a killed run left of them (each catalog is read, not only the publications)."""
        subs = self._ours(
            [r["subname"] for r in await self.b.fetch("SELECT subname FROM pg_subscription")]
        )
        for name in subs:
            await self.b.execute(f"DROP SUBSCRIPTION {name}")  # drops its slots on A too
        slots = self._ours(
            [
                r["slot_name"]
                for r in await self.a.fetch("SELECT slot_name FROM pg_replication_slots")
            ]
        )
        for name in slots:
            await self.a.execute("SELECT pg_drop_replication_slot($1)", name)
        for name in await self._streams():
            await self.a.execute(f"DROP PUBLICATION IF EXISTS {name}")
        for conn in (self.a, self.b):
            names = [
                r["move_name"]
                for r in await conn.fetch("SELECT DISTINCT move_name FROM move_markers")
            ]
            await conn.execute(
                "DELETE FROM move_markers WHERE move_name = ANY($1::text[])", self._ours(names)
            )

    async def _delete_unowned(self, conn: asyncpg.Connection) -> dict[str, int]:
        """Delete the range's rows where this database does not own them (children first)."""
        deleted = {}
        async with conn.transaction():
            for table, _ in reversed(TABLES):
                status = await conn.execute(
                    f"DELETE FROM {table} "
                    "WHERE bucket BETWEEN $1 AND $2 AND NOT medsvc_owns(bucket)",
                    self.m.lo,
                    self.m.hi,
                )
                deleted[table] = int(status.split()[-1])
        return deleted

    async def _cleanup(self) -> None:
        await self._drop_replication()
        await self._delete_unowned(self.a)
        await self._stall("cleanup")

    async def _rollback(self, reason: str) -> None:
        """Undo a move that did not flip: A owns, B's copies and the replication go."""
        self.progress.phase("rollback")
        await set_phase(self.registry, self.m, "rollback", reason=reason)
        if self.b_snapshot is not None:
            await self.b_snapshot.close()
            self.b_snapshot = None
        await self._drop_replication()
        await self._delete_unowned(self.b)
        self.summary.outcome = "aborted"
        self.summary.reason = reason
        await set_phase(self.registry, self.m, "aborted", reason=reason)
