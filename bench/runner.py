"""One ``make bench`` run, start to finish.

1. Make the data set (deterministic) and the files of targets wrk picks from.
2. Baseline: start ``bench.hello`` alone, warm it up, measure it with the GET-user script.
3. Start the whole stack (``deploy.localstack.Stack``) in a temporary folder on free ports,
   PostgreSQL durable as in production (``fast=False``); seed it over SQL.
4. For each variant (scenarios.py), each scenario: a warm-up run, then the measured run,
   with the CPU of every component, the memory of every Python process and the probes
   (probes.py) read around and during it.
5. Stop everything, remove the folder (``--keep`` keeps it, with every process's log).

Each run goes through nginx on the stack's HTTP port with an admin token, exactly as a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import platform
import random
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import overload
from bench.loadgen import Load, LoadResult, WrkRun
from bench.probes import Probe, close_connections, default_probes, scalars
from bench.procstat import Component, CpuMeter, MemoryMeter, kind_of
from bench.report import RESULTS_DIR, Measurement, Report, Row
from bench.scenarios import (
    DEFAULT_SCENARIOS,
    DEFAULT_VARIANTS,
    HELLO,
    SCENARIOS,
    STEPS,
    VARIANTS,
    Scenario,
    Variant,
)  # fmt: skip
from bench.seed import Dataset, load_dataset, make_dataset
from deploy.localstack import Stack, StackConfig, binaries
from deploy.localstack.ports import is_free
from deploy.localstack.procs import ManagedProcess
from deploy.localstack.service import ServiceProcess
from shared.auth import make_token

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
_SAMPLE_EVERY = 0.5
# Cores busy outside the stack below which the machine counts as quiet.
_QUIET = 0.15
# Where the stack's and the baseline's ports come from: below Linux's ephemeral range.
_PORTS_LOW, _PORTS_HIGH = 20_000, 32_000
# Seconds without any event leaving the outbox after which the drain stops waiting.
_DRAIN_STALL = 15.0
# nginx's per-client-address rate limit, set explicitly far above anything wrk sends from
# its one address: the benchmark measures the stack, and overload, not the rate limit.
BENCH_RATE = 1_000_000
BENCH_BURST = 1_000_000


@dataclass
class Options:
    """Everything a run can be told (``python -m bench --help``)."""

    load: Load = field(default_factory=Load)
    warmup: float = 3.0
    users: int = 10_000
    visits: int = 50_000
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    shards: int = 2
    fe_per_shard: int = 2
    gateways: int = 2
    nginx_workers: int | str = 1
    seed: int = 1
    jwt_secret: str = "local-dev-secret"
    base_dir: Path | None = None
    keep: bool = False
    results_dir: Path | None = RESULTS_DIR
    # Seconds to wait for the seed's audit events to leave the outbox before measuring.
    drain_timeout: float = 120.0
    # Seconds, in all, to wait for other programs to leave the CPU before measured runs.
    quiet_budget: float = 60.0
    # "main" (hello-world, scenarios, variants, steps) and/or "overload" (overload.py).
    parts: tuple[str, ...] = ("main", "overload")
    # The steps (scenarios.STEPS, by function name) the main part runs after the scenarios.
    steps: tuple[str, ...] = tuple(step.__name__ for step in STEPS)
    # Measure the hello-world again right before each scenario and quote that scenario's
    # ratio to it (steadier ratios on a machine whose load drifts during the run).
    hello_each: bool = False
    # Further PostgreSQL settings ("name=value") for every cluster of the stack.
    pg_settings: tuple[str, ...] = ()
    overload_duration: float = 5.0
    overload_passes: int = 3
    overload_paths: tuple[str, ...] = tuple(p[0] for p in overload.PATHS)
    overload_connections: tuple[int, ...] = overload.CONNECTIONS
    overload_clients: tuple[str, ...] = overload.CLIENTS


@dataclass
class BenchContext:
    """What scenarios, probes and later steps can reach while the stack runs."""

    options: Options
    stack: Stack
    data: Dataset
    users_file: Path
    visits_file: Path
    token: str
    report: Report
    memory: MemoryMeter
    gate: QuietGate
    probes: list[Probe]

    def wrk_args(self) -> list[str]:
        return [str(self.users_file), self.token, str(self.options.seed), str(self.visits_file)]

    def python_processes(self) -> list[ServiceProcess]:
        return [p for p in self.stack.processes() if isinstance(p, ServiceProcess)]

    def components(self) -> list[Component]:
        return list(components_of(self.stack.processes()))


def components_of(procs: Iterator[ManagedProcess] | list[ManagedProcess]) -> Iterator[Component]:
    for p in procs:
        if p.pid is not None:
            yield Component(p.name, kind_of(p.name), p.pid, python=isinstance(p, ServiceProcess))


class QuietGate:
    """Waits, within a budget for the whole run, until nothing outside the stack uses the CPU.

    On a shared machine (CI runners, several people's test suites) another program's burst
    would halve a figure; a few seconds of waiting usually avoids it. Each check takes one
    second; when the budget is spent the run goes on and the report flags busy runs.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget

    async def wait(self, components: list[Component]) -> None:
        while True:
            meter = CpuMeter(components)
            meter.start()
            started = time.monotonic()
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - started
            other = meter.stop(elapsed).get("other", 0.0)
            if other < _QUIET or self.budget <= 0:
                return
            self.budget -= elapsed
            log.info("waiting for the machine to be quiet: %.2f cores busy elsewhere", other)


async def measure(
    title: str,
    key: str,
    scenario: Scenario,
    base_url: str,
    args: list[str],
    load: Load,
    warmup: float,
    components: list[Component],
    memory: MemoryMeter,
    gate: QuietGate,
    probes: list[Probe] = (),
    ctx: BenchContext | None = None,  # type: ignore[assignment]
    baseline: str | None = HELLO.key,
) -> Row:
    """Warm up, then one measured wrk run with CPU, memory and probes read around it."""
    if warmup > 0:
        warm = await _wrk(base_url, scenario.script, args, load, warmup)
        if warm.non_2xx or warm.socket_errors:
            log.warning("%s warm-up: %d non-2xx, %d socket errors %s", title, warm.non_2xx,
                        warm.socket_errors, warm.statuses)  # fmt: skip
    await gate.wait(components)
    probes = [p for p in probes if p.applies(scenario)]
    for p in probes:
        await p.before(ctx)  # type: ignore[arg-type]
    run = WrkRun(base_url, scenario.script, args, load, load.duration)
    meter = CpuMeter(components)
    meter.start()
    started = time.monotonic()
    await run.start()
    result_task = asyncio.ensure_future(run.result())
    while True:
        memory.sample(components)
        for p in probes:
            await p.sample(ctx)  # type: ignore[arg-type]
        done, _ = await asyncio.wait({result_task}, timeout=_SAMPLE_EVERY)
        if done:
            break
    result: LoadResult = result_task.result()
    cpu = meter.stop(time.monotonic() - started)
    extra: dict[str, object] = {}
    for p in probes:
        extra |= await p.after(ctx, result.seconds)  # type: ignore[arg-type]
    row = Row(
        key=key, title=title, rate=result.rate, p50_ms=result.percentile_ms("50"),
        p99_ms=result.percentile_ms("99"), non_2xx=result.non_2xx,
        socket_errors=result.socket_errors, requests=result.requests, seconds=result.seconds,
        baseline=None if scenario is HELLO else baseline, target=scenario.target,
        p99_target_ms=scenario.p99_target_ms, statuses=result.statuses,
        latency_us=result.latency_us, cpu_cores=cpu, extra=extra,
    )  # fmt: skip
    log.info("%-34s %9.0f req/s  p50 %6.2f ms  p99 %6.2f ms  non-2xx %d  errors %d",
             title, row.rate, row.p50_ms, row.p99_ms, row.non_2xx, row.socket_errors)  # fmt: skip
    return row


async def _wrk(
    base_url: str, script: str, args: list[str], load: Load, seconds: float
) -> LoadResult:
    run = WrkRun(base_url, script, args, load, seconds)
    await run.start()
    return await run.result()


async def measure_hello(
    opts: Options, args: list[str], logs: Path, memory: MemoryMeter, gate: QuietGate,
    key: str = HELLO.key, title: str = HELLO.title,
) -> Row:  # fmt: skip
    """The baseline: ``python -m bench.hello`` alone on the machine, same load."""
    hello = ServiceProcess("hello", "bench.hello", _hello_port(), logs / "hello.log", cwd=REPO)
    await hello.start()
    try:
        return await measure(
            title, key, HELLO, hello.url, args, opts.load, opts.warmup,
            list(components_of([hello])), memory, gate,
        )  # fmt: skip
    finally:
        memory.sample(components_of([hello]))
        await hello.stop()


async def drain_outbox(stack: Stack, report: Report, timeout: float) -> None:
    """Wait until the audit events of the seed have left every shard's outbox.

    The seed's rows fire the audit triggers like any write, so the relays start with a
    backlog of one event per row. Measuring while they ship it would charge that work to
    whichever scenario runs first; draining it first also measures the relays' top speed.
    """
    dsns = [s.postgres for s in stack.shard_map.shards]
    query = "SELECT count(*) FROM audit_outbox"
    counts = await scalars(dsns, query)
    if counts is None or not sum(counts):
        return
    start_backlog, started = sum(counts), time.monotonic()
    log.info("waiting for %d seeded audit events to leave the outbox", start_backlog)
    left, progress_at = start_backlog, started
    while left and time.monotonic() - started < timeout:
        await asyncio.sleep(0.5)
        now_left = sum(await scalars(dsns, query) or [0])
        if now_left < left:
            progress_at = time.monotonic()
        elif time.monotonic() - progress_at > _DRAIN_STALL:
            break  # no relay is shipping (audit_service down?): waiting longer will not help
        left = now_left
    seconds = time.monotonic() - started
    shipped = start_backlog - left
    report.measurements.append(Measurement(
        "audit ingest, seed backlog", shipped / seconds, "events/s",
        f"{shipped:.0f} events from the outbox to audit_service in {seconds:.1f} s",
    ))  # fmt: skip
    if left:
        report.notes.append(
            f"{left:.0f} seeded audit events were still in the outbox after {seconds:.0f} s: "
            "the relays kept shipping them during the first runs, whose figures are lower for it."
        )
        log.warning("%d audit events still in the outbox; going on", left)


async def prewarm_cache(ctx: BenchContext, concurrency: int = 50) -> None:
    """GET every seeded user and visit list once, so that "cached" reads are cached.

    Without it the first minutes of uniform random reads over 10,000 patients would be
    mostly misses, and the cached rows would measure the fills instead.
    """
    names = ctx.data.user_names
    paths = [f"/v1/users/{u}" for u in names] + [f"/v1/users/{u}/visits" for u in names]
    todo = iter(paths)
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {ctx.token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)

    async def worker(session: aiohttp.ClientSession) -> None:
        for path in todo:
            async with session.get(ctx.stack.base_url + path, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    bad = {k: v for k, v in statuses.items() if not 200 <= k < 300}
    ctx.report.measurements.append(Measurement(
        "cache prewarm", len(paths) / seconds, "req/s",
        f"{len(paths)} GETs (every user and visit list) in {seconds:.1f} s"
        + (f"; non-2xx {bad}" if bad else ""),
    ))  # fmt: skip
    log.info(
        "cache filled: %d GETs in %.1f s%s", len(paths), seconds, f"; non-2xx {bad}" if bad else ""
    )


async def apply_variant(
    stack: Stack, base_env: dict[str, dict[str, str]], variant: Variant
) -> None:
    """Give the Python processes the variant's environment; restart them if it changed.

    FE servers first, then the gateways (fresh pools to the new FE servers), then an nginx
    reload (fresh upstream connections and no failure marks from the restart).
    """
    changed = False
    for tier in (stack.tiers()[1], stack.tiers()[2], stack.tiers()[3]):
        wanted = {
            p.name: {
                **base_env[p.name],
                **(variant.env if kind_of(p.name) in variant.kinds else {}),
            }
            for p in tier
        }
        moved = [p for p in tier if p.env != wanted[p.name]]
        for p in moved:
            p.env = wanted[p.name]
        if moved:
            changed = True
            log.info("variant %s: restarting %s", variant.key, ", ".join(p.name for p in moved))
            await asyncio.gather(*(p.restart() for p in moved))
    if changed:
        await stack.nginx.reload()
        await asyncio.sleep(1.0)


async def run(opts: Options) -> Report:
    """Run the whole benchmark and return its report (saved when ``results_dir`` is set)."""
    _raise_open_file_limit()
    report = Report(started_at=dt.datetime.now(dt.UTC).replace(microsecond=0))
    base = opts.base_dir or Path(tempfile.mkdtemp(prefix="medsvc-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # PostgreSQL may run as another account and must get in
    stack = _make_stack(opts, base)
    report.meta = _meta(opts, stack)
    data = make_dataset(stack.shard_map, opts.users, opts.visits, opts.seed)
    users_file, visits_file = data.write_target_files(base / "bench")
    token = make_token(opts.jwt_secret, "bench.admin", ["admin"])
    memory = MemoryMeter()
    gate = QuietGate(opts.quiet_budget)
    args = [str(users_file), token, str(opts.seed), str(visits_file)]
    ok = False
    try:
        if "main" in opts.parts:
            log.info("baseline: hello-world, %s", report.meta["load"])
            report.add(await measure_hello(opts, args, stack.logs_dir, memory, gate))
        log.info("starting the stack in %s", base)
        t0 = time.perf_counter()
        await stack.start()
        report.measurements.append(Measurement("stack start-up", time.perf_counter() - t0, "s"))
        seconds = await load_dataset(stack.shard_map, data)
        rows = opts.users + opts.visits
        report.measurements.append(Measurement(
            "seed (COPY)", rows / seconds, "rows/s",
            f"{opts.users} users + {opts.visits} visits in {seconds:.1f} s",
        ))  # fmt: skip
        log.info("seeded %d users and %d visits in %.1f s", opts.users, opts.visits, seconds)
        await drain_outbox(stack, report, opts.drain_timeout)
        ctx = BenchContext(opts, stack, data, users_file, visits_file, token, report, memory,
                           gate, default_probes())  # fmt: skip
        base_env = {p.name: dict(p.env or {}) for tier in stack.tiers()[1:4] for p in tier}
        if "main" in opts.parts:
            await run_variants(ctx)
            for step in (s for s in STEPS if s.__name__ in opts.steps):
                for item in await step(ctx):
                    if isinstance(item, Row):
                        report.add(item)
                    else:
                        report.measurements.append(item)
        if "overload" in opts.parts:
            await run_overload(ctx, base_env)
        memory.sample(ctx.components())
        report.memory = memory.by_kind()
        ok = True
    finally:
        await close_connections()
        await stack.stop()
        if opts.keep or not ok:
            log.warning("stack folder kept: %s (logs in %s)", base, stack.logs_dir)
        elif opts.base_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    if opts.results_dir is not None:
        md, js = report.save(opts.results_dir)
        log.info("saved %s and %s", md, js)
    return report


async def run_overload(ctx: BenchContext, base_env: dict[str, dict[str, str]]) -> None:
    """The overload table (overload.py), on the stack as it started, cache filled."""
    await apply_variant(ctx.stack, base_env, VARIANTS["default"])
    await prewarm_cache(ctx)
    rows = await overload.overload(ctx)
    path_warmup = (f"each path after {overload.PATH_WARMUP:g} s unmeasured at its fewest "
                   "connections, " if ctx.options.warmup > 0 else "")  # fmt: skip
    ctx.report.tables["Overload (through nginx, rate limit off)"] = (
        overload.markdown(rows)
        + ["", f"wrk {ctx.options.load.threads} thread(s), {ctx.options.overload_duration:g} s "
           f"per run, {path_warmup}{ctx.options.overload_passes} passes, each in the order "
           f"{', '.join(str(c) for c in overload.schedule(ctx.options.overload_connections))} "
           "(each level's goodput is the median of its runs, its latencies those of every "
           f"run's 2xx, its counts summed), timeout {overload.TIMEOUT:g} s. p50/p99/max of the "
           "2xx from nginx's access log (ms resolution); goodput \"vs first\" is the median over "
           "the passes of the level's goodput over the mean of the two runs of the path's fewest "
           "connections right before and after it, same clients; p99 \"vs first\" compares the "
           "pooled p99s; Retry-After: honour = each 503 or 429 "
           "makes one connection wait its Retry-After, ignore = wrk resends at once; "
           "shed 503 = 503 with Retry-After; other 5xx includes 503s without it. "
           "Listen overflows are machine-wide (TcpExtListenOverflows)."],
        overload.as_json(rows),
    )  # fmt: skip
    ctx.report.tables["Overload: cores busy per component"] = (overload.cpu_markdown(rows), None)


async def run_variants(ctx: BenchContext) -> None:
    """Every selected variant × scenario, as rows of the report."""
    stack = ctx.stack
    base_env = {p.name: dict(p.env or {}) for tier in stack.tiers()[1:4] for p in tier}
    for vkey in ctx.options.variants:
        variant = VARIANTS[vkey]
        await apply_variant(stack, base_env, variant)
        keys = [
            k for k in ctx.options.scenarios if variant.scenarios is None or k in variant.scenarios
        ]
        warmed = not variant.prewarm
        for skey in keys:
            for proc in stack.processes():
                proc.check_alive()  # a figure from a stack missing a process means nothing
            scenario = SCENARIOS[skey]
            if scenario.cached_reads and not warmed:
                await prewarm_cache(ctx)
                warmed = True
            key = skey if variant.key == "default" else f"{skey}@{variant.key}"
            title = scenario.title + (f" ({variant.label})" if variant.label else "")
            baseline = HELLO.key
            if ctx.options.hello_each:
                baseline = f"{HELLO.key}@{key}"
                ctx.report.add(await measure_hello(
                    ctx.options, ctx.wrk_args(), stack.logs_dir, ctx.memory, ctx.gate,
                    key=baseline, title=f"hello-world (before {title})",
                ))  # fmt: skip
            ctx.report.add(await measure(
                title, key, scenario, stack.base_url, ctx.wrk_args(), ctx.options.load,
                ctx.options.warmup, ctx.components(), ctx.memory, ctx.gate, ctx.probes, ctx,
                baseline,
            ))  # fmt: skip


def _make_stack(opts: Options, base: Path) -> Stack:
    """The stack on consecutive ports from a random base below the ephemeral range.

    Ports the kernel picks as free (``bind(0)``) come from the range it also gives client
    connections; between the pick and the server's bind, one of wrk's or a test's thousands
    of connections can take the port. Below 32768 nothing takes a port by chance, and a
    base already used (another stack) is simply tried again elsewhere.
    """
    rng = random.Random()
    for _ in range(20):
        port_base = rng.randrange(_PORTS_LOW, _PORTS_HIGH, 100)
        try:
            return Stack(StackConfig(
                base_dir=base, shards=opts.shards, fe_per_shard=opts.fe_per_shard,
                gateways=opts.gateways, http_port=0, https_port=0, internal_port_base=port_base,
                fast=False, nginx_workers=opts.nginx_workers, jwt_secret=opts.jwt_secret,
                rate=BENCH_RATE, burst=BENCH_BURST, pg_settings=opts.pg_settings,
            ))  # fmt: skip
        except OSError as exc:
            log.info("ports from %d: %s; trying others", port_base, exc)
    raise OSError("no free block of ports found for the stack")


def _hello_port() -> int:
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(_PORTS_LOW, _PORTS_HIGH)
        if is_free(port):
            return port
    raise OSError("no free port found for the hello-world")


def _raise_open_file_limit() -> None:
    # nginx, PostgreSQL and the services under load want more than the usual 1024 files.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return "?"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def _meta(opts: Options, stack: Stack) -> dict[str, object]:
    load = opts.load
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine())  # fmt: skip
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "commit": _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "machine": f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB, Linux {platform.release()}",
        "load": f"wrk {load.threads} thread(s), {load.connections} connections, "
        f"{load.duration:g} s per run after a {opts.warmup:g} s warm-up",
        "stack": f"{opts.shards} shards × {opts.fe_per_shard} FE servers, {opts.gateways} "
        f"gateways, nginx ({opts.nginx_workers} worker), PostgreSQL durable (fsync on), "
        "Redis per shard"
        + (f"; PostgreSQL settings {', '.join(opts.pg_settings)}" if opts.pg_settings else ""),
        "data": f"{opts.users} users, {opts.visits} visits (seed {opts.seed})",
        "versions": {
            "python": platform.python_version(),
            "wrk": _first_line(["wrk", "--version"]),
            "nginx": _first_line([binaries.nginx(), "-v"]),
            "postgres": _first_line([binaries.pg_bin("postgres"), "--version"]),
            "redis": _first_line([binaries.redis_server(), "--version"]),
        },
        "options": {k: str(v) for k, v in vars(opts).items()},
    }
