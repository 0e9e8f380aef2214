"""Probes: what else to measure while a scenario runs, beside wrk's own figures.

A probe is asked :meth:`Probe.before` a measured run, :meth:`Probe.sample` about twice a
second during it, and :meth:`Probe.after` it; what ``after`` returns lands in the row's
``extra`` (shown under "Other measurements" and kept in the JSON). Later work adds a probe
with one line in :func:`default_probes`, for example::

    # issue 4: outbox lag (seconds) sampled on every shard during write runs
    SqlMax("outbox lag max s", "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) "
           "FROM audit_outbox", shard_dsns, writes_only=True),
    # issue 4: audit ingest rate
    SqlRate("audit events ingested/s", "SELECT count(*) FROM audit_events", central_dsn),
    # issue 3: cache hit ratio on the FE servers
    PromRatio("cache hit ratio", "fe", "medsvc_cache_hits_total", "medsvc_cache_misses_total"),
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from bench.runner import BenchContext
    from bench.scenarios import Scenario

DsnSource = Callable[["BenchContext"], Sequence[str]]


def shard_dsns(ctx: BenchContext) -> list[str]:
    """Every shard's PostgreSQL."""
    return [s.postgres for s in ctx.stack.shard_map.shards]


def central_dsn(ctx: BenchContext) -> list[str]:
    """The central PostgreSQL (audit store, study registry)."""
    return [ctx.stack.central_dsn]


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


async def _scalars(dsns: Sequence[str], sql: str) -> list[float]:
    async def one(dsn: str) -> float:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return float(await conn.fetchval(sql) or 0)
        finally:
            await conn.close()

    return list(await asyncio.gather(*(one(d) for d in dsns)))


class SqlRate(_Base):
    """Growth per second of a count summed over some databases (``SELECT count(*) ...``)."""

    def __init__(self, name: str, sql: str, dsns: DsnSource, *, writes_only: bool = False) -> None:
        self.name, self.sql, self.dsns, self.writes_only = name, sql, dsns, writes_only
        self._before = 0.0

    async def before(self, ctx: BenchContext) -> None:
        self._before = sum(await _scalars(self.dsns(ctx), self.sql))

    async def after(self, ctx: BenchContext, seconds: float) -> dict[str, Any]:
        grown = sum(await _scalars(self.dsns(ctx), self.sql)) - self._before
        return {self.name: round(grown / seconds, 1)}


class SqlMax(_Base):
    """The largest value a scalar query returned on any database while the run lasted."""

    def __init__(self, name: str, sql: str, dsns: DsnSource, *, writes_only: bool = False) -> None:
        self.name, self.sql, self.dsns, self.writes_only = name, sql, dsns, writes_only
        self._max = 0.0

    async def before(self, ctx: BenchContext) -> None:
        self._max = 0.0

    async def sample(self, ctx: BenchContext) -> None:
        self._max = max(self._max, *await _scalars(self.dsns(ctx), self.sql))

    async def after(self, ctx: BenchContext, seconds: float) -> dict[str, Any]:
        await self.sample(ctx)
        return {self.name: round(self._max, 3)}


async def scrape(urls: Sequence[str]) -> dict[str, float]:
    """Sum every sample of every ``/metrics`` page by sample name (labels summed away)."""
    totals: dict[str, float] = {}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in urls:
            async with session.get(url + "/metrics") as resp:
                text = await resp.text()
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    totals[s.name] = totals.get(s.name, 0.0) + s.value
    return totals


class PromDelta(_Base):
    """Counters of one process kind (``fe``, ``gateway``) over the run, combined by ``show``.

    ``show`` gets the per-sample-name deltas and returns the figures to report; e.g. a mean
    from a histogram's ``_sum`` and ``_count``.
    """

    def __init__(
        self, name: str, kind: str, show: Callable[[dict[str, float]], dict[str, Any]]
    ) -> None:
        self.name, self.kind, self.show = name, kind, show
        self._before: dict[str, float] = {}

    def _urls(self, ctx: BenchContext) -> list[str]:
        return [p.url for p in ctx.python_processes() if p.name.split("-")[0] == self.kind]

    async def before(self, ctx: BenchContext) -> None:
        self._before = await scrape(self._urls(ctx))

    async def after(self, ctx: BenchContext, seconds: float) -> dict[str, Any]:
        now = await scrape(self._urls(ctx))
        return self.show({k: v - self._before.get(k, 0.0) for k, v in now.items()})


def mean_ms(histogram: str, label: str) -> Callable[[dict[str, float]], dict[str, Any]]:
    """``show`` for :class:`PromDelta`: the mean of a seconds histogram over the run, in ms."""

    def show(delta: dict[str, float]) -> dict[str, Any]:
        count = delta.get(f"{histogram}_count", 0.0)
        return {label: round(1000 * delta.get(f"{histogram}_sum", 0.0) / count, 2)} if count else {}

    return show


def ratio(name: str, hits: str, misses: str) -> Callable[[dict[str, float]], dict[str, Any]]:
    """``show`` for :class:`PromDelta`: hits / (hits + misses) over the run."""

    def show(delta: dict[str, float]) -> dict[str, Any]:
        h, m = delta.get(hits, 0.0), delta.get(misses, 0.0)
        return {name: round(h / (h + m), 3)} if h + m else {}

    return show


def default_probes() -> list[Probe]:
    """The probes every ``make bench`` runs (each decides which scenarios it applies to)."""
    return [
        # Every 201 is a committed row: the database must have grown by as much.
        SqlRate("visits committed/s", "SELECT count(*) FROM visits", shard_dsns, writes_only=True),
        # Where the time of a request goes: inside the FE handler, the gateway's wait for the
        # FE (upstream), the whole gateway; wrk's mean is the end-to-end figure.
        PromDelta("fe time", "fe", mean_ms("medsvc_http_request_duration_seconds", "FE handler mean ms")),
        PromDelta("gateway time", "gateway", _gateway_times),
    ]


def _gateway_times(delta: dict[str, float]) -> dict[str, Any]:
    out = mean_ms("medsvc_http_request_duration_seconds", "gateway mean ms")(delta)
    out |= mean_ms("medsvc_gateway_upstream_duration_seconds", "gateway→FE mean ms")(delta)
    return out
