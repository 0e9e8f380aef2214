"""The shard's read cache: cache-aside through Redis that is never stale after a write.

Entries live in Redis hashes, one hash per *group* (everything one write invalidates: a
user; all visits and visit lists of a patient). A miss takes a **lease** on its field; only
the lease holder loads from PostgreSQL and fills, and only while its lease still stands.
A writer, after its transaction commits, deletes the group **and its leases**, so a reader
that loaded the old row before the commit finds its lease gone and cannot put the old value
back (the stale-set race). Readers that miss while a lease is out wait briefly for the fill
instead of all reading the database (the thundering herd), and concurrent misses inside one
process share one load (single flight).

If Redis fails, a circuit breaker sends reads straight to PostgreSQL for a cool-down instead
of paying the timeout on every request, and writes still succeed. Before the cache is used
again, the process flushes it: a value cached before the outage may be older than a write
made while Redis was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("medsvc.cache")

CACHE_EVENTS = Counter(
    "medsvc_cache_events_total",
    "Read-cache outcomes by shard and entity: hit, miss (a lease: one database load), fill,"
    " wait (for another reader's fill), timeout (waited in vain, loaded), error, bypass,"
    " pass (the gateway found nothing and passed the read on)",
    ["shard", "entity", "event"],
)

# KEYS[1] group hash, KEYS[2] lease hash; ARGV: field, token, lease ms.
# Returns the cached value, or {1} when the caller now holds the lease, or {0} to wait.
_GET_OR_LEASE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return v end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  local exp = tonumber(string.match(held, '|(%d+)$'))
  if exp and exp > now then return {0} end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '|' .. (now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 4)
return {1}
"""

# KEYS[1] group hash, KEYS[2] lease hash; ARGV: field, token, value, ttl ms.
# Fills only while the caller's lease stands: an invalidation since the lease removed it.
_FILL = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held or string.sub(held, 1, string.len(ARGV[2]) + 1) ~= ARGV[2] .. '|' then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

Loader = Callable[[], Awaitable[bytes | None]]


@dataclass
class Breaker:
    """Open after a Redis failure; closed again only after a successful probe and a flush.

    *Slow* is not *down*: a read that times out while Redis still answers other commands
    (a machine saturated by a burst) only bypasses the cache for that request. The breaker
    opens for slowness only once reads have timed out for ``slow_window`` seconds with no
    command answered in between, and then without a flush (a read missed no write).
    Otherwise every gateway and FE server would send all reads to PostgreSQL at once, and
    flush the cache for everyone, exactly when the machine has the least to spare.
    """

    cooldown: float
    open_until: float = 0.0
    needs_flush: bool = False
    slow_window: float = 1.0
    last_ok: float = field(default_factory=time.monotonic)

    def allows(self) -> bool:
        return time.monotonic() >= self.open_until

    def trip(self) -> None:
        self.open_until = time.monotonic() + self.cooldown
        self.needs_flush = True

    def ok(self) -> None:
        """Redis answered a command."""
        self.last_ok = time.monotonic()

    def read_timed_out(self) -> bool:
        """A read timed out: open (without a flush) when nothing answered for slow_window."""
        now = time.monotonic()
        if now - self.last_ok < self.slow_window:
            return False
        self.open_until = now + self.cooldown
        return True


