"""SQL for visits. Every query is parameterised; driver errors are translated here."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg

from shared.db import db_errors, maps_db_errors
from shared.errors import NotFound, PreconditionFailed
from visit_service.models import VisitIn

# Driver errors leave every function of this module translated (shared/db.py).
_mapped = maps_db_errors("the shard database")

_COLUMNS = (
    "visit_id, user_name, clinician, type, started_at, ended_at, reason, diagnoses, vitals,"
    " medications, notes, created_at, updated_at, version"
)


def row_to_visit(row: asyncpg.Record) -> dict[str, Any]:
    """A visits row as the API's camelCase JSON object."""
    return {
        "visitId": str(row["visit_id"]),
        "userName": row["user_name"],
        "clinician": row["clinician"],
        "type": row["type"],
        "startedAt": row["started_at"],
        "endedAt": row["ended_at"],
        "reason": row["reason"],
        "diagnoses": row["diagnoses"],
        "vitals": row["vitals"],
        "medications": row["medications"],
        "notes": row["notes"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        "version": row["version"],
    }


def _values(visit: VisitIn) -> tuple[Any, ...]:
    dump = visit.model_dump(exclude_none=True)
    return (
        visit.clinician,
        visit.type,
        visit.startedAt,
        visit.endedAt,
        visit.reason,
        dump.get("diagnoses", []),
        dump.get("vitals"),
        dump.get("medications", []),
        visit.notes,
    )


async def insert_visit(conn: asyncpg.Connection, user_name: str, visit: VisitIn) -> asyncpg.Record:
    """Insert a visit with a new server-generated id."""
    with db_errors("the shard database"):
        # insert_visit: one row; server fields by default.
        return await conn.fetchrow(
            f"""INSERT INTO visits (visit_id, user_name, clinician, type, started_at, ended_at,
                                    reason, diagnoses, vitals, medications, notes)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {_COLUMNS}""",
            uuid.uuid4(),
            user_name,
            *_values(visit),
        )


@_mapped
async def get_visit(
    conn: asyncpg.Connection | asyncpg.Pool, user_name: str, visit_id: uuid.UUID
) -> asyncpg.Record | None:
    """The visit of this patient with this id, or None."""
    # get_visit: by primary key, scoped to the patient.
    return await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM visits WHERE visit_id = $1 AND user_name = $2",
        visit_id,
        user_name,
    )


@_mapped
async def lock_visit(
    conn: asyncpg.Connection, user_name: str, visit_id: uuid.UUID
) -> asyncpg.Record:
    """The visit locked for update in the caller's transaction; NotFound if absent."""
    # lock_visit: serialises concurrent updates of one visit.
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM visits WHERE visit_id = $1 AND user_name = $2 FOR UPDATE",
        visit_id,
        user_name,
    )
    if row is None:
        raise NotFound(f"visit {visit_id} of {user_name} does not exist")
    return row


@_mapped
async def update_visit(
    conn: asyncpg.Connection,
    visit_id: uuid.UUID,
    visit: VisitIn,
    expected: int | None,
    current: int,
) -> asyncpg.Record:
    """Write the mutable fields of a locked visit and bump its version."""
    if expected is not None and expected != current:
        raise PreconditionFailed(f"the visit is at version {current}, not {expected}")
    # update_visit: all mutable columns, version + 1.
    return await conn.fetchrow(
        f"""UPDATE visits SET clinician = $2, type = $3, started_at = $4, ended_at = $5,
                   reason = $6, diagnoses = $7, vitals = $8, medications = $9, notes = $10,
                   updated_at = now(), version = version + 1
            WHERE visit_id = $1 RETURNING {_COLUMNS}""",
        visit_id,
        *_values(visit),
    )


@_mapped
async def visits_page(
    conn: asyncpg.Pool,
    user_name: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """A patient's visits in [since, until), newest startedAt first, after a keyset position."""
    # visits_page: keyset page on (started_at, visit_id) descending.
    return list(await conn.fetch(
        f"""SELECT {_COLUMNS} FROM visits
            WHERE user_name = $1
              AND ($2::timestamptz IS NULL OR started_at >= $2)
              AND ($3::timestamptz IS NULL OR started_at < $3)
              AND ($4::timestamptz IS NULL OR (started_at, visit_id) < ($4, $5::uuid))
            ORDER BY started_at DESC, visit_id DESC
            LIMIT $6""",
        user_name,
        since,
        until,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    ))
