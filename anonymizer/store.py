"""SQL of the study registry (the anonymizer's own database). Driver errors are translated here.

The shard side (what a run reads) is :mod:`anonymizer.shards`.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import lz4.frame
import orjson

from anonymizer.models import StudyIn
from shared.db import maps_db_errors
from shared.errors import Conflict

log = logging.getLogger("medsvc.anonymizer.store")

MIGRATIONS = Path(__file__).parent / "migrations"
WHAT = "the study registry"
# Driver errors leave every function of this module translated (shared/db.py).
_mapped = maps_db_errors(WHAT)
_RUN_COLUMNS = (
    "run_id, study_id, status, trigger, requested_by, started_at, finished_at, policy_version,"
    " counts, k_anonymity, error, manifest"
)


# -- studies ----------------------------------------------------------------------------------

@_mapped
async def insert_study(pool: asyncpg.Pool, study: StudyIn, created_by: str) -> asyncpg.Record:
    """Register a study; Conflict when the studyId exists."""
    try:
        # insert_study: one row.
        return await pool.fetchrow(
            """INSERT INTO studies (study_id, title, schedule, k, created_by)
               VALUES ($1, $2, $3, $4, $5) RETURNING *""",
            study.studyId, study.title, study.schedule, study.k, created_by,
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"study {study.studyId} already exists") from exc


@_mapped
async def get_study(db: asyncpg.Pool | asyncpg.Connection, study_id: str) -> asyncpg.Record | None:
    """The study row, or None."""
    # get_study: by primary key.
    return await db.fetchrow("SELECT * FROM studies WHERE study_id = $1", study_id)


@_mapped
async def studies_page(pool: asyncpg.Pool, after: str | None, limit: int) -> list[asyncpg.Record]:
    """Studies in studyId order, after a keyset position."""
    # studies_page: keyset page on the primary key.
    return list(await pool.fetch(
        """SELECT * FROM studies WHERE $1::text IS NULL OR study_id > $1
           ORDER BY study_id LIMIT $2""",
        after, limit,
    ))


@_mapped
async def scheduled_studies(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Studies with a schedule, each with the start of its latest run (None if never run)."""
    # scheduled_studies: the scheduler's view.
    return list(await pool.fetch(
        """SELECT s.study_id, s.schedule, s.created_at,
                  (SELECT max(started_at) FROM runs r WHERE r.study_id = s.study_id) AS last_started
           FROM studies s WHERE s.schedule IS NOT NULL ORDER BY s.study_id"""
    ))


# -- the run lock and the run rows ------------------------------------------------------------

@_mapped
async def try_lock_study(conn: asyncpg.Connection, study_id: str) -> bool:
    """Take the study's run lock for this session (False when another session holds it)."""
    # try_lock_study: session-level, so it lives exactly as long as the connection.
    return bool(await conn.fetchval(
        "SELECT pg_try_advisory_lock(hashtextextended('anonymizer.run:' || $1, 0))", study_id
    ))


@_mapped
async def unlock_study(conn: asyncpg.Connection, study_id: str) -> None:
    # unlock_study: the session's lock from try_lock_study.
    await conn.execute(
        "SELECT pg_advisory_unlock(hashtextextended('anonymizer.run:' || $1, 0))", study_id
    )


@_mapped
async def fail_orphaned_runs(db: asyncpg.Pool | asyncpg.Connection, study_id: str) -> None:
    """Mark failed the study's runs whose lock-holding backend is gone (the process died)."""
    # fail_orphaned_runs: a running run whose owner backend no longer exists.
    await db.execute(
        """UPDATE runs SET status = 'failed', finished_at = clock_timestamp(),
                  error = 'the process running it stopped before it finished'
           WHERE study_id = $1 AND status = 'running' AND NOT EXISTS (
               SELECT 1 FROM pg_stat_activity a
               WHERE a.pid = runs.owner_pid AND a.backend_start = runs.owner_started)""",
        study_id,
    )


@_mapped
async def started_since(conn: asyncpg.Connection, study_id: str, since: dt.datetime) -> bool:
    """True when a run of the study started at or after ``since``."""
    # started_since: has the scheduled run already happened?
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE study_id = $1 AND started_at >= $2)",
        study_id, since,
    ))


