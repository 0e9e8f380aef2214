"""One extraction run: lock the study, read every shard in parallel, store the records.

All or nothing. The run's records, the participants, the watermarks and the status
``succeeded`` are written in one registry transaction, on the connection that holds the
study's run lock: a run that fails, or whose process dies midway, leaves no record visible and
moves no watermark, so running again yields what the failed run would have.

One at a time. The lock is a session-level advisory lock in the registry database, taken with
``pg_try_advisory_lock``: whichever process (API, scheduler, CLI) holds it runs the study; the
others get :class:`~shared.errors.Conflict`. A run row stays ``running`` only while the backend
holding the lock lives; the next one to look marks an orphan ``failed``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from anonymizer import deidentify, kanon, metrics, shards, store
from anonymizer.deidentify import StudyKeys
from anonymizer.shards import ShardPools, ShardResult
from shared.db import db_errors
from shared.errors import Conflict, NotFound, ServiceError, Unavailable

log = logging.getLogger("medsvc.anonymizer.run")
# Bytes of record batches read but not yet written, at most (then the readers wait for the
# writer): enough for the readers to go on while the head and the participants are written.
_QUEUED_BYTES = 16 << 20


@dataclass
class Extractor:
    """What a run needs: the registry, the shards, the master key."""

    registry: asyncpg.Pool
    shard_pools: ShardPools
    master_key: bytes
    batch_rows: int = 2000


@dataclass
class RunHandle:
    """A started run: its row, and the registry connection holding the study's lock."""

    extractor: Extractor
    study: asyncpg.Record
    conn: asyncpg.pool.PoolConnectionProxy
    row: asyncpg.Record

    @property
    def study_id(self) -> str:
        return str(self.study["study_id"])


async def begin_run(
    ex: Extractor, study_id: str, trigger: str, requested_by: str, *, due: dt.datetime | None = None
) -> RunHandle | None:
    """Lock the study and record a running run; Conflict when a run is in progress.

    ``due``: a scheduled run's time; None is returned (nothing started) when a run has started
    since then, so that several schedulers never run one due time twice.
    """
    study = await store.get_study(ex.registry, study_id)
    if study is None:
        raise NotFound(f"study {study_id} does not exist")
    with db_errors(store.WHAT):
        conn = await ex.registry.acquire()
    row = None
    try:
        if not await store.try_lock_study(conn, study_id):
            raise Conflict(f"a run of study {study_id} is in progress")
        # Any run still marked running now is an orphan: we hold the lock.
        await store.fail_orphaned_runs(conn, study_id)
        if due is None or not await store.started_since(conn, study_id, due):
            row = await store.insert_run(
                conn, study_id, trigger, requested_by, deidentify.POLICY_VERSION
            )
    finally:
        if row is None:  # refused, skipped or failed: give the lock and the connection back
            await _give_back(ex, conn, study_id)
    if row is None:
        return None
    log.info(
        "run started",
        extra={
            "action": "run.started",
            "study": study_id,
            "run": str(row["run_id"]),
            "trigger": trigger,
        },
    )
    return RunHandle(ex, study, conn, row)


