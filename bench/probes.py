"""Probes: what else to measure while a scenario runs, beside wrk's own figures.

A probe is asked :meth:`Probe.before` a measured run, :meth:`Probe.sample` about twice a
second during it, and :meth:`Probe.after` it; what ``after`` returns lands in the row's
``extra`` (shown under "Other measurements" and kept in the JSON). Later work adds a probe
with one line in :func:`default_probes`, for example::

    # a gauge of the FE servers, its largest value during write runs
    PromMax("outbox backlog max", "fe", "medsvc_audit_outbox_backlog", writes_only=True),
    # a table's growth on the central database
    SqlRate("audit events stored/s", "SELECT count(*) FROM audit_events", audit_dsn),

A probe whose table or metric does not exist (yet) reports nothing rather than failing, so
that the benchmark runs on every stage of the project.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from bench.procstat import kind_of

if TYPE_CHECKING:
    from bench.runner import BenchContext
    from bench.scenarios import Scenario

DsnSource = Callable[["BenchContext"], Sequence[str]]


def shard_dsns(ctx: BenchContext) -> list[str]:
    """Every shard's PostgreSQL."""
    return [s.postgres for s in ctx.stack.shard_map.shards]


def central_dsn(ctx: BenchContext) -> list[str]:
    """The central PostgreSQL's own database (study registry)."""
    return [ctx.stack.central_dsn]


def audit_dsn(ctx: BenchContext) -> list[str]:
    """audit_service's database, "audit" on the central server (audit_service/settings.py)."""
    return [ctx.stack.central_postgres.dsn_for("audit")]


class Probe(Protocol):
    name: str

    def applies(self, scenario: Scenario) -> bool: ...
    async def before(self, ctx: BenchContext) -> None: ...
    async def sample(self, ctx: BenchContext) -> None: ...
    async def after(self, ctx: BenchContext, seconds: float) -> dict[str, Any]: ...


class _Base:
    name = ""
    writes_only = False

    def applies(self, scenario: Scenario) -> bool:
        return scenario.writes or not self.writes_only

    async def before(self, ctx: BenchContext) -> None:
        pass

    async def sample(self, ctx: BenchContext) -> None:
        pass


# One connection per database for every probe query: a new connection is a new PostgreSQL
# backend process, too dear to make twice a second while the CPU is being measured.
_connections: dict[str, asyncpg.Connection] = {}


async def _connection(dsn: str) -> asyncpg.Connection:
    conn = _connections.get(dsn)
    if conn is None or conn.is_closed():
        conn = _connections[dsn] = await asyncpg.connect(dsn, timeout=5)
    return conn


async def close_connections() -> None:
    """Close the probes' database connections (before the stack stops)."""
    while _connections:
        _, conn = _connections.popitem()
        await conn.close(timeout=5)


async def scalars(dsns: Sequence[str], sql: str) -> list[float] | None:
    """The query's one value on each database; None when its database or table does not exist."""

    async def one(dsn: str) -> float:
        return float(await (await _connection(dsn)).fetchval(sql, timeout=10) or 0)

    try:
        return list(await asyncio.gather(*(one(d) for d in dsns)))
    except (asyncpg.UndefinedTableError, asyncpg.InvalidCatalogNameError):
        return None


class SqlRate(_Base):
    """Growth per second of a count summed over some databases (``SELECT count(*) ...``)."""

    def __init__(self, name: str, sql: str, dsns: DsnSource, *, writes_only: bool = False) -> None:
        self.name, self.sql, self.dsns, self.writes_only = name, sql, dsns, writes_only
        self._before: float | None = None

    async def before(self, ctx: BenchContext) -> None:
        values = await scalars(self.dsns(ctx), self.sql)
        self._before = None if values is None else sum(values)

    async def after(self, ctx: BenchContext, seconds: float) -> dict[str, Any]:
        values = await scalars(self.dsns(ctx), self.sql)
        if values is None or self._before is None:
            return {}
        return {self.name: round((sum(values) - self._before) / seconds, 1)}


class SqlMax(_Base):
    """The largest value a scalar query returned on any database while the run lasted."""

    def __init__(self, name: str, sql: str, dsns: DsnSource, *, writes_only: bool = False) -> None:
        self.name, self.sql, self.dsns, self.writes_only = name, sql, dsns, writes_only
        self._max: float | None = None

    async def before(self, ctx: BenchContext) -> None:
        self._max = None

    async def sample(self, ctx: BenchContext) -> None:
        values = await scalars(self.dsns(ctx), self.sql)
        if values:
            self._max = max(self._max or 0.0, *values)

    async def after(self, ctx: BenchContext, seconds: float) -> dict[str, Any]:
        await self.sample(ctx)
        return {} if self._max is None else {self.name: round(self._max, 3)}


class Samples(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    """Prometheus samples by (sample name, labels).

    Sums over labels, and differences between two scrapes.
    """

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, lbl), v in self.items() if n == name and want <= lbl)

    def __sub__(self, earlier: Samples) -> Samples:  # type: ignore[override]
        return Samples({k: v - earlier.get(k, 0.0) for k, v in self.items()})


async def scrape(urls: Sequence[str]) -> Samples:
    """Every sample of every ``/metrics`` page, summed over the pages."""
    out = Samples()
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in urls:
            async with session.get(url + "/metrics") as resp:
                text = await resp.text()
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    key = (s.name, frozenset(s.labels.items()))
                    out[key] = out.get(key, 0.0) + s.value
    return out


