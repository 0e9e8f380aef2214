"""``python -m bench`` (``make bench``): benchmark the stack against a hello-world baseline.

Starts its own stack in a temporary folder on free ports (nothing else needs to run), seeds
it, measures each scenario with wrk through nginx, and prints a table that it also saves as
``bench/results/<UTC time>.md`` and ``.json``. About 2.5 minutes with the defaults (plus up
to --quiet-budget seconds on a busy machine). Exit status 2 when any row had non-2xx answers
or socket errors: such a figure is not valid.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bench.loadgen import Load, LoadError
from bench.overload import CLIENTS, CONNECTIONS
from bench.overload import PATHS as OVERLOAD_PATHS
from bench.report import RESULTS_DIR
from bench.runner import Options, run
from bench.scenarios import DEFAULT_SCENARIOS, DEFAULT_VARIANTS, SCENARIOS, STEPS, VARIANTS
from deploy.localstack.procs import ProcessError


def _names(raw: str, known: dict[str, object], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names


def parse(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up before each (3)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument(
        "--threads", type=int, default=1, help="wrk threads (1: leaves a core to the servers)"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="wrk request timeout, seconds (5)")
    p.add_argument("--users", type=int, default=10_000, help="patients to seed (10000)")
    p.add_argument("--visits", type=int, default=50_000, help="visits to seed (50000)")
    p.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, of: {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, of: {', '.join(VARIANTS)}",
    )
    steps = {step.__name__: step for step in STEPS}
    p.add_argument(
        "--steps",
        default=",".join(steps),
        help=f"comma-separated steps after the scenarios, of: {', '.join(steps)} (none: '')",
    )
    p.add_argument(
        "--hello-each",
        action="store_true",
        help="measure the hello-world again right before each scenario and quote the "
        "scenario's ratio to that run (steadier ratios on a machine whose load drifts)",
    )
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--fe-per-shard", type=int, default=2)
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument("--nginx-workers", default="1", help="nginx worker_processes (1, or auto)")
    p.add_argument("--seed", type=int, default=1, help="random seed for data and requests")
    p.add_argument("--base-dir", type=Path, help="stack folder (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the stack folder (data and logs)")
    p.add_argument(
        "--quiet-budget",
        type=float,
        default=60.0,
        help="seconds in all to wait for other programs to leave the CPU before runs (60)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the seed's audit events to be shipped (120)",
    )
    p.add_argument(
        "--only",
        choices=("main", "overload"),
        help="run one part: main (hello-world, scenarios, variants, extraction) or overload "
        "(each path at 50-1000 connections); default both",
    )
    p.add_argument(
        "--overload-duration",
        type=float,
        default=5.0,
        help="seconds per overload level and pass (5)",
    )
    p.add_argument(
        "--overload-passes",
        type=int,
        default=3,
        help="passes over the overload levels, the fewest connections run before, between and "
        "after the others; each level compared with the runs around it (3)",
    )
    p.add_argument(
        "--overload-connections",
        default=",".join(str(c) for c in CONNECTIONS),
        help="comma-separated connection counts of the overload table",
    )
    p.add_argument(
        "--overload-clients",
        default=",".join(CLIENTS),
        help="comma-separated client kinds of the overload table: honour (wait Retry-After"
        " after a 503 or 429) and/or ignore (resend at once)",
    )
    p.add_argument(
        "--overload-paths",
        default=",".join(k for k, _, _ in OVERLOAD_PATHS),
        help="comma-separated paths of the overload table, of: "
        + ", ".join(k for k, _, _ in OVERLOAD_PATHS),
    )
    p.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a further PostgreSQL setting for every cluster (repeatable), e.g. commit_delay=50",
    )
    p.add_argument("--no-save", action="store_true", help=f"print only; do not write {RESULTS_DIR}")
    a = p.parse_args(argv)
    try:
        scenarios = _names(a.scenarios, SCENARIOS, "scenarios")
        variants = _names(a.variants, VARIANTS, "variants")
        chosen_steps = _names(a.steps, steps, "steps")
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    unknown = set(a.overload_clients.split(",")) - set(CLIENTS) - {""}
    if unknown:
        p.error(f"--overload-clients: unknown {sorted(unknown)}; choose from {list(CLIENTS)}")
    paths = [k for k in a.overload_paths.split(",") if k]
    known_paths = {k for k, _, _ in OVERLOAD_PATHS}
    if set(paths) - known_paths:
        p.error(f"--overload-paths: unknown {sorted(set(paths) - known_paths)}")
    if a.overload_passes < 1:
        p.error("--overload-passes: at least 1")
    workers = int(a.nginx_workers) if a.nginx_workers.isdigit() else a.nginx_workers
    return Options(
        load=Load(
            connections=a.connections, threads=a.threads, duration=a.duration, timeout=a.timeout
        ),
        warmup=a.warmup,
        users=a.users,
        visits=a.visits,
        scenarios=scenarios,
        variants=variants,
        shards=a.shards,
        fe_per_shard=a.fe_per_shard,
        gateways=a.gateways,
        nginx_workers=workers,
        seed=a.seed,
        base_dir=a.base_dir,
        keep=a.keep,
        drain_timeout=a.drain_timeout,
        quiet_budget=a.quiet_budget,
        results_dir=None if a.no_save else RESULTS_DIR,
        parts=(a.only,) if a.only else ("main", "overload"),
        steps=chosen_steps,
        hello_each=a.hello_each,
        pg_settings=tuple(a.pg_setting),
        overload_duration=a.overload_duration,
        overload_passes=a.overload_passes,
        overload_connections=tuple(int(c) for c in a.overload_connections.split(",") if c),
        overload_clients=tuple(c for c in a.overload_clients.split(",") if c),
        overload_paths=tuple(paths),
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("bench").setLevel(logging.INFO)
    logging.getLogger("localstack").setLevel(logging.WARNING)
    try:
        report = asyncio.run(run(opts))
    except (LoadError, ProcessError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(report.markdown())
    return 0 if all(r.valid for r in report.rows) else 2  # the overload table expects non-2xx


if __name__ == "__main__":
    sys.exit(main())