@_mapped
async def insert_run(
    conn: asyncpg.Connection, study_id: str, trigger: str, requested_by: str, policy: str
) -> asyncpg.Record:
    """A new running run owned by this session's backend."""
    # insert_run: the owner is this connection's backend (see fail_orphaned_runs).
    return await conn.fetchrow(
        f"""INSERT INTO runs (run_id, study_id, status, trigger, requested_by, policy_version,
                              owner_pid, owner_started)
            SELECT $1, $2, 'running', $3, $4, $5, pid, backend_start
            FROM pg_stat_activity WHERE pid = pg_backend_pid()
            RETURNING {_RUN_COLUMNS}""",
        uuid.uuid4(), study_id, trigger, requested_by, policy,
    )


@_mapped
async def finish_run(
    conn: asyncpg.Connection, run_id: uuid.UUID, manifest: dict[str, Any]
) -> asyncpg.Record:
    """Mark the run succeeded with its manifest (inside the transaction that wrote its body)."""
    # finish_run: records, watermarks and this commit together.
    return await conn.fetchrow(
        f"""UPDATE runs SET status = 'succeeded', finished_at = clock_timestamp(),
                   counts = $2, k_anonymity = $3, manifest = $4
            WHERE run_id = $1 RETURNING {_RUN_COLUMNS}""",
        run_id, manifest["counts"], manifest["kAnonymity"], manifest,
    )


@_mapped
async def fail_run(db: asyncpg.Pool | asyncpg.Connection, run_id: uuid.UUID, error: str) -> None:
    # fail_run: only a run still running (never undo a success).
    await db.execute(
        """UPDATE runs SET status = 'failed', finished_at = clock_timestamp(), error = $2
           WHERE run_id = $1 AND status = 'running'""",
        run_id, error,
    )


@_mapped
async def get_run(pool: asyncpg.Pool, study_id: str, run_id: uuid.UUID) -> asyncpg.Record | None:
    # get_run: by primary key, scoped to the study.
    return await pool.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = $1 AND study_id = $2", run_id, study_id
    )


