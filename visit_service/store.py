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


# The owner and the patient's role, read with a visit or a page in the same statement (one
# snapshot): an uncached read's 421 check, 404 and role check cost no round trip of their own
# (the visits counterpart of user_service/store.py get_owned_user).
_OWNER_AND_ROLE = """SELECT medsvc_owner($1) AS owner,
                           (SELECT role FROM users WHERE user_name = $1) AS role"""


@_mapped
async def get_owned_visit(
    conn: asyncpg.Connection | asyncpg.Pool, user_name: str, visit_id: uuid.UUID
) -> asyncpg.Record:
    """The bucket's owner (``owner``), the patient's role (``role``, NULL: no such user) and
    the visit's columns (NULL: no such visit of this patient)."""
    # get_owned_visit: bucket_owner, user_role and get_visit in one statement.
    return await conn.fetchrow(
        f"""SELECT o.owner, o.role, v.*
            FROM ({_OWNER_AND_ROLE}) AS o
            LEFT JOIN (SELECT {_COLUMNS} FROM visits WHERE visit_id = $2 AND user_name = $1) AS v
                   ON true""",
        user_name,
        visit_id,
    )


@_mapped
async def owned_visits_page(
    conn: asyncpg.Pool,
    user_name: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """:func:`visits_page` with the owner and role on every row: at least one row, whose
    visit columns are NULL when the page is empty."""
    # owned_visits_page: bucket_owner, user_role and visits_page in one statement.
    return list(await conn.fetch(
        f"""SELECT o.owner, o.role, v.*
            FROM ({_OWNER_AND_ROLE}) AS o
            LEFT JOIN LATERAL (
                SELECT {_COLUMNS} FROM visits
                WHERE user_name = $1
                  AND ($2::timestamptz IS NULL OR started_at >= $2)
                  AND ($3::timestamptz IS NULL OR started_at < $3)
                  AND ($4::timestamptz IS NULL OR (started_at, visit_id) < ($4, $5::uuid))
                ORDER BY started_at DESC, visit_id DESC
                LIMIT $6) AS v ON true
            ORDER BY v.started_at DESC, v.visit_id DESC""",
        user_name,
        since,
        until,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    ))


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