async def execute(handle: RunHandle) -> asyncpg.Record:
    """Do the run; return its final row. Always releases the lock and the connection."""
    ex, study_id, run_id = handle.extractor, handle.study_id, handle.row["run_id"]
    started = time.perf_counter()
    try:
        row = await _extract(handle)
    except BaseException as exc:
        error = (
            exc.detail
            if isinstance(exc, ServiceError)
            else f"the run failed ({type(exc).__name__})"
        )
        log.error(
            "run failed",
            exc_info=not isinstance(exc, ServiceError | asyncio.CancelledError),
            extra={"action": "run.failed", "study": study_id, "run": str(run_id), "error": error},
        )
        metrics.RUNS.labels("failed").inc()
        # Shielded: a cancelled run (the process is stopping) is still marked failed if we can.
        await asyncio.shield(_mark_failed(ex, run_id, error))
        await asyncio.shield(_release(handle))
        if isinstance(exc, Exception):
            final = await _final_row(ex, study_id, run_id)
            if final is not None:
                return final
        raise
    await _release(handle)
    elapsed = time.perf_counter() - started
    counts = row["counts"]
    for kind, n in counts.items():
        metrics.ROWS_EXTRACTED.labels(kind).inc(n)
    metrics.RUN_DURATION.observe(elapsed)
    metrics.RUNS.labels("succeeded").inc()
    metrics.LAST_SUCCESS.labels(study_id).set(row["finished_at"].timestamp())
    log.info(
        "run succeeded",
        extra={
            "action": "run.succeeded",
            "study": study_id,
            "run": str(run_id),
            "counts": counts,
            "durationMs": round(elapsed * 1000, 1),
        },
    )
    return row


async def _mark_failed(ex: Extractor, run_id: Any, error: str) -> None:
    try:
        await store.fail_run(ex.registry, run_id, error)
    except Exception:  # noqa: BLE001 - the orphan check fails it later
        log.warning(
            "could not mark the run failed",
            extra={"action": "run.mark_failed_error", "run": str(run_id)},
        )


async def _release(handle: RunHandle) -> None:
    await _give_back(handle.extractor, handle.conn, handle.study_id)


async def _give_back(ex: Extractor, conn: Any, study_id: str) -> None:
    """Unlock the study (if this session holds it) and return the connection to the pool."""
    try:
        if not conn.is_closed():
            await store.unlock_study(conn, study_id)
    except Exception:  # noqa: BLE001 - the pool's reset unlocks, or the connection is gone
        pass
    finally:
        await ex.registry.release(conn)


async def _final_row(ex: Extractor, study_id: str, run_id: Any) -> asyncpg.Record | None:
    try:
        return await store.get_run(ex.registry, study_id, run_id)
    except ServiceError:
        return None


async def _extract(handle: RunHandle) -> asyncpg.Record:
    ex, conn, study_id, run_id = (
        handle.extractor,
        handle.conn,
        handle.study_id,
        handle.row["run_id"],
    )
    keys = StudyKeys(ex.master_key, study_id, handle.study["pseudonyms"])
    cutoff = deidentify.ninety_plus_cutoff(shards.today())
    async with conn.transaction():
        marks = await store.watermarks(conn, study_id)
        known = await store.participants(conn, study_id)
        body = BodyWriter(conn, run_id)
        head: dict[str, Any] = {}

        def write_head(results: list[ShardResult]) -> Awaitable[None]:
            """Put the head in the body; return the participants' registry write (sent before
            the first chunk, while the shards stream: the statement order in the transaction
            is free)."""
            head.update(_participants(handle.study["k"], known, results, cutoff))
            body.add(head.pop("body"))
            return store.save_participants(conn, study_id, *head.pop("participants"))

        results = await _read_all(ex, body, study_id, keys, marks, known, cutoff, write_head)
        await body.close()
        left: deidentify.LeftOut = Counter()
        for r in results:
            left.update(r.left)
        counts = head["counts"] | {"visit": sum(r.visits for r in results)}
        snapshots = {r.shard_id: r.snapshot for r in results}
        await store.save_watermarks(conn, study_id, snapshots, run_id)
        manifest = {
            "policyVersion": deidentify.POLICY_VERSION,
            "keyVersion": keys.version,
            "watermarks": {str(shard): snapshots[shard] for shard in sorted(snapshots)},
            "counts": counts,
            "leftOut": deidentify.left_out_report(left),
            "kAnonymity": head["report"],
            "recordsSha256": body.sha256.hexdigest(),
            "recordsBytes": body.size,
        }
        return await store.finish_run(conn, run_id, manifest)


