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
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import Load, LoadResult, WrkRun
from bench.probes import Probe, default_probes
from bench.procstat import Component, CpuMeter, MemoryMeter
from bench.report import RESULTS_DIR, Measurement, Report, Row
from bench.scenarios import HELLO, SCENARIOS, VARIANTS, Scenario, Variant
from bench.seed import Dataset, load_dataset, make_dataset
from deploy.localstack import Stack, StackConfig
from deploy.localstack.ports import free_port
from deploy.localstack.procs import ManagedProcess
from deploy.localstack.service import ServiceProcess
from shared.auth import make_token

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
_SAMPLE_EVERY = 0.5


@dataclass
class Options:
    """Everything a run can be told (``python -m bench --help``)."""

    load: Load = field(default_factory=Load)
    warmup: float = 3.0
    users: int = 10_000
    visits: int = 50_000
    scenarios: tuple[str, ...] = ("get_user", "list_visits", "post_visit", "mix")
    variants: tuple[str, ...] = ("default",)
    shards: int = 2
    fe_per_shard: int = 2
    gateways: int = 2
    nginx_workers: int | str = 1
    seed: int = 1
    jwt_secret: str = "local-dev-secret"
    base_dir: Path | None = None
    keep: bool = False
    results_dir: Path | None = RESULTS_DIR


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
    probes: list[Probe]

    def wrk_args(self) -> list[str]:
        return [str(self.users_file), self.token, str(self.options.seed), str(self.visits_file)]

    def python_processes(self) -> list[ServiceProcess]:
        return [p for p in self.stack.processes() if isinstance(p, ServiceProcess)]

    def components(self) -> list[Component]:
        return list(components_of(self.stack.processes()))


def kind_of(name: str) -> str:
    """``fe-shard-0-1`` → ``fe``, ``gateway-1`` → ``gateway``, ``postgres-central`` → ``postgres``."""
    return name.split("-", 1)[0]


def components_of(procs: Iterator[ManagedProcess] | list[ManagedProcess]) -> Iterator[Component]:
    for p in procs:
        if p.pid is not None:
            yield Component(p.name, kind_of(p.name), p.pid, python=isinstance(p, ServiceProcess))


async def measure(
    title: str, key: str, scenario: Scenario, base_url: str, args: list[str], load: Load,
    warmup: float, components: list[Component], memory: MemoryMeter,
    probes: list[Probe] = (), ctx: BenchContext | None = None,  # type: ignore[assignment]
) -> Row:
    """Warm up, then one measured wrk run with CPU, memory and probes read around it."""
    if warmup > 0:
        warm = await _wrk(base_url, scenario.script, args, load, warmup)
        if warm.non_2xx or warm.socket_errors:
            log.warning("%s warm-up: %d non-2xx, %d socket errors %s", title, warm.non_2xx,
                        warm.socket_errors, warm.statuses)  # fmt: skip
    probes = [p for p in probes if p.applies(scenario)]
    for p in probes:
        await p.before(ctx)  # type: ignore[arg-type]
    run = WrkRun(base_url, scenario.script, args, load, load.duration)
    await run.start()
    meter = CpuMeter([*components, Component("wrk", "wrk", run.pid)])
    meter.start()
    started = time.monotonic()
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
        baseline=None if key == HELLO.key else HELLO.key, target=scenario.target,
        p99_target_ms=scenario.p99_target_ms, statuses=result.statuses,
        latency_us=result.latency_us, cpu_cores=cpu, extra=extra,
    )  # fmt: skip
    log.info("%-34s %9.0f req/s  p50 %6.2f ms  p99 %6.2f ms  non-2xx %d  errors %d",
             title, row.rate, row.p50_ms, row.p99_ms, row.non_2xx, row.socket_errors)  # fmt: skip
    return row


async def _wrk(base_url: str, script: str, args: list[str], load: Load, seconds: float) -> LoadResult:
    run = WrkRun(base_url, script, args, load, seconds)
    await run.start()
    return await run.result()


async def measure_hello(opts: Options, args: list[str], logs: Path, memory: MemoryMeter) -> Row:
    """The baseline: ``python -m bench.hello`` alone on the machine, same load."""
    hello = ServiceProcess("hello", "bench.hello", free_port(), logs / "hello.log", cwd=REPO)
    await hello.start()
    try:
        return await measure(
            HELLO.title, HELLO.key, HELLO, hello.url, args, opts.load, opts.warmup,
            list(components_of([hello])), memory,
        )  # fmt: skip
    finally:
        memory.sample(components_of([hello]))
        await hello.stop()


