"""SQL for visits. Every query is parameterised; driver errors are translated here."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import asyncpg

from shared.db import maps_db_errors
from shared.errors import NotFound, PreconditionFailed
from visit_service.models import Visit, VisitIn

# Driver errors leave every function of this module translated (shared/db.py).
_mapped = maps_db_errors("the shard database")

# The columns of a Visit, in its order (its fields in snake_case): Visit.from_row reads them.
_COLUMNS = Visit.select_list()


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


# create_visit: the whole write in one round trip inside the caller's transaction. In order:
# tag the transaction for the audit trigger (as shared.writes.begin_write does), read the
# bucket's owner (the 421 check shared.service.require_owned makes), share-lock the patient
# (keeping the user in place under the new visit), and insert only when the owner is this
# shard, the user is a patient and the caller may record visits for patients. The insert
# draws from every CTE, so no row is written before the settings are made; the audit
# trigger (AFTER ROW) writes the outbox row in the same statement and transaction, and the
# ownership trigger checks the bucket again under its lock. Returns the owner, the role
# (NULL: no such user) and the new row's columns (NULL: nothing inserted).
_CREATE_VISIT = f"""
WITH tag AS (
    SELECT set_config('medsvc.actor', $1, true) AS actor,
           set_config('medsvc.source', $2, true) AS source,
           set_config('medsvc.request_id', $3, true) AS request_id
), own AS (
    SELECT medsvc_owner($5) AS owner
), patient AS (
    SELECT role FROM users WHERE user_name = $5 FOR SHARE
), ins AS (
    INSERT INTO visits (visit_id, user_name, clinician, type, started_at, ended_at,
                        reason, diagnoses, vitals, medications, notes)
    SELECT $7, $5, $8, $9, $10, $11, $12, $13, $14, $15, $16
    FROM tag, own, patient
    WHERE own.owner = $4 AND patient.role = 'patient' AND $6::boolean
    RETURNING {_COLUMNS}
)
SELECT own.owner, patient.role, ins.*
FROM own LEFT JOIN patient ON true LEFT JOIN ins ON true
"""


@_mapped
async def create_visit(
    conn: asyncpg.Connection, *, actor: str, source: str, request_id: str, shard_id: int,
    user_name: str, may_record: bool, visit: VisitIn, timeout: float | None = None,
) -> asyncpg.Record:
    """Tag, check and insert in one statement (:data:`_CREATE_VISIT`); the caller decides
    from the owner and role what a row without a visit means (421, 404, 403, 422).

    Outside a transaction the statement is its own transaction: it commits as it returns.
    ``timeout`` cancels it at that time (Unavailable), as a write's fence requires.
    """
    return await conn.fetchrow(
        _CREATE_VISIT, actor, source, request_id, shard_id, user_name, may_record,
        uuid.uuid4(), *_values(visit), timeout=timeout,
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