class BodyWriter:
    """The run's NDJSON body: hashed, compressed and stored in ~1 MiB chunks (bulk, not per
    record).

    Only the coordinating task writes, one chunk at a time, on the run's connection. Hashing
    and compressing a chunk (:func:`store.pack_chunk`) happen in a worker thread: both release
    the GIL, so they run beside the event loop, which meanwhile de-identifies the next visits
    (one chunk at a time, in order: the hash is of the body as it is served).
    """

    CHUNK = 1 << 20

    def __init__(self, conn: asyncpg.Connection, run_id: Any) -> None:
        self._conn, self._run_id = conn, run_id
        # The pieces added since the last chunk, joined once when it is written (no growing
        # buffer copied at every add).
        self._pieces: list[bytes] = []
        self._pending = 0
        self._seq = 0
        self.sha256 = hashlib.sha256()
        self.size = 0

    def add(self, data: bytes) -> None:
        self._pieces.append(data)
        self._pending += len(data)
        self.size += len(data)

    @property
    def full(self) -> bool:
        return self._pending >= self.CHUNK

    def _pack(self, data: bytes) -> bytes:
        self.sha256.update(data)
        return store.pack_chunk(data)

    async def flush(self) -> None:
        if self._pending:
            data = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
            self._pieces, self._pending = [], 0
            packed = await asyncio.to_thread(self._pack, data)
            await store.save_chunk(self._conn, self._run_id, self._seq, packed)
            self._seq += 1

    async def close(self) -> None:
        await self.flush()


async def _read_all(
    ex: Extractor,
    body: BodyWriter,
    study_id: str,
    keys: StudyKeys,
    marks: dict[int, str],
    known: dict[str, Any],
    cutoff: int,
    write_head: Callable[[list[ShardResult]], Awaitable[None]],
) -> list[ShardResult]:
    """Read every shard in parallel; write the head once all have their participants, then
    the visit records as they come.

    Phase one on each shard (its consents and user rows) reports to the coordinator; once
    every shard has, the coordinator writes the head (withdrawals, participant records:
    k-anonymity needs everyone), then appends the visit batches the readers queue. A reader
    streams its visits as soon as it has reported (they wait in the queue, behind the head
    being computed), and the queue is bounded: a reader far ahead waits, back-pressure.
    Anything failing (a reader, the coordinator) cancels the rest and fails the run.
    """
    queue = _Batches(_QUEUED_BYTES)
    shard_list = ex.shard_pools.shard_map.shards
    heads: dict[int, ShardResult] = {}
    all_in = asyncio.Event()
    remaining = len(shard_list)
    versions = {pid: row["consent_version"] for pid, row in known.items()}

    async def head_done(result: ShardResult) -> None:
        heads[result.shard_id] = result
        if len(heads) == len(shard_list):
            all_in.set()

    async def emit(data: bytes, n: int) -> None:
        await queue.put((data, n))

    async def coordinate() -> None:
        await all_in.wait()
        _check_ownership(heads.values())
        await write_head([heads[s.id] for s in shard_list])
        while (item := await queue.get()) is not None:
            body.add(item[0])
            if body.full:
                await body.flush()

    async def read(shard: Any) -> ShardResult:
        nonlocal remaining
        pool = await ex.shard_pools.get(shard)
        result = await shards.read_shard(
            pool, shard.id, study_id, keys, marks, versions, cutoff, head_done,
            emit, ex.batch_rows, cut.taken,
        )  # fmt: skip
        remaining -= 1
        if remaining == 0:
            await queue.put(None)  # the last reader done: the coordinator stops after the last
        return result

    if not shard_list:
        await write_head([])
        return []
    cut = await shards.OwnershipCut.hold(ex.shard_pools, shard_list)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(read(shard)) for shard in shard_list]
            tg.create_task(coordinate())
    except* Exception as group:
        # One shard failing fails the run (the others were cancelled): say which.
        errors = group.exceptions
        raise next((e for e in errors if isinstance(e, ServiceError)), errors[0]) from None
    finally:
        await cut.release()  # (done already unless a reader failed before its snapshot)
    return [t.result() for t in tasks]


