"""SQL of the audit store. Every query is parameterised; driver errors are translated here.

Appending is the one delicate part: :func:`append_events` takes the chain head's row lock,
skips events already stored (idempotent on eventId: a duplicate never takes a seq), gives
each new event the next seq and its hash, and moves the head, all in one transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from audit_service.chain import (
    ChainVerifier, StoredEvent, Verdict, canonical, chain_hash, subject_of,
)
from shared.db import db_errors
from shared.errors import Conflict

log = logging.getLogger("medsvc.audit.store")

MIGRATIONS = Path(__file__).parent / "migrations"
_WHAT = "the audit database"
_VERIFY_PREFETCH = 2000


@dataclass(frozen=True, slots=True)
class Pending:
    """An event validated and ready to enter the chain (everything but seq and hashes)."""

    event_id: uuid.UUID
    entity_type: str
    entity_id: str
    action: str
    actor: str
    occurred_at: dt.datetime
    source: str
    request_id: str | None
    changes: list[str]
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    def body(self, seq: int) -> bytes:
        """The canonical body this event has at ``seq``."""
        return canonical({
            "eventId": str(self.event_id), "seq": seq, "entityType": self.entity_type,
            "entityId": self.entity_id, "action": self.action, "actor": self.actor,
            "occurredAt": self.occurred_at, "source": self.source, "requestId": self.request_id,
            "changes": self.changes, "before": self.before, "after": self.after,
        })  # fmt: skip


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored event as the API renders it."""

    seq: int
    body: str
    prev_hash: str
    hash: str


# -- appending --------------------------------------------------------------------------------


async def append_events(
    pool: asyncpg.Pool, events: Sequence[Pending], *, trusted_source: bool
) -> tuple[list[Stored], int]:
    """Append ``events`` in order; return (the newly stored events, how many were duplicates).

    ``trusted_source``: the events come from a shard's outbox (the internal endpoint), so a
    user create event may register its user as a patient for the clinician rule.
    """
    with db_errors(_WHAT):
        async with pool.acquire() as conn, conn.transaction():
            # lock_chain_head: serialises every append in every audit_service process.
            head = await conn.fetchrow(
                "SELECT last_seq, last_hash FROM audit_chain_head WHERE id FOR UPDATE"
            )
            # known_event_ids: which of these are stored already (none can appear meanwhile).
            known = {
                r["event_id"]
                for r in await conn.fetch(
                    "SELECT event_id FROM audit_events WHERE event_id = ANY($1::uuid[])",
                    list({e.event_id for e in events}),
                )
            }
            seq, prev = head["last_seq"], head["last_hash"]
            records, stored, patients = [], [], []
            for ev in events:
                if ev.event_id in known:
                    continue
                known.add(ev.event_id)
                seq += 1
                body = ev.body(seq)
                digest = chain_hash(prev, body)
                text = body.decode("utf-8")
                records.append((
                    seq, ev.event_id, ev.entity_type, ev.entity_id,
                    subject_of(ev.entity_type, ev.entity_id), ev.actor, ev.occurred_at, text,
                    prev, digest,
                ))  # fmt: skip
                stored.append(Stored(seq, text, prev, digest))
                prev = digest
                if trusted_source and _registers_patient(ev):
                    patients.append((ev.entity_id,))
            if records:
                # insert_events: COPY is the cheapest way to add a batch.
                await conn.copy_records_to_table(
                    "audit_events", records=records,
                    columns=["seq", "event_id", "entity_type", "entity_id", "subject", "actor",
                             "occurred_at", "body", "prev_hash", "hash"],
                )  # fmt: skip
                if patients:
                    # register_patients: users a clinician may see the history of.
                    await conn.executemany(
                        "INSERT INTO audit_patients (user_name) VALUES ($1) ON CONFLICT DO NOTHING",
                        patients,
                    )
                # move_chain_head: the trigger checks it lands on a stored event.
                await conn.execute(
                    "UPDATE audit_chain_head SET last_seq = $1, last_hash = $2 WHERE id", seq, prev
                )
    return stored, len(events) - len(stored)


