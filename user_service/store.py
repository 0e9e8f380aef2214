"""SQL for users. Every query is parameterised; driver errors are translated here."""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.db import maps_db_errors
from shared.errors import Conflict, NotFound, PreconditionFailed
from user_service.models import User, UserIn

# Driver errors leave every function of this module translated (shared/db.py).
_mapped = maps_db_errors("the shard database")

# The columns of a User, in its order (its fields in snake_case): User.from_row reads them.
_COLUMNS = User.select_list()


def _address(user: UserIn) -> dict[str, Any] | None:
    return user.address.model_dump(exclude_none=True) if user.address else None


@_mapped
async def insert_user(conn: asyncpg.Connection, user: UserIn) -> asyncpg.Record:
    """Insert a new user; Conflict when the userName exists."""
    try:
        # insert_user: one row, all client fields; server fields by default.
        return await conn.fetchrow(
            f"""INSERT INTO users (user_name, role, given_name, family_name, birth_date, sex,
                                   email, phone, address)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_COLUMNS}""",
            user.userName,
            user.role,
            user.givenName,
            user.familyName,
            user.birthDate,
            user.sex,
            user.email,
            user.phone,
            _address(user),
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"user {user.userName} already exists") from exc


@_mapped
async def get_user(
    conn: asyncpg.Connection | asyncpg.Pool, user_name: str
) -> asyncpg.Record | None:
    """The user row, or None."""
    # get_user: by primary key.
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE user_name = $1", user_name)


@_mapped
async def get_owned_user(conn: asyncpg.Connection | asyncpg.Pool, user_name: str) -> asyncpg.Record:
    """The bucket's owner (``owner``) and the user row's columns (NULL: no such user)."""
    # get_owned_user: the bucket_owner lookup and get_user in one statement (one snapshot).
    return await conn.fetchrow(
        f"""SELECT medsvc_owner($1) AS owner, u.*
            FROM (VALUES (1)) AS one (x)
            LEFT JOIN (SELECT {_COLUMNS} FROM users WHERE user_name = $1) AS u ON true""",
        user_name,
    )


@_mapped
async def lock_user(conn: asyncpg.Connection, user_name: str) -> asyncpg.Record:
    """The user row, locked for update inside the caller's transaction; NotFound if absent."""
    # lock_user: serialises concurrent updates of one user.
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM users WHERE user_name = $1 FOR UPDATE", user_name
    )
    if row is None:
        raise NotFound(f"user {user_name} does not exist")
    return row


@_mapped
async def update_user(
    conn: asyncpg.Connection, user: UserIn, expected_version: int | None, current_version: int
) -> asyncpg.Record:
    """Write the mutable fields of a locked user and bump its version."""
    if expected_version is not None and expected_version != current_version:
        raise PreconditionFailed(
            f"the user is at version {current_version}, not {expected_version}"
        )
    # update_user: all mutable columns, version + 1.
    return await conn.fetchrow(
        f"""UPDATE users SET given_name = $2, family_name = $3, birth_date = $4, sex = $5,
                   email = $6, phone = $7, address = $8, updated_at = now(),
                   version = version + 1
            WHERE user_name = $1 RETURNING {_COLUMNS}""",
        user.userName,
        user.givenName,
        user.familyName,
        user.birthDate,
        user.sex,
        user.email,
        user.phone,
        _address(user),
    )


def _like_prefix(prefix: str) -> str:
    escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


@_mapped
async def search_users(
    conn: asyncpg.Pool,
    family_prefix: str,
    after: list[str] | None,
    limit: int,
    patients_only: bool,
) -> list[asyncpg.Record]:
    """Users whose familyName starts with ``family_prefix`` (any case), in merge order."""
    after_key: list[str | None] = [*after] if after else [None, None, None]
    # search_users: keyset page in (familyName, givenName, userName) byte order.
    return list(await conn.fetch(
        f"""SELECT {_COLUMNS} FROM users
            WHERE lower(family_name) LIKE $1
              AND ($2::text IS NULL OR (family_name COLLATE "C", given_name COLLATE "C",
                                        user_name COLLATE "C") > ($2, $3, $4))
              AND (NOT $5 OR role = 'patient')
              -- only the buckets this shard owns: a move's copy is never listed twice
              AND bucket IN (SELECT sb.bucket FROM shard_buckets sb
                             JOIN shard_identity si ON sb.owner = si.shard_id)
            ORDER BY family_name COLLATE "C", given_name COLLATE "C", user_name COLLATE "C"
            LIMIT $6""",
        _like_prefix(family_prefix),
        after_key[0],
        after_key[1],
        after_key[2],
        patients_only,
        limit,
    ))
