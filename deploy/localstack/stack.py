"""The whole local topology as supervised processes: what ``make run`` and the e2e tests use.

Start order, one tier at a time, each tier healthy before the next::

    data servers   PostgreSQL per shard + "central" (audit, anonymizer); Redis per shard
    shard map      written to <base>/shardmap.json (every process reads it)
    central        CENTRAL_SERVICES (audit_service, anonymizer, ...)
    FE servers     fe_per_shard per shard, each hosting ``fe_services``
    gateways       ``gateways`` processes
    nginx          HTTP and HTTPS in front of the gateways
    prometheus     (``prometheus=True``) scraping every Python process, with the alert rules

:meth:`Stack.stop` goes back down in reverse. Within a tier the processes start and stop
concurrently. Handles to every process let a test kill and restart any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import sys
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.prometheus.config import Target
from shared.shardmap import (
    DEFAULT_BUCKETS,
    Shard,
    ShardMap,
    even_ranges,
    load_shard_map,
    ranges_of,
    write_shard_map,
)  # fmt: skip

from .audit_keys import AuditKeyFiles
from .certs import ensure_cert
from .nginx import DEFAULT_BURST, DEFAULT_RATE, NginxConfig, NginxServer, gateway_bounds
from .ports import PortAllocator
from .postgres import ClusterTemplate, PostgresServer, server_account
from .procs import ManagedProcess
from .prometheus import PrometheusServer
from .redis_server import RedisServer
from .service import ServiceProcess, ServiceSpec
from .tokens import DEFAULT_TTL, make_token

log = logging.getLogger("localstack")

DEFAULT_JWT_SECRET = "local-dev-secret"
# The Python services run from the repository root (``python -m <package>`` finds it there).
REPO_ROOT = Path(__file__).resolve().parents[2]

# The central services, started after the data servers and before the FE servers, each
# `python -m <module> --port P` with MEDSVC_CENTRAL_DSN set. Adding one is one line, e.g.
#   ServiceSpec("audit", "audit_service", replicas=2, urls_env="MEDSVC_AUDIT_URLS"),
#   ServiceSpec("anonymizer", "anonymizer", urls_env="MEDSVC_ANONYMIZER_URLS"),
# audit_service keeps its store in the database "audit" of the central server.
CENTRAL_SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("audit", "audit_service", replicas=2, urls_env="MEDSVC_AUDIT_URLS"),
    # The anonymizer (database "anonymizer"): the studies API, and the cron scheduler.
    ServiceSpec("anonymizer", "anonymizer", args=("serve",), urls_env="MEDSVC_ANONYMIZER_URLS"),
    ServiceSpec("anonymizer-scheduler", "anonymizer", args=("schedule",)),
)


@dataclass
class StackConfig:
    """How big the stack is and where it lives. Port 0 means "any free port"."""

    base_dir: Path
    shards: int = 2
    fe_per_shard: int = 2
    gateways: int = 2
    fe_services: str = "user,visit"
    http_port: int = 8080
    https_port: int = 8443
    # nginx's own /healthz (0: any free port, or the next of internal_port_base).
    nginx_ops_port: int = 0
    # Run Prometheus over the stack (`make run` does; the tests start their own when needed).
    prometheus: bool = False
    # None: every internal port is a free one; a number: consecutive ports from there.
    internal_port_base: int | None = None
    # fsync=off and friends for PostgreSQL: for tests.
    fast: bool = False
    # Further PostgreSQL settings ("name=value") for every cluster: a benchmark's
    # pg_stat_statements or commit_delay; none by default.
    pg_settings: Sequence[str] = ()
    rate: int = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    nginx_workers: int | str = 1
    buckets: int = DEFAULT_BUCKETS
    jwt_secret: str = DEFAULT_JWT_SECRET
    services: Sequence[ServiceSpec] = CENTRAL_SERVICES
    # Added to every Python process's environment (after the stack's own variables).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable
    # Start from the shard map a previous run left in base_dir (its shards and their
    # buckets), as `make run` does; the tests start from a fresh even split.
    keep_map: bool = False


class Stack:
    """Every process of the local topology, and the files they share.

    Everything is laid out (ports chosen, handles made) when the object is built; nothing
    runs until :meth:`start`. Use ``async with Stack(cfg) as stack:`` or start/stop.
    """

    def __init__(self, config: StackConfig) -> None:
        self.config = cfg = config
        self.base_dir = base = Path(cfg.base_dir).resolve()
        self.logs_dir = base / "logs"
        self.shard_map_path = base / "shardmap.json"
        self._ports = ports = PortAllocator(cfg.internal_port_base)
        account = server_account()
        self._account = account
        self._template = ClusterTemplate(base / "pg" / ".template", account)
        # A map left by an earlier `make run` (shards added, buckets moved) is kept: the shard
        # databases own what it says, and a fresh even split would contradict them.
        self._previous_map = _read_map(self.shard_map_path) if cfg.keep_map else None
        n_shards = max(cfg.shards, len(self._previous_map.shards) if self._previous_map else 0)
        self.postgres: dict[int, PostgresServer] = {}
        self.redis: dict[int, RedisServer] = {}
        self.fe: dict[int, list[ServiceProcess]] = {}
        for i in range(n_shards):
            self.postgres[i] = self._pg(f"shard-{i}")
        self.central_postgres = self._pg("central")
        for i in range(n_shards):
            self.redis[i] = self._redis(i)

        self.services: dict[str, list[ServiceProcess]] = {
            spec.name: [
                self._py(f"{spec.name}-{r}", spec.module, spec.args) for r in range(spec.replicas)
            ]
            for spec in cfg.services
        }
        for i in range(n_shards):
            self.fe[i] = self._fe_servers(i)
        self.gateways: list[ServiceProcess] = [
            self._py(f"gateway-{g}", "gateway") for g in range(cfg.gateways)
        ]
        self.cert_path = base / "certs" / "localhost.crt"
        self.key_path = base / "certs" / "localhost.key"
        self.nginx = NginxServer(
            NginxConfig(
                run_dir=base / "nginx",
                logs_dir=self.logs_dir,
                name="nginx",
                http_port=ports.take(cfg.http_port),
                https_port=ports.take(cfg.https_port),
                ops_port=ports.take(cfg.nginx_ops_port),
                cert=self.cert_path,
                key=self.key_path,
                gateways=[f"127.0.0.1:{g.port}" for g in self.gateways],
                rate=cfg.rate,
                burst=cfg.burst,
                worker_processes=cfg.nginx_workers,
                **gateway_bounds({**os.environ, **cfg.extra_env}),
            )
        )
        self.shard_map = self._build_shard_map()
        self.prometheus: PrometheusServer | None = None
        if cfg.prometheus:
            self.prometheus = PrometheusServer(
                "prometheus",
                base / "prometheus",
                ports.take(),
                self.logs_dir / "prometheus.log",
                self.scrape_targets(),
            )
        # The audit checkpoint signer's key and log, outside the databases (audit_keys.py).
        self.audit_keys = AuditKeyFiles(base / "audit")
        self._add_lock = asyncio.Lock()

    # -- laying out processes -----------------------------------------------------------

    def _pg(self, name: str) -> PostgresServer:
        return PostgresServer(
            f"postgres-{name}", self.base_dir / "pg" / name, self._ports.take(),
            self.logs_dir / f"postgres-{name}.log", fast=self.config.fast,
            template=self._template, account=self._account, settings=self.config.pg_settings,
        )  # fmt: skip

    def _redis(self, i: int) -> RedisServer:
        return RedisServer(
            f"redis-shard-{i}", self.base_dir / "redis" / f"shard-{i}", self._ports.take(),
            self.logs_dir / f"redis-shard-{i}.log",
        )  # fmt: skip

    def _py(self, name: str, module: str, args: Sequence[str] = ()) -> ServiceProcess:
        return ServiceProcess(
            name, module, self._ports.take(), self.logs_dir / f"{name}.log", args=args,
            cwd=REPO_ROOT, python=self.config.python,
        )  # fmt: skip

    def _fe_servers(self, i: int) -> list[ServiceProcess]:
        return [
            self._py(f"fe-shard-{i}-{m}", "fe_server",
                     ["--shard", str(i), "--services", self.config.fe_services])
            for m in range(self.config.fe_per_shard)
        ]  # fmt: skip

    def _shard_entry(self, i: int, buckets: list[tuple[int, int]], members: bool = True) -> Shard:
        urls = [fe.url for fe in self.fe[i]]
        return Shard(
            id=i, buckets=buckets, postgres=self.postgres[i].dsn, redis=self.redis[i].url,
            members=(
                {svc: urls for svc in self.config.fe_services.split(",") if svc} if members else {}
            ),
        )  # fmt: skip

    async def add_shard(self) -> int:
        """Start a new shard (PostgreSQL, Redis, FE servers) owning no bucket; return its id.

        The running processes learn of it from the map file, in two versions: first the shard
        without FE members (its FE servers read the map at start and seed their database's
        ownership from it: every bucket someone else's), then with them, once they answer, so
        that no gateway sends a search to a shard that cannot answer yet.
        """
        async with self._add_lock:
            new_id = max(self.postgres) + 1
            self.postgres[new_id] = self._pg(f"shard-{new_id}")
            self.redis[new_id] = self._redis(new_id)
            self.fe[new_id] = self._fe_servers(new_id)
            await _all(p.start() for p in (self.postgres[new_id], self.redis[new_id]))
            current = load_shard_map(self.shard_map_path)
            staged = current.with_shard(self._shard_entry(new_id, [], members=False))
            write_shard_map(self.shard_map_path, staged)
            env = self.python_env()
            for proc in self.fe[new_id]:
                proc.env = env
            await _all(p.start() for p in self.fe[new_id])
            shards = [s for s in staged.shards if s.id != new_id]
            final = ShardMap(
                version=staged.version + 1, buckets=staged.buckets,
                shards=[*shards, self._shard_entry(new_id, [])],
            )  # fmt: skip
            write_shard_map(self.shard_map_path, final)
            self.shard_map = final
            log.info("shard %s added (map version %s)", new_id, final.version)
            return new_id

    # -- what the tests and the CLI read --------------------------------------------------

    @property
    def base_url(self) -> str:
        """The load balancer over plain HTTP."""
        return self.nginx.base_url

    @property
    def https_url(self) -> str:
        """The load balancer over TLS (self-signed: trust ``cert_path``)."""
        return self.nginx.https_url

    @property
    def central_dsn(self) -> str:
        """DSN of the central database (audit store, study registry)."""
        return self.central_postgres.dsn

    def token(self, sub: str, roles: str | Sequence[str], ttl: int = DEFAULT_TTL) -> str:
        """A bearer token for ``sub`` with ``roles``, signed with the stack's secret."""
        roles = [roles] if isinstance(roles, str) else list(roles)
        return make_token(self.config.jwt_secret, sub, roles, ttl)

    def scrape_targets(self) -> list[Target]:
        """Every Python process, labelled as its pod would be (deploy/prometheus/config.py)."""
        out = [Target(f"127.0.0.1:{g.port}", g.name, "gateway") for g in self.gateways]
        out += [
            Target(f"127.0.0.1:{fe.port}", fe.name, "fe", shard)
            for shard, fes in self.fe.items()
            for fe in fes
        ]
        out += [
            Target(f"127.0.0.1:{p.port}", p.name, name)
            for name, procs in self.services.items()
            for p in procs
        ]
        return out

    def tiers(self) -> list[list[ManagedProcess]]:
        """The processes, tier by tier, in start order."""
        tiers: list[list[ManagedProcess]] = [
            [*self.postgres.values(), self.central_postgres, *self.redis.values()],
            [p for procs in self.services.values() for p in procs],
            [p for procs in self.fe.values() for p in procs],
            list(self.gateways),
            [self.nginx],
        ]
        if self.prometheus is not None:
            tiers.append([self.prometheus])
        return tiers

    def processes(self) -> Iterator[ManagedProcess]:
        """Every process, in start order."""
        for tier in self.tiers():
            yield from tier

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring everything up, tier by tier; on failure stop what started and re-raise."""
        for d in (self.base_dir, self.base_dir / "pg"):
            d.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                d.chmod(0o755)  # PostgreSQL runs as another user and must get through
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        raise_open_file_limit()
        try:
            await ensure_cert(self.cert_path.parent)
            tiers = self.tiers()
            await _all(p.start() for p in tiers[0])
            write_shard_map(self.shard_map_path, self.shard_map)
            # Where the tools run beside the stack find it (resharder/settings.py reads this).
            (self.base_dir / "stack.env").write_text(
                f"MEDSVC_SHARD_MAP={self.shard_map_path}\nMEDSVC_CENTRAL_DSN={self.central_dsn}\n"
            )
            env = self.python_env()
            for tier in tiers[1:]:
                for proc in tier:
                    if isinstance(proc, ServiceProcess):
                        proc.env = env
            self.audit_keys.ensure()
            for proc in self.services.get("audit", []):
                proc.env = {**env, **self.audit_keys.env(), **self.config.extra_env}
            for tier in tiers[1:]:
                await _all(p.start() for p in tier)
        except BaseException:
            log.error("start-up failed; stopping what was started")
            await asyncio.shield(self.stop())
            raise
        log.info("stack up: %s and %s", self.base_url, self.https_url)

    async def stop(self) -> None:
        """Stop everything, front to back (nginx first, data servers last)."""
        for tier in reversed(self.tiers()):
            await asyncio.gather(*(p.stop() for p in tier), return_exceptions=True)

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- internals ------------------------------------------------------------------------

    def _build_shard_map(self) -> ShardMap:
        previous = self._previous_map
        if previous is not None:
            owners = previous.owners()
            return ShardMap(
                version=previous.version + 1, buckets=previous.buckets,
                shards=[self._shard_entry(i, ranges_of(owners, i)) for i in sorted(self.postgres)],
            )  # fmt: skip
        ranges = even_ranges(self.config.shards, self.config.buckets)
        return ShardMap(
            buckets=self.config.buckets,
            shards=[self._shard_entry(i, ranges[i]) for i in range(self.config.shards)],
        )

    def python_env(self) -> dict[str, str]:
        """The environment the stack's Python processes run with (the tools run beside it,
        such as the benchmarks' resharder and extraction, take the same)."""
        env = dict(os.environ)
        env.update(
            MEDSVC_SHARD_MAP=str(self.shard_map_path),
            MEDSVC_JWT_SECRET=self.config.jwt_secret,
            MEDSVC_ENV="development",
            MEDSVC_CENTRAL_DSN=self.central_dsn,
            PYTHONUNBUFFERED="1",
        )
        for spec in self.config.services:
            if spec.urls_env:
                env[spec.urls_env] = ",".join(p.url for p in self.services[spec.name])
        env.update(self.config.extra_env)
        return env


def _read_map(path: Path) -> ShardMap | None:
    try:
        return load_shard_map(path)
    except FileNotFoundError:
        return None


def raise_open_file_limit() -> None:
    """Raise this process's soft open-file limit to the hard one (children inherit it).

    nginx, PostgreSQL and the services under a benchmark want more than the usual 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _all(starts: Iterator[Awaitable[None]]) -> None:
    """Await every start; once all have settled, raise the first failure."""
    results = await asyncio.gather(*starts, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
