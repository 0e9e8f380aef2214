"""The shard's read cache: cache-aside through Redis that is never stale after a write.

Entries live in Redis hashes, one hash per *group* (everything one write invalidates: a
user; all visits and visit lists of a patient). A miss takes a **lease** on its field; only
the lease holder loads from PostgreSQL and fills, and only while its lease still stands.
Readers that miss while a lease is out wait briefly for the fill instead of all reading the
database (the thundering herd), and concurrent misses inside one process share one load
(single flight).

Writes are **fenced** (:meth:`ReadCache.fence`). Before its transaction, a writer deletes the
group and its leases and puts a fence on it: a token with a deadline (Redis time). While a
fence stands no lease is granted, so nothing can be filled, and every reader of the group
(the gateway's fast path included) finds nothing cached and reads PostgreSQL. After the
commit the writer deletes the group again and lifts its fence. Hence:

- a writer that cannot reach Redis *before* writing refuses the write (503, nothing changed):
  it could not stop other hops, which may still reach Redis, from serving the old value;
- a writer that cannot reach Redis *after* committing (Redis paused, or this process cut off
  from it) still answers success: its fence keeps the group uncached until the fence's
  deadline, and the commit happened well before that deadline (a transaction that ran longer
  than :data:`COMMIT_WITHIN` is rolled back instead of committed; a write made in one
  statement is cancelled at that time, :meth:`WriteFence.remaining`), so the first fill
  after the fence loads the committed row;
- a reader that loaded the old row before the write cannot put it back (the stale-set race):
  the fence deleted its lease.

Each fill's time to live is drawn between half the configured TTL and all of it: entries
filled together (every patient read at a clinic's opening, a cache refilled after a Redis
restart) would otherwise all expire in the same seconds, and their readers would all miss
and load from PostgreSQL at once. Writes, not the TTL, keep the cache fresh.

If Redis fails, a circuit breaker sends reads straight to PostgreSQL for a cool-down instead
of paying the timeout on every request. Nothing needs flushing when Redis comes back: no write
succeeded without its fence. (Redis runs without persistence: a restarted Redis is empty.)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import Unavailable
from shared.resp import RespConnection
from shared.resp import connect as resp_connect

log = logging.getLogger("medsvc.cache")

CACHE_EVENTS = Counter(
    "medsvc_cache_events_total",
    "Read-cache outcomes by shard and entity: hit, miss (a lease: one database load), fill,"
    " wait (for another reader's fill), timeout (waited in vain, loaded), error, bypass,"
    " fenced (a write is in progress: loaded, not filled), pass (the gateway found nothing"
    " and passed the read on)",
    ["shard", "entity", "event"],
)

# How long a write's fence stands at most (ms), and how soon after putting it up the write
# must commit (s): a transaction that took longer is rolled back, so that the commit always
# precedes the fence's deadline by a wide margin.
FENCE_MS = 30_000
COMMIT_WITHIN = 10.0
# The most entries one group holds (a user: 1; a patient: visits and list pages together).
GROUP_MAX_ENTRIES = 64
# How long a write keeps trying to reach Redis before giving up (s), before and after commit.
WRITE_RETRY_BUDGET = 1.0

# KEYS[1] group hash, KEYS[2] lease hash, KEYS[3] fence hash; ARGV: field, token, lease ms.
# Returns the cached value, or {1} when the caller now holds the lease, or {0} to wait, or
# {2} when a write's fence stands (load, do not fill).
_GET_OR_LEASE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then return v end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, deadline in ipairs(redis.call('HVALS', KEYS[3])) do
  if tonumber(deadline) > now then return {2} end
end
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  local exp = tonumber(string.match(held, '|(%d+)$'))
  if exp and exp > now then return {0} end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '|' .. (now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 4)
return {1}
"""

# KEYS[1] group hash, KEYS[2] lease hash; ARGV: field, token, value, ttl ms, most entries.
# Fills only while the caller's lease stands: an invalidation since the lease removed it.
# A full group first drops one entry at random, so that no caller can grow a group without
# bound (distinct `since=` values each make a new list page).
_FILL = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held or string.sub(held, 1, string.len(ARGV[2]) + 1) ~= ARGV[2] .. '|' then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5])
   and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  redis.call('HDEL', KEYS[1], redis.call('HRANDFIELD', KEYS[1]))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

