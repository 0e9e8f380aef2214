"""The move registry in the central database: what is moving, in which phase.

A move is one row. It is what makes a move resumable after the command is killed (the next
``move`` with the same buckets and target picks it up) and what makes two moves of
overlapping buckets refuse each other (the check and the insert run under one advisory lock).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

_LOCK = 0x6D65_6473_6D6F_7665  # 'medsmove'
# "rollback": a rerun of a move killed while rolling back resumes it (and moves again).
ACTIVE = ("copy", "catchup", "fence", "switch", "verify", "cleanup", "rollback")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resharder_moves (
    move_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lo          int NOT NULL,
    hi          int NOT NULL,
    source      int NOT NULL,
    target      int NOT NULL,
    phase       text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    detail      jsonb NOT NULL DEFAULT '{}'
)"""


class Refused(Exception):
    """The move cannot start: another move holds overlapping buckets."""


@dataclass
class Move:
    move_id: int
    lo: int
    hi: int
    source: int
    target: int
    phase: str
    started_at: dt.datetime
    detail: dict[str, Any]

    @property
    def name(self) -> str:
        """The publication, subscription and replication slot of this move."""
        return f"medsvc_move_{self.move_id}"


def _move(row: asyncpg.Record) -> Move:
    detail = row["detail"]
    return Move(
        row["move_id"],
        row["lo"],
        row["hi"],
        row["source"],
        row["target"],
        row["phase"],
        row["started_at"],
        orjson.loads(detail) if isinstance(detail, str) else detail,
    )


async def ensure_schema(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK)
    try:
        await conn.execute(_SCHEMA)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)


async def claim(
    conn: asyncpg.Connection, lo: int, hi: int, source: int, target: int
) -> tuple[Move, bool]:
    """The move of exactly these buckets to ``target`` in progress (resumed: True), or a new
    one (False). Raises :class:`Refused` when an unfinished move overlaps them otherwise."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        rows = await conn.fetch(
            "SELECT * FROM resharder_moves WHERE phase = ANY($1::text[]) AND lo <= $3 AND hi >= $2",
            list(ACTIVE),
            lo,
            hi,
        )
        for row in rows:
            m = _move(row)
            if (m.lo, m.hi, m.target) == (lo, hi, target):
                return m, True
        if rows:
            m = _move(rows[0])
            raise Refused(
                f"move {m.move_id} (buckets {m.lo}-{m.hi} to shard {m.target}, phase "
                f"{m.phase}) overlaps buckets {lo}-{hi}; finish or resume it first"
            )
        row = await conn.fetchrow(
            "INSERT INTO resharder_moves (lo, hi, source, target, phase)"
            " VALUES ($1, $2, $3, $4, 'copy')"
            " RETURNING *",
            lo,
            hi,
            source,
            target,
        )
        return _move(row), False


async def set_phase(conn: asyncpg.Connection, move: Move, phase: str, **detail: Any) -> None:
    move.phase = phase
    move.detail.update(detail)
    await conn.execute(
        "UPDATE resharder_moves SET phase = $2, updated_at = now(), detail = $3::jsonb"
        " WHERE move_id = $1",
        move.move_id,
        phase,
        orjson.dumps(move.detail).decode(),
    )


async def recent(conn: asyncpg.Connection, limit: int = 10) -> list[Move]:
    rows = await conn.fetch(
        "SELECT * FROM resharder_moves"
        " ORDER BY (phase = ANY($1::text[])) DESC, move_id DESC LIMIT $2",
        list(ACTIVE),
        limit,
    )
    return [_move(r) for r in rows]