def _registers_patient(ev: Pending) -> bool:
    return (
        ev.entity_type == "user" and ev.action == "create" and ev.after is not None
        and ev.after.get("role") == "patient"
    )  # fmt: skip


async def append_one(pool: asyncpg.Pool, event: Pending) -> tuple[Stored, bool]:
    """Append one event; (stored, created). A known eventId returns the stored event, or
    Conflict when it names a different entity or action."""
    stored, _ = await append_events(pool, [event], trusted_source=False)
    if stored:
        return stored[0], True
    row = await event_by_id(pool, event.event_id)
    assert row is not None
    # The action is only in the body, read here: PostgreSQL's jsonb cannot hold the \u0000
    # that a stored JSON string may contain.
    action = orjson.loads(row["body"])["action"]
    if (row["entity_type"], row["entity_id"], action) != (
        event.entity_type, event.entity_id, event.action,
    ):
        raise Conflict(f"event {event.event_id} exists with other content")
    return Stored(row["seq"], row["body"], row["prev_hash"], row["hash"]), False


# -- reading ----------------------------------------------------------------------------------


async def event_by_id(pool: asyncpg.Pool, event_id: uuid.UUID) -> asyncpg.Record | None:
    """The stored event with this id, or None."""
    with db_errors(_WHAT):
        # event_by_id: unique index on event_id.
        return await pool.fetchrow(
            """SELECT seq, entity_type, entity_id, subject, body, prev_hash, hash,
                      coalesce(subject IN (SELECT user_name FROM audit_patients), false)
                          AS of_patient
               FROM audit_events WHERE event_id = $1""",
            event_id,
        )


@dataclass(frozen=True)
class EventFilter:
    """The query of ``GET /v1/audit/events``; None means "any"."""

    entity_type: str | None = None
    entity_id: str | None = None
    actor: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    after_seq: int | None = None
    patients_only: bool = False


async def events_page(pool: asyncpg.Pool, f: EventFilter, limit: int) -> list[asyncpg.Record]:
    """Events matching ``f`` in seq order, after ``f.after_seq``, at most ``limit``."""
    where, args = [], []

    def cond(sql: str, value: object) -> None:
        args.append(value)
        where.append(sql.format(f"${len(args)}"))

    if f.entity_type is not None:
        cond("entity_type = {}", f.entity_type)
    if f.entity_id is not None:
        cond("entity_id = {}", f.entity_id)
    if f.actor is not None:
        cond("actor = {}", f.actor)
    if f.since is not None:
        cond("occurred_at >= {}", f.since)
    if f.until is not None:
        cond("occurred_at < {}", f.until)
    if f.after_seq is not None:
        cond("seq > {}", f.after_seq)
    if f.patients_only:
        where.append("entity_type IN ('user', 'visit')"
                     " AND subject IN (SELECT user_name FROM audit_patients)")
    args.append(limit)
    sql = (
        "SELECT seq, body, prev_hash, hash FROM audit_events"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY seq LIMIT ${len(args)}"
    )
    with db_errors(_WHAT):
        # events_page: built from the filters present so each can use its (…, seq) index.
        return await pool.fetch(sql, *args)


async def verify(pool: asyncpg.Pool) -> Verdict:
    """Check the whole chain in one consistent snapshot (see :class:`ChainVerifier`)."""
    verifier = ChainVerifier()
    with db_errors(_WHAT):
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            head = await conn.fetchrow("SELECT last_seq, last_hash FROM audit_chain_head WHERE id")
            # verify_scan: every event in seq order, streamed.
            async for r in conn.cursor(
                """SELECT seq, event_id::text, entity_type, entity_id, actor, occurred_at, body,
                          prev_hash, hash FROM audit_events ORDER BY seq""",
                prefetch=_VERIFY_PREFETCH,
            ):
                if not verifier.feed(StoredEvent(*r)):
                    break
    return verifier.finish(head["last_seq"], head["last_hash"])


async def chain_head(pool: asyncpg.Pool) -> tuple[int, str]:
    """The last seq and hash."""
    with db_errors(_WHAT):
        row = await pool.fetchrow("SELECT last_seq, last_hash FROM audit_chain_head WHERE id")
    return row["last_seq"], row["last_hash"]