# KEYS: group, lease and fence hashes; ARGV: token, fence ms. Empties the group, cancels the
# leases (no fill of a value loaded before this write), and puts up the writer's fence.
_FENCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[3], ARGV[1], now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[2]))
return 1
"""

# KEYS: group, lease and fence hashes; ARGV: token. After the commit: empty the group again
# and lift this writer's fence (another writer's fence stays).
_UNFENCE = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

Loader = Callable[[], Awaitable[bytes | None]]


@dataclass(frozen=True)
class _Lua:
    """A script of this module and its SHA1 (EVALSHA; EVAL when Redis lacks it)."""

    source: str
    sha: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())  # noqa: S324


GET_OR_LEASE, FILL, FENCE, UNFENCE = (
    _Lua(_GET_OR_LEASE), _Lua(_FILL), _Lua(_FENCE), _Lua(_UNFENCE)
)


@dataclass
class Breaker:
    """Open for a cool-down after a Redis failure: reads go to PostgreSQL meanwhile.

    *Slow* is not *down*: a read that times out while Redis still answers other commands
    (a machine saturated by a burst) only bypasses the cache for that request. The breaker
    opens for slowness only once reads have timed out for ``slow_window`` seconds with no
    command answered in between. Otherwise every gateway and FE server would send all reads
    to PostgreSQL at once, exactly when the machine has the least to spare.
    """

    cooldown: float
    open_until: float = 0.0
    slow_window: float = 1.0
    last_ok: float = field(default_factory=time.monotonic)

    def allows(self) -> bool:
        return time.monotonic() >= self.open_until

    def trip(self) -> None:
        self.open_until = time.monotonic() + self.cooldown

    def ok(self) -> None:
        """Redis answered a command."""
        self.last_ok = time.monotonic()

    def read_timed_out(self) -> bool:
        """A read timed out: open when nothing answered for ``slow_window``."""
        now = time.monotonic()
        if now - self.last_ok < self.slow_window:
            return False
        self.open_until = now + self.cooldown
        return True


class ReadCache:
    """Cache-aside over one shard's Redis. ``redis_url=None`` disables caching."""

    def __init__(
        self,
        redis_url: str | None,
        shard: int,
        *,
        ttl: float = 300.0,
        lease: float = 2.0,
        wait: float = 0.25,
        timeout: float = 0.25,
        cooldown: float = 1.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.shard = str(shard)
        self.ttl_ms = int(ttl * 1000)
        self.lease_ms = int(lease * 1000)
        self.wait = wait
        self.breaker = Breaker(cooldown)
        # group -> field -> the load in flight in this process (single flight).
        self._inflight: dict[str, dict[str, asyncio.Future[bytes | None]]] = {}
        # The commands (peeks, scripts) waiting for this loop iteration's batch, and the
        # batches sent (:meth:`_command`).
        self._queued: list[tuple[asyncio.Future[Any], tuple[Any, ...]]] = []
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._events: dict[tuple[str, str], Any] = {}
        # The connection the batches go out on (shared/resp.py), made when first needed.
        self._url, self._timeout = redis_url, timeout
        self._credentials = {"username": username, "password": password}
        self._conn: RespConnection | None = None
        self._connecting = asyncio.Lock()
        # On only with a URL (the shard map's Redis): without one, nothing is cached.
        self._enabled = bool(redis_url)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def _fill_ttl_ms(self) -> int:
        """A fill's time to live: spread over [ttl/2, ttl] (the module's docstring says why)."""
        return random.randint(self.ttl_ms // 2, self.ttl_ms)  # noqa: S311 - not a secret

    async def ping(self) -> None:
        """Prove the connection (start-up and readiness): a PING on the connection the
        cache's batches use, so it proves what the reads and writes will use."""
        if self._enabled:
            await self._command(("PING",))

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def bypassed(self, entity: str) -> bool:
        """True, counted as a bypass, when :meth:`get` would not use the cache now (turned
        off, or the breaker open): the caller may then load as it sees fit."""
        if self._enabled and self.breaker.allows():
            return False
        CACHE_EVENTS.labels(self.shard, entity, "bypass").inc()
        return True

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
                got = await self._script(GET_OR_LEASE, keys, field, token, self.lease_ms)
            except RedisError as exc:
                self._failed(exc, entity, read=True)
                return await load()
            self.breaker.ok()
            if isinstance(got, bytes):
                CACHE_EVENTS.labels(self.shard, entity, "hit").inc()
                return got
            if got == [1]:
                break
            if got == [2]:
                CACHE_EVENTS.labels(self.shard, entity, "fenced").inc()
                return await load()
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
                filled = await self._script(
                    FILL, keys, field, token, value, self._fill_ttl_ms(), GROUP_MAX_ENTRIES
                )
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
        if not self._enabled or not self.breaker.allows():
            return None
        try:
            value: bytes | None = await self._command(("HGET", f"{{{group}}}", field))
        except RedisError as exc:
            self._failed(exc, entity, read=True)
            return None
        self.breaker.ok()
        event = "hit" if value is not None else "pass"
        if (counter := self._events.get((entity, event))) is None:
            counter = self._events[(entity, event)] = CACHE_EVENTS.labels(self.shard, entity, event)
        counter.inc()
        return value

    async def _script(self, script: _Lua, keys: list[str], *args: Any) -> Any:
        """Run one of this module's scripts (EVALSHA; EVAL once when Redis lacks it: a Redis
        restarted since it last ran)."""
        try:
            return await self._command(("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:
            return await self._command(("EVAL", script.source, len(keys), *keys, *args))

    def _command(self, command: tuple[Any, ...]) -> asyncio.Future[Any]:
        """One command's reply (a RedisError when it failed), sent with the commands of the
        same loop iteration (:meth:`_send_queued`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._send_queued)
        self._queued.append((future, command))
        return future

    def _send_queued(self) -> None:
        """Send the commands queued in this loop iteration as one write, pipelined.

        The reads and scripts the client's ``execute_command`` would send, on one pooled
        connection: the client's per-command work (pool checkout, retry wrapper, timeout
        scope, reply callbacks) is paid once per batch, not per command; under load a batch
        holds several requests' commands. Each command is still one atomic command (a
        script runs whole), and each caller awaits its own reply before going on.
        """
        batch, self._queued = self._queued, []
        task = asyncio.ensure_future(self._run_batch(batch))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _run_batch(self, batch: list[tuple[asyncio.Future[Any], tuple[Any, ...]]]) -> None:
        error: BaseException | None = None
        try:
            error = await self._send_batch(batch)
        finally:
            # Whatever happened (an error, a cancellation at shutdown), no caller is left waiting.
            if any(not future.done() for future, _ in batch):
                failed = error if isinstance(error, RedisError) else RedisConnectionError(
                    "the cache command was not answered" if error is None
                    else f"cache command failed: {type(error).__name__}")  # fmt: skip
                for future, _ in batch:
                    if not future.done():
                        future.set_exception(failed)

    async def _send_batch(
        self, batch: list[tuple[asyncio.Future[Any], tuple[Any, ...]]]
    ) -> BaseException | None:
        """Answer the batch's futures; the error that stopped it otherwise (returned)."""
        error: BaseException | None = None
        # As the client's own retry (see __init__): one more try on a *connection* error
        # only (a connection that a Redis restart broke); a timeout is not retried.
        # A script sent again runs again: each of this module's may (a fence is put up, or
        # lifted, twice; a fill whose lease it removed the first time does nothing).
        for attempt in (1, 2):
            try:
                conn = await self._connection()
            except RedisError as exc:
                return exc
            try:
                replies = conn.send([command for _, command in batch])
            except RedisError as exc:  # closed since
                error = exc
                continue
            try:
                async with asyncio.timeout(self._timeout):
                    await asyncio.wait(replies)
            except TimeoutError:
                # Replies are late: this connection is dropped (as redis-py does), and the
                # callers see the timeout (the breaker tells slow from down).
                self._drop(conn)
                return RedisTimeoutError("Timeout reading from the cache")
            lost = next((r.exception() for r in replies
                         if isinstance(r.exception(), RedisConnectionError)), None)  # fmt: skip
            if lost is not None:
                error = lost
                if attempt == 1:
                    continue
                return error
            for (future, _), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if (failure := reply.exception()) is not None:  # this command's error reply
                    future.set_exception(failure)
                else:
                    future.set_result(reply.result())
            return error
        return error

    async def drop(self, groups: list[str]) -> None:
        """Forget ``groups`` and their leases (a load in flight fills nothing); best effort.

        For entries this shard may no longer serve (shared/service.py require_owned)."""
        if not self._enabled:
            return
        for group in groups:
            self._inflight.pop(group, None)
        try:
            await self._command(("DEL", *(k for g in groups for k in _keys(g)[:2])))
        except RedisError as exc:
            self._failed(exc, "user")

    async def _connection(self) -> RespConnection:
        """The open connection, or a new one (RedisError when it cannot be made)."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        assert self._url is not None
        async with self._connecting:
            if self._conn is None or self._conn.closed:
                self._conn = await resp_connect(
                    self._url, timeout=self._timeout, **self._credentials
                )
            return self._conn

    def _drop(self, conn: RespConnection) -> None:
        conn.close()
        if self._conn is conn:
            self._conn = None

    def fence(self, entity: str, group: str) -> WriteFence:
        """The fence of one write to ``group``: ``async with cache.fence(...) as f:`` around
        the transaction, calling ``f.check()`` just before it commits."""
        return WriteFence(self, entity, group)

    async def _run_for_write(self, entity: str, group: str, script: _Lua, args: list[Any]) -> bool:
        """Run a write's fence script, retrying for :data:`WRITE_RETRY_BUDGET`; True if it ran.

        Tried even while the breaker is open: Redis may be back, and the other hops may be
        reading it. A load that started before this write may return the old row: later
        readers in this process must not join it.
        """
        assert self._enabled
        self._inflight.pop(group, None)
        deadline = time.monotonic() + WRITE_RETRY_BUDGET
        delay = 0.05
        while True:
            try:
                await self._script(script, _keys(group), *args)
                return True
            except RedisError as exc:
                self._failed(exc, entity)
            if time.monotonic() + delay >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def _usable(self) -> bool:
        return self._enabled and self.breaker.allows()

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
                extra={
                    "action": "cache.breaker_open",
                    "shard": self.shard,
                    "error": type(exc).__name__,
                },
            )
        self.breaker.trip()


class WriteFence:
    """One write's fence on a group (see the module docstring)."""

    def __init__(self, cache: ReadCache, entity: str, group: str) -> None:
        self.cache, self.entity, self.group = cache, entity, group
        self.token = uuid.uuid4().hex
        self.raised_at = 0.0

    async def __aenter__(self) -> WriteFence:
        if not self.cache.enabled:
            return self
        self.raised_at = time.monotonic()
        if not await self.cache._run_for_write(
            self.entity, self.group, FENCE, [self.token, FENCE_MS]
        ):
            raise Unavailable(
                "the shard's read cache cannot be reached, so the change could not be made "
                "safely (other servers could go on showing the old value); nothing was changed",
                retry_after=2,
            )
        return self

    def check(self) -> None:
        """Call just before the commit: Unavailable (so a rollback) when it is too late."""
        if self.cache.enabled and time.monotonic() - self.raised_at > COMMIT_WITHIN:
            raise Unavailable(
                "the change took too long and was not made; nothing was changed", retry_after=2
            )

    def remaining(self) -> float | None:
        """The seconds left to commit in (None: no fence, no bound), for a write made in one
        statement that commits by itself (no transaction to roll back after :meth:`check`):
        give it as the statement's timeout, which cancels it at that time.

        Unavailable, as :meth:`check`, when no time is left.
        """
        if not self.cache.enabled:
            return None
        self.check()
        return COMMIT_WITHIN - (time.monotonic() - self.raised_at)

    async def __aexit__(self, *exc: object) -> None:
        if not self.cache.enabled:
            return
        # Lifted whether the write committed or not; if Redis cannot be reached now, the
        # fence lapses at its deadline, long after the commit, and the group fills afresh.
        if not await self.cache._run_for_write(
            self.entity, self.group, UNFENCE, [self.token]
        ):
            log.warning(
                "write fence left to lapse",
                extra={"action": "cache.fence_lapse", "shard": self.cache.shard,
                       "entity": self.entity},
            )  # fmt: skip


def _keys(group: str) -> list[str]:
    # One hash tag per group: the value, lease and fence hashes stay on one Redis slot.
    return [f"{{{group}}}", f"{{{group}}}:lease", f"{{{group}}}:fence"]


def pack_entry(role: str, version: int | None, body: bytes) -> bytes:
    """A cache value: the owner's role and the entity's version ahead of the response body."""
    return f"{role}\x1f{'' if version is None else version}\x1f".encode() + body


def unpack_entry(entry: bytes) -> tuple[str, int | None, bytes]:
    """The (role, version, body) of a value made by :func:`pack_entry`."""
    role, version, body = entry.split(b"\x1f", 2)
    return role.decode(), int(version) if version else None, body
