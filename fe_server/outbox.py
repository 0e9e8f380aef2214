"""The audit outbox of a shard and its relay to audit_service.

Writes. Database triggers (in each audited service's migrations; the outbox itself is in
``fe_server/migrations``) add one ``audit_outbox`` row per insert or update of a user or a
visit, in the writing transaction, with the actor, source and request id that
:func:`shared.writes.begin_write` put in transaction-local settings. A change and its event
commit together or not at all.

Relay. Every FE server runs :class:`OutboxRelay`, but only one per shard ships at a time: the
one holding a session-level advisory lock on a dedicated connection. The others retry the lock
every second; when the leader dies its connection closes and PostgreSQL frees the lock.

Why one: the events of one entity must enter the chain in commit order (a create before its
updates). Rows taken by several relays with ``SKIP LOCKED`` can overtake each other. One relay
reading committed rows in id order keeps that order: the transactions writing one entity are
serialised by its row lock, so a later event of an entity is inserted (gets a larger id) and
becomes visible only after the earlier one committed. Across entities id order need not be
commit order (ids are taken at insert), which is why there is no "last shipped id" watermark:
the relay ships whatever rows exist and deletes exactly those audit_service stored. A row that
commits late with a small id is simply shipped later; none is skipped.

At least once: rows are deleted only after audit_service acknowledged the batch; a batch
shipped twice (leader killed between ack and delete) is harmless because audit_service is
idempotent on ``eventId``. While audit_service is unreachable the leader backs off
exponentially (0.1 s doubling to 5 s) and the events wait in the outbox.

Dead letters. A batch audit_service refuses for good (a 4xx that is not about credentials
or load) is retried ``REFUSALS_BEFORE_SPLIT`` times, then shipped in halves, recursively,
until each refused event stands alone; those are moved to the shard's dead-letter table
(:mod:`fe_server.dead_letters`), counted, alerted on, and replayed by an operator's command. The
rest ships. The relay skips the later events of an entity with a dead letter, so that the
entity's events still enter the chain in commit order.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from fe_server import dead_letters
from fe_server.audit_client import AuditClient, AuditError, AuditRejected
from shared.db import mask_dsn
from shared.tasks import background

log = logging.getLogger("medsvc.outbox")

# The outbox and its dead letters: the FE server's own schema on a shard, under this component.
MIGRATIONS = ("audit_outbox", Path(__file__).parent / "migrations")
# pg_try_advisory_lock key of the relay election ('medsrely'); one lock per shard database.
RELAY_LOCK_KEY = 0x6D65647372656C79

OUTBOX_BACKLOG = Gauge(
    "medsvc_audit_outbox_backlog", "Audit events waiting in the shard's outbox", ["shard"]
)
OUTBOX_OLDEST_AGE = Gauge(
    "medsvc_audit_outbox_oldest_age_seconds",
    "Age of the oldest audit event waiting in the shard's outbox (0 when empty)",
    ["shard"],
)
OUTBOX_SHIPPED = Counter(
    "medsvc_audit_outbox_shipped_total",
    "Audit events shipped to audit_service and acknowledged",
    ["shard"],
)
OUTBOX_LAG = Histogram(
    "medsvc_audit_outbox_lag_seconds",
    "Time from an audited change to audit_service's acknowledgement of its event",
    ["shard"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RELAY_ERRORS = Counter(
    "medsvc_audit_relay_errors_total",
    "Relay failures, by kind (audit_down, rejected, database)",
    ["shard", "kind"],
)
DEAD_LETTERED = Counter(
    "medsvc_audit_dead_lettered_total",
    "Audit events audit_service refused for good, moved to the shard's dead-letter table",
    ["shard"],
)
DEAD_LETTERS = Gauge(
    "medsvc_audit_dead_letters",
    "Audit events in the shard's dead-letter table, waiting for an operator's replay",
    ["shard"],
)
# Times a batch is refused for good before it is split to find the refused events.
REFUSALS_BEFORE_SPLIT = 3
RELAY_LEADER = Gauge(
    "medsvc_audit_relay_leader", "1 while this process is its shard's shipping relay", ["shard"]
)

# fetch_outbox: the oldest rows by id, each shaped as the JSON audit_service takes. The
# {before} and {after} placeholders become a CASE over the registered entity types, calling
# each one's API-shaping function (see _shaping_sql).
_FETCH = """
SELECT s.id, s.entity_type, s.entity_id,
       extract(epoch FROM clock_timestamp() - s.occurred_at)::float8 AS age,
       json_build_object(
           'eventId', s.event_id, 'entityType', s.entity_type, 'entityId', s.entity_id,
           'action', s.action, 'actor', s.actor, 'source', s.source, 'requestId', s.request_id,
           'occurredAt', audit_rfc3339(s.occurred_at),
           'changes', audit_changes(s.b, s.a, t.fields), 'before', s.b, 'after', s.a)::text AS event
