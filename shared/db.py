"""The PostgreSQL pool as an aiohttp cleanup context, and the translation of driver errors.

Nothing above a service's ``store.py`` imports asyncpg's exceptions: :func:`db_errors` turns a
lost or refused connection into :class:`~shared.errors.Unavailable` (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar, cast

import asyncpg
import orjson
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.errors import Misdirected, Unavailable

log = logging.getLogger("medsvc.db")
_F = TypeVar("_F", bound=Callable[..., Any])

# Errors meaning "the database cannot be reached now", as opposed to a bad query.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.PostgresConnectionError,
)


# The SQLSTATE the shard's ownership trigger raises (user_service/migrations/004_*.sql).
MISDIRECTED_SQLSTATE = "MS421"


class PoolCollector(Collector):
    """Database pool use, read from the live pools at scrape time (no bookkeeping per query).

    ``pool`` is the name a pool was opened with (``shard-0``, ``audit``): a bounded label.
    """

    def __init__(self) -> None:
        self.pools: dict[str, asyncpg.Pool] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        conns = GaugeMetricFamily(
            "medsvc_db_pool_connections",
            "Connections the process's database pool holds, by pool and state (idle, in_use)",
            labels=["pool", "state"],
        )
        limit = GaugeMetricFamily(
            "medsvc_db_pool_max_connections", "The pool's maximum size, by pool", labels=["pool"]
        )
        for name, pool in list(self.pools.items()):
            size, idle = pool.get_size(), pool.get_idle_size()
            conns.add_metric([name, "idle"], idle)
            conns.add_metric([name, "in_use"], max(size - idle, 0))
            limit.add_metric([name], pool.get_max_size())
        yield conns
        yield limit


POOL_COLLECTOR = PoolCollector()
REGISTRY.register(POOL_COLLECTOR)


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (for logs)."""
    head, sep, tail = dsn.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return dsn
    scheme, _, cred = head.partition("//")
    user = cred.split(":", 1)[0]
    return f"{scheme}//{user}:***@{tail}"


@contextlib.contextmanager
def db_errors(what: str) -> Iterator[None]:
    """Translate connection-level driver errors into :class:`Unavailable`."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise Unavailable(f"{what} is unavailable") from exc
    except asyncpg.PostgresError as exc:
        # MS421: the shard's ownership check (medsvc_check_owner) refused the write.
        if getattr(exc, "sqlstate", None) == MISDIRECTED_SQLSTATE:
            owner = getattr(exc, "detail", None)
            raise Misdirected(
                "this shard does not own the user's bucket",
                owner=int(owner) if owner and owner.isdigit() else None,
            ) from exc
        raise


def maps_db_errors(what: str) -> Callable[[_F], _F]:
    """Decorate a store function so that driver errors leave it translated, as :func:`db_errors`.

    The store modules' one mapping at their boundary (procrastinate's ``wrap_exceptions``):
    each module makes one ``_mapped = maps_db_errors("the shard database")`` and decorates its
    coroutine functions and async generators with it, so that nothing above ``store.py`` sees
    asyncpg's exceptions.
    """

    def decorate(fn: _F) -> _F:
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def mapped_rows(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                rows = fn(*args, **kwargs)
                try:
                    with db_errors(what):
                        async for item in rows:
                            yield item
                finally:
                    # A consumer that stops early closes the inner generator now (its
                    # connection goes back to the pool), not whenever it is collected.
                    await rows.aclose()

            return cast(_F, mapped_rows)
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{fn.__qualname__} is neither a coroutine nor an async generator")

        @functools.wraps(fn)
        async def mapped(*args: Any, **kwargs: Any) -> Any:
            with db_errors(what):
                return await fn(*args, **kwargs)

        return cast(_F, mapped)

    return decorate


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, encoded with orjson.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A release that leaves the session as it is (asyncpg still rolls back an open transaction)."""


async def create_pool(
    dsn: str,
    *,
    password: str | None = None,
    min_size: int = 2,
    max_size: int = 10,
    attempts: int = 30,
    what: str = "database",
    reset_sessions: bool = True,
    server_settings: dict[str, str] | None = None,
) -> asyncpg.Pool:
    """Open a pool, retrying a bounded number of times with one warning per try.

    ``reset_sessions=False`` skips asyncpg's reset query (``RESET ALL``, unlisten, unlock
    advisory locks: one more round trip) on every release, for pools whose users keep no
    session state: settings only transaction-local, advisory locks only transaction-scoped.
    ``server_settings``: session settings every connection starts with.
    """
    for attempt in range(1, attempts + 1):
        try:
            pool = await asyncpg.create_pool(
                dsn,
                password=password,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                command_timeout=30,
                timeout=5,
                reset=None if reset_sessions else _keep_session,
                server_settings=server_settings,
            )
            async with pool.acquire() as conn:
                await conn.execute("SELECT 1")
            log.info(
                "connected", extra={"action": "db.connected", "dsn": mask_dsn(dsn), "what": what}
            )
            return pool
        except _UNAVAILABLE as exc:
            if attempt == attempts:
                raise
            log.warning(
                "connect failed; retrying",
                extra={
                    "action": "db.connect_retry",
                    "dsn": mask_dsn(dsn),
                    "error": type(exc).__name__,
                    "attempt": attempt,
                },
            )
            await asyncio.sleep(min(0.2 * attempt, 2.0))
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def pool_scope(dsn: str, **kwargs: object) -> AsyncIterator[asyncpg.Pool]:
    """Open a pool for the duration of the block (the cleanup-context body)."""
    pool = await create_pool(dsn, **kwargs)  # type: ignore[arg-type]
    name = str(kwargs.get("what", "database"))
    POOL_COLLECTOR.pools[name] = pool
    try:
        yield pool
    finally:
        if POOL_COLLECTOR.pools.get(name) is pool:
            del POOL_COLLECTOR.pools[name]
        await pool.close()


@contextlib.asynccontextmanager
async def transaction(
    pool: asyncpg.Pool, what: str = "the shard database"
) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection in a transaction; a lost or refused connection is Unavailable.

    A connection lost at COMMIT leaves the outcome unknown to us: the caller gets 503, never
    a success for a write that may not have committed.
    """
    with db_errors(what):
        async with pool.acquire() as conn, conn.transaction():
            yield conn