async def apply_variant(stack: Stack, base_env: dict[str, dict[str, str]], variant: Variant) -> None:
    """Give the Python processes the variant's environment; restart them if it changed.

    FE servers first, then the gateways (fresh pools to the new FE servers), then an nginx
    reload (fresh upstream connections and no failure marks from the restart).
    """
    changed = False
    for tier in (stack.tiers()[1], stack.tiers()[2], stack.tiers()[3]):
        wanted = {p.name: {**base_env[p.name], **variant.env} for p in tier}
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
    stack = Stack(StackConfig(
        base_dir=base, shards=opts.shards, fe_per_shard=opts.fe_per_shard,
        gateways=opts.gateways, http_port=0, https_port=0, fast=False,
        nginx_workers=opts.nginx_workers, jwt_secret=opts.jwt_secret,
    ))  # fmt: skip
    report.meta = _meta(opts, stack)
    data = make_dataset(stack.shard_map, opts.users, opts.visits, opts.seed)
    users_file, visits_file = data.write_target_files(base / "bench")
    token = make_token(opts.jwt_secret, "bench.admin", ["admin"])
    memory = MemoryMeter()
    args = [str(users_file), token, str(opts.seed), str(visits_file)]
    ok = False
    try:
        log.info("baseline: hello-world, %s", report.meta["load"])
        report.add(await measure_hello(opts, args, stack.logs_dir, memory))
        log.info("starting the stack in %s", base)
        t0 = time.perf_counter()
        await stack.start()
        report.measurements.append(Measurement("stack start-up", time.perf_counter() - t0, "s"))
        seconds = await load_dataset(stack.shard_map, data)
        rows = opts.users + opts.visits
        report.measurements.append(Measurement(
            "seed (COPY)", rows / seconds, "rows/s", f"{opts.users} users + {opts.visits} visits in {seconds:.1f} s"
        ))  # fmt: skip
        log.info("seeded %d users and %d visits in %.1f s", opts.users, opts.visits, seconds)
        ctx = BenchContext(opts, stack, data, users_file, visits_file, token, report, memory,
                           default_probes())  # fmt: skip
        await run_variants(ctx)
        memory.sample(ctx.components())
        report.memory = memory.by_kind()
        ok = True
    finally:
        await stack.stop()
        if opts.keep or not ok:
            log.warning("stack folder kept: %s (logs in %s)", base, stack.logs_dir)
        elif opts.base_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    if opts.results_dir is not None:
        md, js = report.save(opts.results_dir)
        log.info("saved %s and %s", md, js)
    return report


async def run_variants(ctx: BenchContext) -> None:
    """Every selected variant × scenario, as rows of the report."""
    stack = ctx.stack
    base_env = {p.name: dict(p.env or {}) for tier in stack.tiers()[1:4] for p in tier}
    for vkey in ctx.options.variants:
        variant = VARIANTS[vkey]
        await apply_variant(stack, base_env, variant)
        keys = [k for k in ctx.options.scenarios if variant.scenarios is None or k in variant.scenarios]
        for skey in keys:
            scenario = SCENARIOS[skey]
            key = skey if variant.key == "default" else f"{skey}@{variant.key}"
            title = scenario.title + (f" ({variant.label})" if variant.label else "")
            ctx.report.add(await measure(
                title, key, scenario, stack.base_url, ctx.wrk_args(), ctx.options.load,
                ctx.options.warmup, ctx.components(), ctx.memory, ctx.probes, ctx,
            ))  # fmt: skip


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
    from deploy.localstack import binaries

    return {
        "commit": _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "machine": f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB, Linux {platform.release()}",
        "load": f"wrk {load.threads} thread(s), {load.connections} connections, "
        f"{load.duration:g} s per run after a {opts.warmup:g} s warm-up",
        "stack": f"{opts.shards} shards × {opts.fe_per_shard} FE servers, {opts.gateways} gateways, "
        f"nginx ({opts.nginx_workers} worker), PostgreSQL durable (fsync on), Redis per shard",
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