FROM (SELECT o.*, {before} AS b, {after} AS a FROM audit_outbox o
      -- an entity with a dead letter waits behind it (its order in the chain)
      WHERE NOT EXISTS (SELECT 1 FROM audit_dead_letters d
                        WHERE d.entity_type = o.entity_type AND d.entity_id = o.entity_id)
      ORDER BY o.id LIMIT $1) s
LEFT JOIN audit_entity_types t USING (entity_type)
ORDER BY s.id"""
# outbox_backlog: size and oldest age, and the dead letters, for the metrics.
_BACKLOG = """
SELECT count(*) AS n,
       coalesce(extract(epoch FROM clock_timestamp() - min(occurred_at)), 0)::float8 AS age,
       (SELECT count(*) FROM audit_dead_letters) AS dead
FROM audit_outbox"""


@dataclass(frozen=True)
class RelayConfig:
    """What one shard's relay needs."""

    shard_id: int
    dsn: str
    password: str | None
    batch_rows: int = 500
    batch_bytes: int = 4 * 1024 * 1024
    poll_interval: float = 0.1
    election_interval: float = 1.0
    metrics_interval: float = 5.0
    max_backoff: float = 5.0


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def fetch_query(conn: asyncpg.Connection) -> tuple[str, frozenset[str]]:
    """The fetch query for the entity types registered now, and those types."""
    # entity_types: registered by each audited service's outbox migration.
    types = await conn.fetch("SELECT entity_type, api_function::text AS fn FROM audit_entity_types")

    def shaped(column: str) -> str:
        if not types:
            return f"o.{column}"
        whens = " ".join(
            f"WHEN {_literal(t['entity_type'])} THEN {t['fn']}(o.{column})" for t in types
        )
        return f"CASE o.entity_type {whens} ELSE o.{column} END"

    sql = _FETCH.format(before=shaped("row_before"), after=shaped("row_after"))
    return sql, frozenset(t["entity_type"] for t in types)


