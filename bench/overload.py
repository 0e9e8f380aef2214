"""The overload table: each path at 50, 200, 500 and 1,000 connections through nginx.

What it shows is whether the stack degrades or collapses past saturation: the goodput
(2xx answers a second) should stay near the 50-connection figure, the latency of the
successful requests bounded, and every failure an immediate 503 with ``Retry-After`` (a
shed, shared/admission.py) or a 429 from nginx's rate limit, never a 502, a 504 or a
timeout. The stack's rate limit is set far above what wrk can send (runner.py), so that
what is measured is overload, not rate limiting.

wrk's own latency figures mix the successful answers with the (fast) sheds, so the p50 and
p99 of the 2xx come from nginx's access log (``requestTime``, millisecond resolution: the
time from the request's first byte to its last byte sent), read for the window of the run.
Timeouts are wrk's count of requests unanswered after 2 s. The kernel's listen-queue
overflow counter is machine-wide: another program on a shared machine can move it.

Two kinds of clients (``CLIENTS``). API.md tells a client that a 503 carries
``Retry-After``; clients that *honour* it wait that long before they send again (each shed
costs one connection a pause, bench/wrk/common.lua). Clients that *ignore* it are wrk as it
is: a shed connection sends its next request at once, a retry storm at full speed. Both are
measured: the first is the burst of well-behaved clients the targets are about; the second
shows that even a storm that ignores every ``Retry-After`` does not collapse the stack,
and what its sheds cost when, as on this machine, the load generator shares the server's
cores.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.loadgen import Load, LoadResult, WrkRun
from bench.procstat import CpuMeter

if TYPE_CHECKING:
    from bench.runner import BenchContext

log = logging.getLogger("bench")

# (key, title, wrk script)
PATHS = (
    ("get_user", "cached GET user", "get_user"),
    ("post_visit", "POST visit", "post_visit"),
    ("mix", "90/10 read/write mix", "mix"),
)
CONNECTIONS = (50, 200, 500, 1000)
# "honour": clients wait Retry-After after a 503 or 429; "ignore": they resend at once.
CLIENTS = ("honour", "ignore")
# wrk counts a request unanswered after this long as a timeout: "no request waits 2 s".
TIMEOUT = 2.0
# Seconds of unmeasured load at the fewest connections before a path's first pass. Right
# after the POST path, the mix's first 50-connection runs served 1,000-2,000 2xx/s against
# 2,300-4,200 for the rest of its passes, climbing for about 40 s: the state a path leaves
# (invalidated cache entries, audit events to ship) is not the next path's to pay for.
PATH_WARMUP = 45.0
# nginx flushes its access-log buffer at least once a second (nginx.conf.j2).
_LOG_FLUSH = 1.2


@dataclass
class OverloadRow:
    path: str
    title: str
    clients: str  # one of CLIENTS
    connections: int
    seconds: float
    goodput: float  # 2xx a second
    p50_ms: float | None  # of the 2xx, from nginx's access log
    p99_ms: float | None
    max_ms: float | None
    shed_503: int  # 503 with Retry-After
    other_503: int  # 503 without it
    s429: int
    timeouts: int
    s502_504: int
    other_5xx: int
    other: int  # anything else that is not 2xx (4xx but 429)
    socket_errors: int  # connect, read, write errors
    listen_overflows: int | None  # the kernel's TcpExtListenOverflows during the run
    statuses: dict[int, int]
    # Cores busy per component kind during the run (procstat.CpuMeter).
    cpu_cores: dict[str, float] = field(default_factory=dict)
    # Each run's goodput, in the order measured (overload: the row's is their median).
    run_goodputs: list[int] = field(default_factory=list)
    # Goodput against the fewest connections' (1.0 for those): the median of pass_ratios.
    vs_first: float | None = None
    # Each pass's ratio to the runs of the fewest connections right before and after it.
    pass_ratios: list[float] = field(default_factory=list)


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listen queue was full."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def _ok_latencies_ms(log_path: Path, offset: int) -> list[float]:
    """``requestTime`` (ms) of the 2xx lines nginx wrote past ``offset``."""
    out = []
    with log_path.open("rb") as f:
        f.seek(offset)
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            status, took = entry.get("status"), entry.get("requestTime")
            if isinstance(status, int) and 200 <= status < 300 and took is not None:
                out.append(float(took) * 1000.0)
    return out


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(p * 10) - 1]


async def _wrk(
    ctx: BenchContext, script: str, load: Load, seconds: float, clients: str
) -> LoadResult:
    env = {"BENCH_HONOUR_RETRY_AFTER": "1" if clients == "honour" else "0"}
    run = WrkRun(ctx.stack.base_url, script, ctx.wrk_args(), load, seconds, env=env)
    await run.start()
    return await run.result()


def _load(ctx: BenchContext, connections: int, seconds: float) -> Load:
    return Load(connections=connections, threads=ctx.options.load.threads, duration=seconds,
                timeout=TIMEOUT)  # fmt: skip


async def measure_level(
    ctx: BenchContext, key: str, title: str, script: str, clients: str, connections: int
) -> tuple[OverloadRow, list[float]]:
    """One path at one number of connections: a short warm-up, then the measured run; the
    row and the latencies (ms) of its 2xx."""
    opts = ctx.options
    load = _load(ctx, connections, opts.overload_duration)
    if opts.warmup > 0:
        await _wrk(ctx, script, load, min(opts.warmup, 3.0), clients)
    await asyncio.sleep(_LOG_FLUSH)  # the warm-up's lines reach the log before the offset
    await ctx.gate.wait(ctx.components())
    access_log = ctx.stack.logs_dir / "nginx.access.log"
    offset = access_log.stat().st_size if access_log.exists() else 0
    overflows_before = listen_overflows()
    meter = CpuMeter(ctx.components())
    meter.start()
    started = time.monotonic()
    result = await _wrk(ctx, script, load, opts.overload_duration, clients)
    cpu = meter.stop(time.monotonic() - started)
    overflows_after = listen_overflows()
    await asyncio.sleep(_LOG_FLUSH)
    ok_ms = _ok_latencies_ms(access_log, offset) if access_log.exists() else []
    st = result.statuses
    ok = sum(n for s, n in st.items() if 200 <= s < 300)
    s503 = st.get(503, 0)
    row = OverloadRow(
        path=key, title=title, clients=clients, connections=connections,
        seconds=result.seconds,
        goodput=ok / result.seconds if result.seconds else 0.0,
        p50_ms=_percentile(ok_ms, 50), p99_ms=_percentile(ok_ms, 99),
        max_ms=max(ok_ms) if ok_ms else None,
        shed_503=result.retry_after_503, other_503=s503 - result.retry_after_503,
        s429=st.get(429, 0), timeouts=result.errors.get("timeout", 0),
        s502_504=st.get(502, 0) + st.get(504, 0),
        other_5xx=sum(n for s, n in st.items() if 500 <= s < 600 and s not in (502, 503, 504)),
        other=sum(n for s, n in st.items() if 300 <= s < 500 and s != 429),
        socket_errors=sum(v for k, v in result.errors.items() if k not in ("status", "timeout")),
        listen_overflows=(overflows_after - overflows_before
                          if overflows_before is not None and overflows_after is not None
                          else None),
        statuses=dict(sorted(st.items())), cpu_cores=cpu,
    )  # fmt: skip
    log.info(
        "overload %-22s %-6s %5d conns: %7.0f 2xx/s  p50 %s  p99 %s  shed %d  429 %d"
        "  timeouts %d  502/504 %d  other 5xx %d  overflows %s",
        title, clients, connections, row.goodput, _ms(row.p50_ms), _ms(row.p99_ms), row.shed_503,
        row.s429, row.timeouts, row.s502_504, row.other_5xx, row.listen_overflows,
    )  # fmt: skip
    return row, ok_ms


def schedule(connections: tuple[int, ...]) -> list[int]:
    """The levels of one pass in the order they run: the fewest connections first, last and
    between every two others (50, 200, 50, 500, 50, 1000, 50), so that each level is compared
    with runs seconds away from it rather than a minute."""
    base, *levels = connections
    order = [base]
    for c in levels:
        order += [c, base]
    return order


def bracketed(goodputs: list[float]) -> list[float | None]:
    """For one pass run in :func:`schedule` order, each level's goodput over the mean of the
    base runs either side of it: a machine whose speed drifts steadily through the pass moves
    both alike (None where the base served nothing)."""
    ratios: list[float | None] = []
    for i in range(1, len(goodputs) - 1, 2):
        around = (goodputs[i - 1] + goodputs[i + 1]) / 2
        ratios.append(goodputs[i] / around if around > 0 else None)
    return ratios


def combine(
    passes: list[tuple[OverloadRow, list[float]]], ratios: list[float] | None = None
) -> OverloadRow:
    """One level's runs as one row: the median goodput (each run's kept), the median of its
    bracketed ratios (none: it is the base), the latency percentiles of every run's 2xx
    together, every count summed, the cores averaged."""
    rows = [r for r, _ in passes]
    ok_ms = [ms for _, lat in passes for ms in lat]
    first = rows[0]
    overflows = [r.listen_overflows for r in rows]
    statuses: dict[int, int] = {}
    for r in rows:
        for code, n in r.statuses.items():
            statuses[code] = statuses.get(code, 0) + n
    kinds = {k for r in rows for k in r.cpu_cores}

    def total(name: str) -> int:
        return sum(int(getattr(r, name)) for r in rows)

    return OverloadRow(
        path=first.path, title=first.title, clients=first.clients,
        connections=first.connections, seconds=sum(r.seconds for r in rows),
        goodput=statistics.median(r.goodput for r in rows),
        p50_ms=_percentile(ok_ms, 50), p99_ms=_percentile(ok_ms, 99),
        max_ms=max(ok_ms) if ok_ms else None,
        shed_503=total("shed_503"), other_503=total("other_503"), s429=total("s429"),
        timeouts=total("timeouts"), s502_504=total("s502_504"), other_5xx=total("other_5xx"),
        other=total("other"), socket_errors=total("socket_errors"),
        listen_overflows=None if None in overflows else sum(o or 0 for o in overflows),
        statuses=dict(sorted(statuses.items())),
        cpu_cores={k: sum(r.cpu_cores.get(k, 0.0) for r in rows) / len(rows) for k in kinds},
        run_goodputs=[round(r.goodput) for r in rows],
        vs_first=1.0 if ratios is None else statistics.median(ratios) if ratios else None,
        pass_ratios=[round(r, 3) for r in ratios or []],
    )  # fmt: skip


async def overload(ctx: BenchContext) -> list[OverloadRow]:
    """Every path at every number of connections, as rows of the overload table.

    Each path first runs :data:`PATH_WARMUP` seconds unmeasured. Its levels are then measured
    in passes, each in :func:`schedule` order (50, 200, 50, 500, 50, 1,000, 50), each level's
    row combining its runs (:func:`combine`) and its goodput compared with the base runs right
    around it (:func:`bracketed`). On this shared machine the speed drifts by 10-40 % within a
    minute; one run per level, in order, compared the levels as much as the minutes they ran
    in, and so did comparing each level's median with the base's median over the whole pass.
    """
    opts = ctx.options
    rows = []
    levels = opts.overload_connections[1:]
    for clients in opts.overload_clients:
        for key, title, script in PATHS:
            if key not in opts.overload_paths:
                continue
            if opts.warmup > 0:
                warm = _load(ctx, opts.overload_connections[0], PATH_WARMUP)
                await _wrk(ctx, script, warm, PATH_WARMUP, clients)
            runs: dict[int, list[tuple[OverloadRow, list[float]]]] = {}
            ratios: dict[int, list[float]] = {c: [] for c in levels}
            for _ in range(opts.overload_passes):
                goodputs = []
                for connections in schedule(opts.overload_connections):
                    for proc in ctx.stack.processes():
                        proc.check_alive()
                    measured = await measure_level(ctx, key, title, script, clients, connections)
                    runs.setdefault(connections, []).append(measured)
                    goodputs.append(measured[0].goodput)
                for c, ratio in zip(levels, bracketed(goodputs), strict=True):
                    if ratio is not None:
                        ratios[c].append(ratio)
            rows += [combine(runs[c], ratios.get(c)) for c in opts.overload_connections]
    return rows


def markdown(rows: list[OverloadRow]) -> list[str]:
    """The table, each row's goodput (bracketed, :func:`overload`) and p99 (pooled) compared
    with its path's fewest connections."""
    if not rows:
        return []
    lines = [
        "| path | Retry-After | conns | goodput 2xx/s | vs first | p50 ms (2xx) | p99 ms (2xx) "
        "| p99 vs first | max ms (2xx) | shed 503 | 429 | timeouts | 502/504 | other 5xx | other | "
        "socket errors | listen overflows | goodput of each run | vs first, each pass |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    first: dict[tuple[str, str], OverloadRow] = {}
    for r in rows:
        base = first.setdefault((r.path, r.clients), r)
        good = "" if r.vs_first is None else f"{r.vs_first:.2f}"
        p99 = f"{r.p99_ms / base.p99_ms:.2f}" if r.p99_ms and base.p99_ms else ""
        lines.append(
            f"| {r.title} | {r.clients} | {r.connections} | {r.goodput:,.0f} | {good} "
            f"| {_ms(r.p50_ms)} | {_ms(r.p99_ms)} | {p99} | {_ms(r.max_ms)} "
            f"| {r.shed_503} | {r.s429} "
            f"| {r.timeouts} | {r.s502_504} | {r.other_5xx + r.other_503} | {r.other} "
            f"| {r.socket_errors} "
            f"| {'' if r.listen_overflows is None else r.listen_overflows} "
            f"| {', '.join(f'{g:,.0f}' for g in r.run_goodputs)} "
            f"| {', '.join(f'{x:.2f}' for x in r.pass_ratios)} |"
        )
    return lines


def cpu_markdown(rows: list[OverloadRow]) -> list[str]:
    """Cores busy per component during each level: where the sheds' CPU went."""
    kinds = ["wrk", "nginx", "gateway", "fe", "redis", "postgres", "kernel", "other", "idle"]
    lines = [
        "| path | Retry-After | conns | " + " | ".join(kinds) + " |",
        "|---|---|---:|" + "---:|" * len(kinds),
    ]
    for r in rows:
        cells = [f"{r.cpu_cores[k]:.2f}" if k in r.cpu_cores else "" for k in kinds]
        lines.append(f"| {r.title} | {r.clients} | {r.connections} | " + " | ".join(cells) + " |")
    return lines


def as_json(rows: list[OverloadRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"
