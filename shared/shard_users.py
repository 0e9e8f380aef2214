"""The users table as every service on a shard sees it.

Visits and consents live beside their user on the user's shard, and each write of theirs
first asks who that user is. The users table belongs to user_service; this one lookup is
shared so that no service imports another.
"""

from __future__ import annotations

import asyncpg

from shared.db import maps_db_errors
from shared.errors import NotFound

# Driver errors leave every function of this module translated (shared/db.py).
_mapped = maps_db_errors("the shard database")


@_mapped
async def user_role(
    conn: asyncpg.Connection | asyncpg.Pool, user_name: str, *, lock: bool = False
) -> str:
    """The user's role; NotFound when absent. ``lock`` share-locks the row for the transaction,
    keeping the user in place under a new visit or consent."""
    # user_role: by primary key, FOR SHARE when the caller writes beside the user.
    row = await conn.fetchrow(
        "SELECT role FROM users WHERE user_name = $1" + (" FOR SHARE" if lock else ""),
        user_name,
    )
    if row is None:
        raise NotFound(f"user {user_name} does not exist")
    return str(row["role"])
