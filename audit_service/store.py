"""SQL of the audit store. Every query is parameterised; driver errors are translated here.

Appending is the one delicate part: :func:`append_events` takes the chain head's row lock,
skips events already stored (idempotent on eventId: a duplicate never takes a seq), gives
each new event the next seq and its hash, and moves the head, all in one transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from audit_service.chain import (
    StoredEvent,
    canonical,
    chain_hash,
    registers_patient,
    subject_of,
)
from audit_service.merkle import (
    CompactRange,
    Node,
    consistency_ranges,
    hash_ranges,
    inclusion_ranges,
    leaf_hash,
    node_row,
    nodes_for,
    nodes_from_rows,
)
from shared.db import maps_db_errors
from shared.errors import Conflict

log = logging.getLogger("medsvc.audit.store")

MIGRATIONS = Path(__file__).parent / "migrations"
_WHAT = "the audit database"
# Driver errors leave every function of this module translated (shared/db.py).
_mapped = maps_db_errors(_WHAT)
_VERIFY_PREFETCH = 2000
# Events whose bodies a checkpoint reads at a time (leaves_between).
_LEAVES_CHUNK = 2000


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


@_mapped
async def append_events(
    pool: asyncpg.Pool, events: Sequence[Pending], *, trusted_source: bool
) -> tuple[list[Stored], int]:
    """Append ``events`` in order; return (the newly stored events, how many were duplicates).

    ``trusted_source``: the events come from a shard's outbox (the internal endpoint), so a
    user create event may register its user as a patient for the clinician rule.
    """
    async with pool.acquire() as conn, conn.transaction():
        # lock_chain_head: serialises every append in every audit_service process.
        head = await conn.fetchrow(
            "SELECT last_seq, last_hash, tree_size, tree_range FROM audit_chain_head"
            " WHERE id FOR UPDATE"
        )
        tree = _head_tree(head)
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
            nodes = b"".join(tree.append(leaf_hash(body)))
            records.append((
                seq, ev.event_id, ev.entity_type, ev.entity_id,
                subject_of(ev.entity_type, ev.entity_id), ev.actor, ev.occurred_at, text,
                prev, digest, nodes,
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
                         "occurred_at", "body", "prev_hash", "hash", "tree_nodes"],
            )  # fmt: skip
            if patients:
                # register_patients: users a clinician may see the history of.
                await conn.executemany(
                    "INSERT INTO audit_patients (user_name) VALUES ($1) ON CONFLICT DO NOTHING",
                    patients,
                )
            # move_chain_head: the trigger checks it lands on a stored event.
            await conn.execute(
                "UPDATE audit_chain_head SET last_seq = $1, last_hash = $2, tree_size = $3,"
                " tree_range = $4 WHERE id",
                seq,
                prev,
                tree.size,
                tree.to_bytes(),
            )
    return stored, len(events) - len(stored)


def _registers_patient(ev: Pending) -> bool:
    return registers_patient(ev.entity_type, ev.action, ev.after, ev.source)


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
        event.entity_type,
        event.entity_id,
        event.action,
    ):
        raise Conflict(f"event {event.event_id} exists with other content")
    return Stored(row["seq"], row["body"], row["prev_hash"], row["hash"]), False


# -- reading ----------------------------------------------------------------------------------


@_mapped
async def event_by_id(pool: asyncpg.Pool, event_id: uuid.UUID) -> asyncpg.Record | None:
    """The stored event with this id, or None."""
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


@_mapped
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
        where.append(
            "entity_type IN ('user', 'visit') AND subject IN (SELECT user_name FROM audit_patients)"
        )
    args.append(limit)
    sql = (
        "SELECT seq, body, prev_hash, hash FROM audit_events"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY seq LIMIT ${len(args)}"
    )
    # events_page: built from the filters present so each can use its (…, seq) index.
    return list(await pool.fetch(sql, *args))


def _head_tree(head: asyncpg.Record) -> CompactRange:
    """The tree the chain head records; it must cover exactly the chain (backfill_tree)."""
    if head["tree_size"] != head["last_seq"]:
        raise RuntimeError("the audit Merkle tree lags the chain: restart audit_service to fill it")
    return CompactRange.from_bytes(head["tree_size"], head["tree_range"])


VERIFY_COLUMNS = (
    "seq, event_id::text, entity_type, entity_id, subject, actor, occurred_at, body, prev_hash,"
    " hash, tree_nodes"
)


async def scan_events(conn: asyncpg.Connection, after_seq: int = 0) -> AsyncIterator[StoredEvent]:
    """Every event after ``after_seq`` in seq order, streamed (inside a transaction)."""
    # verify_scan: every event in seq order, streamed.
    async for r in conn.cursor(
        f"SELECT {VERIFY_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq",
        after_seq, prefetch=_VERIFY_PREFETCH,
    ):  # fmt: skip
        yield StoredEvent(*r)


@_mapped
async def chain_head(pool: asyncpg.Pool | asyncpg.Connection) -> asyncpg.Record:
    """The chain head row: last_seq, last_hash, tree_size, tree_range."""
    return await pool.fetchrow(
        "SELECT last_seq, last_hash, tree_size, tree_range FROM audit_chain_head WHERE id"
    )


@_mapped
async def patients(conn: asyncpg.Connection) -> set[str]:
    """The userNames audit_patients lists (clinicians read their events)."""
    return {r["user_name"] for r in await conn.fetch("SELECT user_name FROM audit_patients")}


async def tree_head(pool: asyncpg.Pool) -> CompactRange:
    """The current tree, as the chain head records it."""
    return _head_tree(await chain_head(pool))


@_mapped
async def fetch_nodes(
    conn: asyncpg.Pool | asyncpg.Connection, wanted: set[Node]
) -> dict[Node, bytes]:
    """The stored hashes of ``wanted`` perfect subtrees (one query by primary key)."""
    seqs = sorted({node_row(n)[0] for n in wanted})
    # tree_nodes_by_seq: primary key lookups, O(log n) rows.
    rows = await conn.fetch(
        "SELECT seq, tree_nodes FROM audit_events WHERE seq = ANY($1::bigint[])", seqs
    )
    by_seq = {r["seq"]: r["tree_nodes"] for r in rows}
    return nodes_from_rows(wanted, by_seq.get)


async def hashes_of(
    conn: asyncpg.Pool | asyncpg.Connection, ranges: list[tuple[int, int]]
) -> list[bytes]:
    """The MTH of each leaf range, from stored nodes; LookupError when the store lacks one."""
    nodes = await fetch_nodes(conn, nodes_for(ranges))
    try:
        return hash_ranges(ranges, nodes)
    except KeyError as exc:
        raise LookupError(f"the audit store lacks tree node {exc.args[0]}") from exc


async def inclusion_proof(pool: asyncpg.Pool, seq: int, tree_size: int) -> list[bytes]:
    """RFC 6962 audit path of the event ``seq`` (leaf seq - 1) in the tree of ``tree_size``."""
    return await hashes_of(pool, inclusion_ranges(seq - 1, tree_size))


async def consistency_proof(
    conn: asyncpg.Pool | asyncpg.Connection, old: int, new: int
) -> list[bytes]:
    """RFC 6962 consistency proof between the trees of ``old`` and ``new`` events."""
    if old == new:
        return []
    return await hashes_of(conn, consistency_ranges(old, new))


@_mapped
async def leaves_between(
    conn: asyncpg.Connection, after: int, upto: int
) -> AsyncIterator[tuple[int, bytes]]:
    """(seq, leaf hash) of the events after ``after`` up to ``upto``, from their bodies.

    Read :data:`_LEAVES_CHUNK` events at a time: a checkpoint over a long stretch (the
    first one after a large ingest covers every event since the last) must not hold every
    body in memory at once.
    """
    while after < upto:
        # leaves_chunk: a keyset page of bodies by primary key.
        rows = await conn.fetch(
            "SELECT seq, body FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq"
            " LIMIT $3",
            after, upto, _LEAVES_CHUNK,
        )  # fmt: skip
        if not rows:
            return
        for r in rows:
            yield r["seq"], leaf_hash(r["body"].encode("utf-8"))
        after = rows[-1]["seq"]


async def backfill_tree(conn: asyncpg.Connection) -> int:
    """Give events stored before the Merkle tree their ``tree_nodes`` and the head its range.

    Runs as the database owner at start-up; the append-only trigger is disabled for this one
    transaction (the rows' content is not touched, only the new column filled in). Returns how
    many events were filled in.
    """
    async with conn.transaction():
        head = await conn.fetchrow(
            "SELECT last_seq, tree_size, tree_range FROM audit_chain_head WHERE id FOR UPDATE"
        )
        if head["tree_size"] == head["last_seq"]:
            return 0
        tree = CompactRange()
        updates = []
        async for r in conn.cursor("SELECT seq, body FROM audit_events ORDER BY seq"):
            if r["seq"] != tree.size + 1:
                raise RuntimeError(
                    f"audit event seq {tree.size + 1} is missing: cannot build the tree"
                )
            updates.append((r["seq"], b"".join(tree.append(leaf_hash(r["body"].encode("utf-8"))))))
        await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        await conn.executemany("UPDATE audit_events SET tree_nodes = $2 WHERE seq = $1", updates)
        await conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
        await conn.execute(
            "UPDATE audit_chain_head SET tree_size = $1, tree_range = $2 WHERE id",
            tree.size, tree.to_bytes(),
        )  # fmt: skip
    log.info("audit tree built for %d stored events", len(updates))
    return len(updates)