class OutboxRelay:
    """Elects itself its shard's relay, then ships the outbox to audit_service forever."""

    def __init__(self, cfg: RelayConfig, client: AuditClient) -> None:
        self.cfg = cfg
        self.client = client
        self.shard = str(cfg.shard_id)
        self._backoff = 0.0
        self._failing_since: float | None = None
        self._last_warning = 0.0
        self._query, self._types = "", frozenset[str]()
        self._refusals = 0
        self._next_replay_check = 0.0

    async def run(self) -> None:
        """Run until cancelled; database trouble means reconnecting and standing again."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.cfg.dsn, password=self.cfg.password, timeout=5, command_timeout=30
                )
                await self._stand(conn)
            except (
                OSError,
                asyncio.TimeoutError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ) as exc:
                RELAY_ERRORS.labels(self.shard, "database").inc()
                log.warning("relay lost its database; retrying", extra={
                    "action": "outbox.db_error", "shard": self.cfg.shard_id,
                    "dsn": mask_dsn(self.cfg.dsn), "error": type(exc).__name__})  # fmt: skip
                await asyncio.sleep(self.cfg.election_interval)
            except Exception:  # noqa: BLE001 - the relay must outlive any one failure
                RELAY_ERRORS.labels(self.shard, "unexpected").inc()
                log.exception("relay failed unexpectedly; restarting it", extra={
                    "action": "outbox.unexpected", "shard": self.cfg.shard_id})  # fmt: skip
                await asyncio.sleep(self.cfg.max_backoff)
            finally:
                RELAY_LEADER.labels(self.shard).set(0)
                if conn is not None:
                    await _close(conn)

    async def _stand(self, conn: asyncpg.Connection) -> None:
        """Wait to win the election (observing the backlog meanwhile), then ship."""
        next_metrics = 0.0
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
            if time.monotonic() >= next_metrics:
                await self._observe_backlog(conn)
                next_metrics = time.monotonic() + self.cfg.metrics_interval
            await asyncio.sleep(self.cfg.election_interval)
        RELAY_LEADER.labels(self.shard).set(1)
        log.info("relay elected", extra={"action": "outbox.elected", "shard": self.cfg.shard_id})
        await self._ship_forever(conn)

    async def _observe_backlog(self, conn: asyncpg.Connection) -> None:
        row = await conn.fetchrow(_BACKLOG)
        OUTBOX_BACKLOG.labels(self.shard).set(row["n"])
        OUTBOX_OLDEST_AGE.labels(self.shard).set(row["age"])
        DEAD_LETTERS.labels(self.shard).set(row["dead"])

    async def _fetch(self, conn: asyncpg.Connection) -> list[asyncpg.Record]:
        """The next rows; an entity type registered since the query was built rebuilds it."""
        rows = await conn.fetch(self._query, self.cfg.batch_rows)
        if any(r["entity_type"] not in self._types for r in rows):
            self._query, self._types = await fetch_query(conn)
            rows = await conn.fetch(self._query, self.cfg.batch_rows)
        return list(rows)

    async def _ship_forever(self, conn: asyncpg.Connection) -> None:
        self._query, self._types = await fetch_query(conn)
        while True:
            await self._take_replays(conn)
            rows = await self._fetch(conn)
            if len(rows) == self.cfg.batch_rows:
                await self._observe_backlog(conn)
            else:
                OUTBOX_BACKLOG.labels(self.shard).set(len(rows))
                OUTBOX_OLDEST_AGE.labels(self.shard).set(max((r["age"] for r in rows), default=0))
            if not rows:
                await asyncio.sleep(self.cfg.poll_interval)
                continue
            batch = self._take(rows)
            fetched = time.monotonic()
            error = await self._ship(batch)
            if _for_good(error) and self._refusals >= REFUSALS_BEFORE_SPLIT:
                self._refusals = 0
                if not await self._split(conn, batch, set(), fetched):
                    await self._back_off(conn)
                continue
            if error is not None:
                await self._back_off(conn)
                continue
            await self._shipped(conn, batch, fetched)
            if len(batch) == len(rows) and len(rows) < self.cfg.batch_rows:
                await asyncio.sleep(self.cfg.poll_interval)

    async def _shipped(
        self, conn: asyncpg.Connection, batch: list[asyncpg.Record], fetched: float
    ) -> None:
        """Delete the rows audit_service stored and count them."""
        # delete_shipped: exactly the rows audit_service acknowledged.
        await conn.execute(
            "DELETE FROM audit_outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in batch]
        )
        OUTBOX_SHIPPED.labels(self.shard).inc(len(batch))
        waited = time.monotonic() - fetched
        for r in batch:
            OUTBOX_LAG.labels(self.shard).observe(r["age"] + waited)

    async def _split(
        self,
        conn: asyncpg.Connection,
        rows: list[asyncpg.Record],
        buried: set[tuple[str, str]],
        fetched: float,
    ) -> bool:
        """Ship ``rows`` in halves until each refused event stands alone; bury those.

        Rows of an entity buried earlier in this pass are left in the outbox (they wait behind
        it). False when audit_service stopped answering meanwhile (the caller backs off).
        """
        rows = [r for r in rows if (r["entity_type"], r["entity_id"]) not in buried]
        if not rows:
            return True
        error = await self._ship(rows)
        if error is None:
            await self._shipped(conn, rows, fetched)
            return True
        if not _for_good(error):
            return False
        if len(rows) > 1:
            mid = len(rows) // 2
            return await self._split(conn, rows[:mid], buried, fetched) and await self._split(
                conn, rows[mid:], buried, fetched
            )
        (row,) = rows
        await dead_letters.bury(conn, [row["id"]], str(error)[:1000])
        buried.add((row["entity_type"], row["entity_id"]))
        DEAD_LETTERED.labels(self.shard).inc()
        DEAD_LETTERS.labels(self.shard).set(await dead_letters.count(conn))
        log.error("audit_service refused an event for good; it is in the dead letters", extra={
            "action": "outbox.dead_lettered", "shard": self.cfg.shard_id, "outboxId": row["id"],
            "entityType": row["entity_type"], "error": str(error)[:500]})  # fmt: skip
        self._backoff = 0.0
        return True

    async def _take_replays(self, conn: asyncpg.Connection) -> None:
        """Once a second: put back the dead letters an operator asked to replay."""
        if time.monotonic() < self._next_replay_check:
            return
        self._next_replay_check = time.monotonic() + 1.0
        if await dead_letters.exist(conn):
            restored = await dead_letters.restore_requested(conn)
            if restored:
                log.info(
                    "dead letters put back in the outbox",
                    extra={
                        "action": "outbox.replayed",
                        "shard": self.cfg.shard_id,
                        "events": restored,
                    },
                )
                DEAD_LETTERS.labels(self.shard).set(await dead_letters.count(conn))

    async def _back_off(self, conn: asyncpg.Connection) -> None:
        """Wait out the backoff, keeping the backlog metrics fresh (the outbox grows meanwhile)."""
        deadline = time.monotonic() + self._backoff
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 1.0))
            await self._observe_backlog(conn)

    def _take(self, rows: list[asyncpg.Record]) -> list[asyncpg.Record]:
        """The first rows that fit in ``batch_bytes`` (at least one)."""
        size = 0
        for n, r in enumerate(rows):
            size += len(r["event"]) + 1
            if size > self.cfg.batch_bytes and n > 0:
                return rows[:n]
        return rows

    async def _ship(self, batch: list[asyncpg.Record]) -> AuditError | None:
        """POST one batch: None once stored, else why not (and the next backoff set)."""
        body = ('{"events":[' + ",".join(r["event"] for r in batch) + "]}").encode()
        try:
            await self.client.post_batch(body, f"outbox-{self.shard}-{uuid.uuid4().hex[:12]}")
        except AuditError as exc:
            kind = "rejected" if isinstance(exc, AuditRejected) else "audit_down"
            if isinstance(exc, AuditRejected) and exc.for_good:
                self._refusals += 1
            RELAY_ERRORS.labels(self.shard, kind).inc()
            self._backoff = min(max(self._backoff * 2, 0.1), self.cfg.max_backoff)
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            if now - self._last_warning > 30 or isinstance(exc, AuditRejected):
                self._last_warning = now
                log.warning("audit_service did not store a batch; keeping it", extra={
                    "action": f"outbox.{kind}", "shard": self.cfg.shard_id, "events": len(batch),
                    "error": str(exc)[:500], "retryIn": self._backoff})  # fmt: skip
            return exc
        if self._failing_since is not None:
            log.info("audit_service is storing again", extra={
                "action": "outbox.recovered", "shard": self.cfg.shard_id,
                "downSeconds": round(time.monotonic() - self._failing_since, 1)})  # fmt: skip
            self._failing_since, self._last_warning = None, 0.0
        self._backoff, self._refusals = 0.0, 0
        return None


def _for_good(error: AuditError | None) -> bool:
    """Would audit_service refuse the same events again?"""
    return isinstance(error, AuditRejected) and error.for_good


async def _close(conn: asyncpg.Connection) -> None:
    """Close the relay's connection (which frees the lock); terminate it if that hangs."""
    try:
        await asyncio.wait_for(conn.close(), 2)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        conn.terminate()


def relay_context(
    cfg: RelayConfig, audit_urls: list[str], jwt_secret: str
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context running the relay as a background task.

    The task is cancelled and awaited on shutdown; its connection then closes, releasing the
    election lock for another FE server of the shard.
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=30, sock_connect=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            client = AuditClient(
                audit_urls, session, jwt_secret, f"outbox-relay.shard-{cfg.shard_id}"
            )
            async with background(OutboxRelay(cfg, client).run(), f"outbox-relay-{cfg.shard_id}"):
                log.info(
                    "relay started",
                    extra={"action": "outbox.started", "shard": cfg.shard_id, "audit": audit_urls},
                )
                yield

    return context