# Turns the differences over a run (and the run's seconds) into figures to report.
Show = Callable[[Samples, float], dict[str, Any]]


class PromDelta(_Base):
    """Metrics of one process kind (``fe``, ``gateway``) over the run, turned into figures.

    Each ``show`` gets the differences between the scrapes after and before the run.
    """

    def __init__(self, name: str, kind: str, *shows: Show, writes_only: bool = False) -> None:
        self.name, self.kind, self.shows, self.writes_only = name, kind, shows, writes_only
        self._before = Samples()

    async def before(self, ctx: BenchContext) -> None:
        self._before = await scrape(_urls(ctx, self.kind))

    async def after(self, ctx: BenchContext, seconds: float) -> dict[str, Any]:
        delta = await scrape(_urls(ctx, self.kind)) - self._before
        out: dict[str, Any] = {}
        for show in self.shows:
            out |= show(delta, seconds)
        return out


class PromMax(_Base):
    """The largest value a gauge (summed over labels, per process) took during the run."""

    def __init__(self, name: str, kind: str, gauge: str, *, writes_only: bool = False) -> None:
        self.name, self.kind, self.gauge, self.writes_only = name, kind, gauge, writes_only
        self._max: float | None = None

    async def before(self, ctx: BenchContext) -> None:
        self._max = None

    async def sample(self, ctx: BenchContext) -> None:
        for url in _urls(ctx, self.kind):
            samples = await scrape([url])
            if any(name == self.gauge for name, _ in samples):
                self._max = max(self._max or 0.0, samples.total(self.gauge))

    async def after(self, ctx: BenchContext, seconds: float) -> dict[str, Any]:
        await self.sample(ctx)
        return {} if self._max is None else {self.name: round(self._max, 3)}


def _urls(ctx: BenchContext, kind: str) -> list[str]:
    """The processes of ``kind``; several kinds joined by ``+`` (``fe+gateway``)."""
    kinds = set(kind.split("+"))
    return [p.url for p in ctx.python_processes() if kind_of(p.name) in kinds]


def mean_ms(histogram: str, label: str) -> Show:
    """The mean of a seconds histogram over the run, in ms."""

    def show(delta: Samples, seconds: float) -> dict[str, Any]:
        count = delta.total(f"{histogram}_count")
        return {label: round(1000 * delta.total(f"{histogram}_sum") / count, 2)} if count else {}

    return show


def per_second(counter: str, label: str) -> Show:
    """A counter's growth per second over the run (nothing when it did not move)."""

    def show(delta: Samples, seconds: float) -> dict[str, Any]:
        grown = delta.total(counter)
        return {label: round(grown / seconds, 1)} if grown else {}

    return show


def cache_hit_ratio(delta: Samples, seconds: float) -> dict[str, Any]:
    """Reads answered from Redis over reads that asked it (shared/cache.py's events).

    Scraped from the gateways and the FE servers together: a gateway answers a hit itself
    and passes a miss on to an FE server, which counts the miss (or a hit, if filled since).
    """
    name = "medsvc_cache_events_total"
    hit = delta.total(name, event="hit")
    asked = hit + delta.total(name, event="miss") + delta.total(name, event="timeout")
    bypass = delta.total(name, event="bypass")
    out: dict[str, Any] = {}
    if asked:
        out["cache hit ratio"] = round(hit / asked, 3)
    if bypass:
        out["cache bypassed reads"] = int(bypass)
    return out


def default_probes() -> list[Probe]:
    """The probes every ``make bench`` runs (each decides which scenarios it applies to)."""
    return [
        # Every 201 is a committed row: the database must have grown by as much.
        SqlRate("visits committed/s", "SELECT count(*) FROM visits", shard_dsns, writes_only=True),
        # Where the time of a request goes: inside the FE handler, the gateway's wait for the
        # FE (upstream), the whole gateway; wrk's mean is the end-to-end figure.
        PromDelta("cache", "fe+gateway", cache_hit_ratio),
        PromDelta(
            "fe", "fe", mean_ms("medsvc_http_request_duration_seconds", "FE handler mean ms")
        ),
        PromDelta("gateway", "gateway",
                  mean_ms("medsvc_http_request_duration_seconds", "gateway mean ms"),
                  mean_ms("medsvc_gateway_upstream_duration_seconds", "gateway→FE mean ms")),
        # The audit trail under writes (fe_server/outbox.py, audit_service): how fast events reach
        # the audit store, how long they wait, how far the outbox falls behind.
        PromDelta("relay", "fe",
                  per_second("medsvc_audit_outbox_shipped_total", "audit events shipped/s"),
                  mean_ms("medsvc_audit_outbox_lag_seconds", "outbox lag mean ms"),
                  writes_only=True),
        SqlRate("audit events stored/s", "SELECT count(*) FROM audit_events", audit_dsn,
                writes_only=True),
        SqlMax("outbox backlog max", "SELECT count(*) FROM audit_outbox", shard_dsns,
               writes_only=True),
        SqlMax("outbox oldest age max s",
               "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(occurred_at)), 0) "
               "FROM audit_outbox", shard_dsns, writes_only=True),
    ]  # fmt: skip
