"""SQL for study consents on the patient's shard. Driver errors are translated here."""

from __future__ import annotations

import asyncpg

from shared.db import maps_db_errors
from user_service.models import Consent, StudyTaken

# Driver errors leave every function of this module translated (shared/db.py).
_mapped = maps_db_errors("the shard database")

# The columns of a Consent, in its order: Consent.from_row reads them.
_COLUMNS = Consent.select_list()


@_mapped
async def give_consent(conn: asyncpg.Connection, user_name: str, study_id: str) -> asyncpg.Record:
    """Record consent; a consent already in force is left as it is (no write, no audit event)."""
    # give_consent: insert, or renew a withdrawn consent; a consent in force returns no row.
    row = await conn.fetchrow(
        f"""INSERT INTO study_consents AS c (user_name, study_id) VALUES ($1, $2)
            ON CONFLICT (user_name, study_id) DO UPDATE
            SET consented_at = now(), withdrawn_at = NULL, updated_at = now(),
                version = c.version + 1
            WHERE c.withdrawn_at IS NOT NULL
            RETURNING {_COLUMNS}""",
        user_name, study_id,
    )
    if row is None:
        # consent_in_force: what the idempotent PUT answers with.
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM study_consents WHERE user_name = $1 AND study_id = $2",
            user_name, study_id,
        )
    return row


@_mapped
async def withdraw_consent(conn: asyncpg.Connection, user_name: str, study_id: str) -> bool:
    """Withdraw a consent in force; False when there was none (nothing to do)."""
    # withdraw_consent: only a consent in force changes.
    status: str = await conn.execute(
        """UPDATE study_consents SET withdrawn_at = now(), updated_at = now(),
                  version = version + 1
           WHERE user_name = $1 AND study_id = $2 AND withdrawn_at IS NULL""",
        user_name, study_id,
    )
    return status != "UPDATE 0"


@_mapped
async def consents_in_force(conn: asyncpg.Connection, user_name: str) -> list[StudyTaken]:
    """The studies the user takes part in now, in studyId order."""
    # consents_in_force: the user's consents not withdrawn.
    rows = await conn.fetch(
        f"""SELECT {StudyTaken.select_list()} FROM study_consents
            WHERE user_name = $1 AND withdrawn_at IS NULL ORDER BY study_id""",
        user_name,
    )
    return [StudyTaken.from_row(r) for r in rows]