class _Batches:
    """A queue of record batches bounded by their bytes (a batch is admitted while fewer than
    ``limit`` bytes wait: a reader far ahead waits, back-pressure); ``None`` ends it."""

    def __init__(self, limit: int) -> None:
        self._items: deque[tuple[bytes, int] | None] = deque()
        self._bytes = 0
        self._limit = limit
        self._changed = asyncio.Condition()

    async def put(self, item: tuple[bytes, int] | None) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._bytes < self._limit)
            self._items.append(item)
            self._bytes += 0 if item is None else len(item[0])
            self._changed.notify_all()

    async def get(self) -> tuple[bytes, int] | None:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            item = self._items.popleft()
            self._bytes -= 0 if item is None else len(item[0])
            self._changed.notify_all()
            return item


def _check_ownership(results: Iterable[ShardResult]) -> None:
    """Refuse a run in which two shards own one bucket: a move killed between its two flips
    (the ownership cut keeps a live move's flips out of a run's snapshots). Its participants
    would be read twice; the move's resume settles the owner, and a later run reads it."""
    seen: dict[int, int] = {}
    for r in results:
        for bucket in r.owned:
            if seen.setdefault(bucket, r.shard_id) != r.shard_id:
                first, second = sorted((seen[bucket], r.shard_id))
                raise Unavailable(
                    f"bucket {bucket} is owned by shards {first} and {second}: a move"
                    " stopped between its flips; resume it (python -m resharder move)"
                )


def _participants(
    k: int | None,
    known: dict[str, asyncpg.Record],
    results: Iterable[ShardResult],
    cutoff: int,
) -> dict[str, Any]:
    """Withdrawals, participant records and k-anonymity over everyone participating now.

    Returns the head of the body (withdrawals first, then participant records, each sorted by
    pid: an order that says nothing about who anyone is), the counts, the k report and the
    participants' rows to write (upserts, removed pids: :func:`store.save_participants`). A
    participant whose consent was renewed since the last run gets a withdrawal and then a
    fresh participant record, so the consumer drops the old data before the new arrives.
    """
    active: dict[str, tuple[int, int]] = {}
    fresh: dict[str, dict[str, Any]] = {}
    renewed: set[str] = set()
    for r in results:
        active.update((pid, (r.shard_id, version)) for pid, version in r.active.items())
        fresh.update(r.fresh)
        renewed |= r.renewed
    withdrawn = sorted((set(known) - set(active)) | renewed)
    population: dict[str, dict[str, Any]] = {}
    for pid in active:
        record = fresh.get(pid) or (known[pid]["record"] if pid in known else None)
        if record is None:
            continue  # a consent without its user row: nothing to describe
        record = dict(record, birthYear=deidentify.regroup_birth_year(record["birthYear"], cutoff))
        population[pid] = record
    released, report = kanon.release(population, k)
    lines = [_json(deidentify.withdrawal(pid)) for pid in withdrawn]
    upserts = []
    reemitted = 0
    for pid in sorted(population):
        record, before = population[pid], known.get(pid)
        shard_id, version = active[pid]
        changed = before is None or pid in renewed or before["released"] != released[pid]
        if pid in fresh or changed:
            lines.append(_json(released[pid]))
            reemitted += pid not in fresh
        if (
            pid in fresh
            or changed
            or before is None  # (changed already says so; this tells the type checker)
            or before["record"] != record
            or before["shard_id"] != shard_id
            or before["consent_version"] != version
        ):
            upserts.append((pid, shard_id, record, released[pid], version))
    report["reemitted"] = reemitted
    counts = {"participant": len(lines) - len(withdrawn), "withdrawal": len(withdrawn)}
    return {
        "body": b"".join(line + b"\n" for line in lines), "counts": counts, "report": report,
        "participants": (upserts, [p for p in withdrawn if p not in active]),
    }  # fmt: skip


def _json(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)