@_mapped
async def runs_page(
    pool: asyncpg.Pool, study_id: str, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> list[asyncpg.Record]:
    """The study's runs, newest first, after a keyset position."""
    # runs_page: keyset page on (started_at, run_id) descending.
    return list(await pool.fetch(
        f"""SELECT {_RUN_COLUMNS} FROM runs
            WHERE study_id = $1
              AND ($2::timestamptz IS NULL OR (started_at, run_id) < ($2, $3::uuid))
            ORDER BY started_at DESC, run_id DESC LIMIT $4""",
        study_id, after[0] if after else None, after[1] if after else None, limit,
    ))


@_mapped
async def last_runs(pool: asyncpg.Pool, study_id: str) -> tuple[asyncpg.Record | None, Any]:
    """The study's latest run and the finish time of its latest successful one."""
    # last_runs: newest run; newest success.
    last = await pool.fetchrow(
        f"""SELECT {_RUN_COLUMNS} FROM runs WHERE study_id = $1
            ORDER BY started_at DESC, run_id DESC LIMIT 1""",
        study_id,
    )
    success = await pool.fetchval(
        "SELECT max(finished_at) FROM runs WHERE study_id = $1 AND status = 'succeeded'",
        study_id,
    )
    return last, success


@_mapped
async def last_successes(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Each study's latest successful run's finish time (for the metrics)."""
    # last_successes: one row per study that has succeeded once.
    return list(await pool.fetch(
        """SELECT study_id, max(finished_at) AS finished_at FROM runs
           WHERE status = 'succeeded' GROUP BY study_id"""
    ))


# -- watermarks, participants and records (inside the run's transaction) ----------------------

@_mapped
async def watermarks(conn: asyncpg.Connection, study_id: str) -> dict[int, str]:
    """Shard id → the snapshot the study's last successful run read it at."""
    # watermarks: per shard.
    rows = await conn.fetch(
        "SELECT shard_id, snapshot FROM study_watermarks WHERE study_id = $1", study_id
    )
    return {r["shard_id"]: r["snapshot"] for r in rows}


@_mapped
async def save_watermarks(
    conn: asyncpg.Connection, study_id: str, snapshots: dict[int, str], run_id: uuid.UUID
) -> None:
    # save_watermarks: upsert one row per shard read.
    await conn.executemany(
        """INSERT INTO study_watermarks (study_id, shard_id, snapshot, run_id)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (study_id, shard_id) DO UPDATE
           SET snapshot = EXCLUDED.snapshot, run_id = EXCLUDED.run_id""",
        [(study_id, shard, snap, run_id) for shard, snap in snapshots.items()],
    )


@_mapped
async def participants(conn: asyncpg.Connection, study_id: str) -> dict[str, asyncpg.Record]:
    """pid → (shard_id, record, released, consent_version) of the participants as of the last
    success."""
    # participants: the whole study (k-anonymity needs everyone).
    rows = await conn.fetch(
        """SELECT pid, shard_id, record, released, consent_version
           FROM study_participants WHERE study_id = $1""",
        study_id,
    )
    return {r["pid"]: r for r in rows}


@_mapped
async def save_participants(
    conn: asyncpg.Connection, study_id: str,
    upserts: Sequence[tuple[str, int, dict[str, Any], dict[str, Any], int | None]],
    removed: Sequence[str],
) -> None:
    """Write (pid, shard, record, released, consent version) rows; drop the ``removed`` pids."""
    if removed:
        # drop_participants: withdrawn since the last run.
        await conn.execute(
            "DELETE FROM study_participants WHERE study_id = $1 AND pid = ANY($2::text[])",
            study_id, list(removed),
        )
    if upserts:
        # upsert_participants: new or changed, one statement (arrays, not a row a round trip).
        pids, shard_ids, records, released, versions = zip(*upserts, strict=True)
        await conn.execute(
            """INSERT INTO study_participants
                   (study_id, pid, shard_id, record, released, consent_version)
               SELECT $1, u.pid, u.shard_id, u.record::jsonb, u.released::jsonb, u.version
               FROM unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::int[])
                    AS u(pid, shard_id, record, released, version)
               ON CONFLICT (study_id, pid) DO UPDATE
               SET shard_id = EXCLUDED.shard_id, record = EXCLUDED.record,
                   released = EXCLUDED.released, consent_version = EXCLUDED.consent_version""",
            study_id, list(pids), list(shard_ids), [orjson.dumps(r).decode() for r in records],
            [orjson.dumps(r).decode() for r in released], list(versions),
        )  # fmt: skip


# How a chunk is stored (run_chunks.codec; migrations/003): NULL as is, else an LZ4 frame.
CODEC = "lz4-frame"


# LZ4's fast acceleration (a negative level): half the time of the default level on run
# bodies (0.49 against 0.96 ms a MiB, measured) for the same size (the pseudonyms, random
# hex, are most of what remains); the frame is decompressed as any other.
_LEVEL = -3


def pack_chunk(data: bytes) -> bytes:
    """A chunk of a run's body as stored (codec :data:`CODEC`). Releases the GIL: a thread."""
    packed: bytes = lz4.frame.compress(data, compression_level=_LEVEL)
    return packed


def unpack_chunk(data: bytes, codec: str | None) -> bytes:
    """A stored chunk's bytes of the body."""
    if codec is None:
        return data
    if codec != CODEC:
        raise ValueError(f"a run chunk in an unknown codec {codec!r}")
    body: bytes = lz4.frame.decompress(data)
    return body


@_mapped
async def save_chunk(
    conn: asyncpg.Connection, run_id: uuid.UUID, seq: int, packed: bytes
) -> None:
    """Add one chunk (about 1 MiB of the run's NDJSON body, :func:`pack_chunk`), in the run's
    transaction."""
    # save_chunk: one row per chunk, not per record (the bulk write).
    await conn.execute(
        "INSERT INTO run_chunks (run_id, seq, data, codec) VALUES ($1, $2, $3, $4)",
        run_id, seq, packed, CODEC,
    )


@_mapped
async def body_chunks(pool: asyncpg.Pool, run_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The run's NDJSON body, a chunk at a time, in order (one chunk in memory, plus one ahead)."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        # body_chunks: the primary key's order.
        cursor = conn.cursor(
            "SELECT data, codec FROM run_chunks WHERE run_id = $1 ORDER BY seq",
            run_id, prefetch=2,
        )
        async for row in cursor:
            yield unpack_chunk(row["data"], row["codec"])


@_mapped
async def legacy_record_bodies(
    pool: asyncpg.Pool, run_id: uuid.UUID, batch: int = 2000
) -> AsyncIterator[list[str]]:
    """The records of a run made before run bodies (one row per record), in (kind, pid, vid)
    order, a batch at a time."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        # record_bodies: the primary key's order.
        cursor = conn.cursor(
            "SELECT body FROM run_records WHERE run_id = $1 ORDER BY kind, pid, vid",
            run_id, prefetch=batch,
        )
        out: list[str] = []
        async for row in cursor:
            out.append(row["body"])
            if len(out) >= batch:
                yield out
                out = []
        if out:
            yield out