class ReadCache:
    """Cache-aside over one shard's Redis. ``redis_url=None`` disables caching."""

    def __init__(
        self, redis_url: str | None, shard: int, *, ttl: float = 300.0, lease: float = 2.0,
        wait: float = 0.25, timeout: float = 0.25, cooldown: float = 1.0,
        username: str | None = None, password: str | None = None,
    ) -> None:
        self.shard = str(shard)
        self.ttl_ms = int(ttl * 1000)
        self.lease_ms = int(lease * 1000)
        self.wait = wait
        self.breaker = Breaker(cooldown)
        # group -> field -> the load in flight in this process (single flight).
        self._inflight: dict[str, dict[str, asyncio.Future[bytes | None]]] = {}
        self.redis: aioredis.Redis | None = None
        self._recovery: asyncio.Task[None] | None = None
        if redis_url:
            self.redis = aioredis.Redis.from_url(
                redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                # The ACL user from the settings (the URL in the shard map carries none).
                username=username, password=password,
                # One retry on a *connection* error only: after a Redis restart a pooled
                # connection fails once; an invalidation lost that way would let a slow
                # reader put an old value back. A timeout is not retried (the breaker acts).
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                max_connections=64,
            )
            self._get_or_lease = self.redis.register_script(_GET_OR_LEASE)
            self._fill = self.redis.register_script(_FILL)

    @property
    def enabled(self) -> bool:
        return self.redis is not None

    async def ping(self) -> None:
        """Prove the connection (start-up and readiness)."""
        if self.redis is not None:
            await self.redis.ping()

    async def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        if self.redis is not None:
            await self.redis.aclose()

    async def get(self, entity: str, group: str, field: str, load: Loader) -> bytes | None:
        """The cached value of ``group``/``field``, or ``load()``'s (cached when allowed)."""
        if not await self._usable():
            CACHE_EVENTS.labels(self.shard, entity, "bypass").inc()
            return await load()
        flights = self._inflight.setdefault(group, {})
        if (pending := flights.get(field)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        flights[field] = future
        try:
            value = await self._get_shared(entity, group, field, load)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            # An invalidation may have detached this flight already; remove only our own.
            current = self._inflight.get(group)
            if current is not None and current.get(field) is future:
                del current[field]
                if not current:
                    del self._inflight[group]

    async def _get_shared(self, entity: str, group: str, field: str, load: Loader) -> bytes | None:
        token = uuid.uuid4().hex
        keys = _keys(group)
        deadline = time.monotonic() + self.wait
        delay = 0.002
        while True:
            try:
                got = await self._get_or_lease(keys=keys, args=[field, token, self.lease_ms])
            except RedisError as exc:
                self._failed(exc, entity, read=True)
                return await load()
            self.breaker.ok()
            if isinstance(got, bytes):
                CACHE_EVENTS.labels(self.shard, entity, "hit").inc()
                return got
            if got == [1]:
                break
            # Another reader holds the lease: wait for its fill rather than load too.
            CACHE_EVENTS.labels(self.shard, entity, "wait").inc()
            if time.monotonic() + delay > deadline:
                CACHE_EVENTS.labels(self.shard, entity, "timeout").inc()
                return await load()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        CACHE_EVENTS.labels(self.shard, entity, "miss").inc()
        value = await load()
        if value is not None:
            try:
                filled = await self._fill(keys=keys, args=[field, token, value, self.ttl_ms])
            except RedisError as exc:
                self._failed(exc, entity)
            else:
                if filled:
                    CACHE_EVENTS.labels(self.shard, entity, "fill").inc()
        return value

    async def peek(self, entity: str, group: str, field: str) -> bytes | None:
        """The cached value or None; never loads, never fills (the gateway's fast path).

        A None sends the request on to an FE server, whose :meth:`get` takes the lease.
        """
        if self.redis is None or not await self._usable():
            return None
        try:
            value = await self.redis.hget(_keys(group)[0], field)
        except RedisError as exc:
            self._failed(exc, entity, read=True)
            return None
        self.breaker.ok()
        CACHE_EVENTS.labels(self.shard, entity, "hit" if value is not None else "pass").inc()
        return value

    async def invalidate(self, entity: str, group: str) -> None:
        """Drop a group and its outstanding leases; call after the write's commit."""
        if self.redis is None:
            return
        # A load that started before this write may return the old row: later readers in
        # this process must not join it.
        self._inflight.pop(group, None)
        # Tried even while the breaker is open: Redis may be back for the other FE servers,
        # which would serve the old value. Writes are rare; a dead Redis refuses at once.
        try:
            await self.redis.delete(*_keys(group))
        except RedisError as exc:
            self._failed(exc, entity)  # the flush before this process's next use covers it

    async def _usable(self) -> bool:
        if self.redis is None or not self.breaker.allows():
            return False
        if self.breaker.needs_flush:
            try:
                await self.redis.flushdb()
            except RedisError as exc:
                self._failed(exc, "cache")
                return False
            log.warning("cache flushed after an outage", extra={"action": "cache.flushed", "shard": self.shard})
            self.breaker.needs_flush = False
        return True

    def _failed(self, exc: Exception, entity: str, *, read: bool = False) -> None:
        CACHE_EVENTS.labels(self.shard, entity, "error").inc()
        if read and isinstance(exc, RedisTimeoutError):
            # Slow, not down (Breaker): this request reads the database; the breaker opens
            # only when Redis has answered nothing for a while.
            if self.breaker.read_timed_out():
                log.warning(
                    "cache answers nothing; reading from the database",
                    extra={"action": "cache.breaker_open_slow", "shard": self.shard},
                )
            return
        if self.breaker.allows():
            log.warning(
                "cache unavailable; reading from the database",
                extra={"action": "cache.breaker_open", "shard": self.shard, "error": type(exc).__name__},
            )
        self.breaker.trip()
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Probe until Redis answers, then flush: whether or not requests come to find out.

        Until then, a value cached before the outage could be served by a process that did
        not see it (the gateway's fast path, another FE server).
        """
        while self.breaker.needs_flush:
            await asyncio.sleep(self.breaker.cooldown)
            if self.breaker.allows():
                await self._usable()


def _keys(group: str) -> list[str]:
    # One hash tag per group: the value hash and its lease hash stay on one Redis slot.
    return [f"{{{group}}}", f"{{{group}}}:lease"]


def pack_entry(role: str, version: int | None, body: bytes) -> bytes:
    """A cache value: the owner's role and the entity's version ahead of the response body."""
    return f"{role}\x1f{'' if version is None else version}\x1f".encode() + body


def unpack_entry(entry: bytes) -> tuple[str, int | None, bytes]:
    """The (role, version, body) of a value made by :func:`pack_entry`."""
    role, version, body = entry.split(b"\x1f", 2)
    return role.decode(), int(version) if version else None, body
