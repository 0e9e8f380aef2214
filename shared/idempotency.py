"""Safe retries of POSTs: the ``Idempotency-Key`` of API.md (Conventions).

A POST may carry ``Idempotency-Key`` (1..255 visible ASCII characters). The first attempt's
answer is stored in the ``idempotency_keys`` table of the database it writes to, **in the same
transaction as the write**, keyed by (caller ``sub``, path, key): the row exists exactly when
the write committed. A handler does::

    key = await key_of(request, caller)             # None without the header
    async with transaction(pool) as conn:
        if (replay := await claim(conn, key)) is not None:
            return replay                           # the first answer, changes nothing
        ... the write ...
        response = ...
        await record(conn, key, response)
    return response

Concurrency. :func:`claim` takes a transaction-scoped advisory lock on the key, so two
attempts with one key never run their writes side by side: the second waits (up to
``IN_FLIGHT_WAIT``) for the first to commit and then replays its answer, or to roll back (a
process killed mid-request) and then does the write itself; if the first is still running
after the wait, the second is answered 409. The wait covers the common case of a gateway
retrying on another FE server while the killed one's transaction is being rolled back.

Only successful answers are stored (a failed request rolled its transaction back, so it
changed nothing and may simply run again). Rows older than ``RETENTION`` are ignored and
purged a batch at a time by writers (:func:`purge_expired`), so the table's size follows the
write rate of one day.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiohttp import web

from shared.auth import Principal
from shared.db import maps_db_errors
from shared.errors import BadRequest, Conflict, FieldError, ValidationFailed

MIGRATIONS = Path(__file__).parent / "idempotency_migrations"
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
RETENTION = "24 hours"
# How long a second attempt waits for the first one holding its key before answering 409.
IN_FLIGHT_WAIT = 2.0
# Response headers kept with the answer and replayed with it.
KEPT_HEADERS = ("Content-Type", "Location", "ETag")
# One write in PURGE_EVERY also purges up to PURGE_BATCH expired keys.
PURGE_EVERY, PURGE_BATCH = 64, 500

_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_WHAT = "the database"
# Driver errors leave every function of this module translated (shared/db.py).
_mapped = maps_db_errors(_WHAT)


@dataclass(frozen=True)
class IdempotencyKey:
    """One attempt's key: who sent it, where to, and a fingerprint of what it sent."""

    caller: str
    path: str
    key: str
    fingerprint: bytes

    @property
    def lock_id(self) -> int:
        """The advisory lock of this (caller, path, key): 64 bits of its SHA-256, signed."""
        digest = hashlib.sha256(f"{self.caller}\0{self.path}\0{self.key}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


def migration_set() -> tuple[str, Path]:
    """The (component, folder) of the ``idempotency_keys`` table, for apply_migrations."""
    return ("idempotency", MIGRATIONS)


async def key_of(
    request: web.Request, caller: Principal, body: bytes | None = None
) -> IdempotencyKey | None:
    """The request's key, or None without the header; 400 when it is not 1..255 visible ASCII.

    ``body``: the request body, when the handler read it from the stream itself (else it is
    read here, through aiohttp's cache of it).
    """
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    if not _KEY.fullmatch(raw):
        raise BadRequest(f"{HEADER} must be 1 to 255 visible ASCII characters")
    if body is None:
        body = await request.read() if request.body_exists else b""
    return IdempotencyKey(caller.sub, request.path, raw, hashlib.sha256(body).digest())


@_mapped
async def claim(conn: asyncpg.Connection, key: IdempotencyKey | None) -> web.Response | None:
    """Inside the write's transaction, before writing: the first answer to replay, or None.

    409 when another attempt with the key is still running; 422 when the key was used with
    another body.
    """
    if key is None:
        return None
    deadline = time.monotonic() + IN_FLIGHT_WAIT
    # try_lock_key: held until this transaction ends (commit or rollback).
    while not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", key.lock_id):
        if time.monotonic() >= deadline:
            raise Conflict(f"a request with this {HEADER} is still in progress; retry it later")
        await asyncio.sleep(0.02)
    # stored_answer: the live answer to this key, if any.
    row = await conn.fetchrow(
        f"""SELECT fingerprint, status, headers, body FROM idempotency_keys
            WHERE caller = $1 AND path = $2 AND key = $3
              AND created_at > now() - interval '{RETENTION}'""",
        key.caller,
        key.path,
        key.key,
    )
    if row is None:
        return None
    if row["fingerprint"] != key.fingerprint:
        raise ValidationFailed(
            f"this {HEADER} was used with another request body",
            errors=[FieldError(HEADER, "was used with another request body")],
        )
    names_values = row["headers"]
    headers = dict(zip(names_values[::2], names_values[1::2], strict=True))
    headers[REPLAYED] = "true"
    return web.Response(status=row["status"], body=row["body"], headers=headers)


@_mapped
async def record(
    conn: asyncpg.Connection, key: IdempotencyKey | None, response: web.Response
) -> None:
    """Inside the write's transaction, after writing: keep ``response`` as the key's answer."""
    if key is None:
        return
    headers = [
        v for name in KEPT_HEADERS if (value := response.headers.get(name)) for v in (name, value)
    ]
    body = response.body if isinstance(response.body, bytes) else b""
    # keep_answer: replaces an expired row of the same key (claim ignored it).
    await conn.execute(
        """INSERT INTO idempotency_keys (caller, path, key, fingerprint, status, headers, body)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (caller, path, key) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status,
               headers = EXCLUDED.headers, body = EXCLUDED.body, created_at = now()""",
        key.caller,
        key.path,
        key.key,
        key.fingerprint,
        response.status,
        headers,
        body,
    )
    if random.randrange(PURGE_EVERY) == 0:  # noqa: S311 - spreading work, not security
        await purge_expired(conn)


@_mapped
async def purge_expired(conn: asyncpg.Connection | asyncpg.Pool, limit: int = PURGE_BATCH) -> int:
    """Delete up to ``limit`` keys older than the retention; return how many went."""
    # purge_expired: oldest first; rows another purge is deleting are skipped, not waited on.
    result = await conn.execute(
        f"""DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM idempotency_keys
                WHERE created_at <= now() - interval '{RETENTION}'
                ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED))""",
        limit,
    )
    return int(result.rsplit(" ", 1)[-1])
