"""``python -m resharder move --buckets LO-HI --to N`` | ``python -m resharder status``.

Exit status of ``move``: 0 done (or nothing to move), 1 aborted and rolled back (the source
owns the buckets) or verification failed (the source's copies kept), 2 bad usage or refused
(an overlapping move in progress, a range spanning several shards).

Environment: MEDSVC_SHARD_MAP (the map file to read and publish), MEDSVC_PG_PASSWORD (the
shard databases), MEDSVC_RESHARDER_DSN or MEDSVC_CENTRAL_DSN (the move registry),
MEDSVC_SHARDMAP_CONFIGMAP (in Kubernetes: publish by patching this ConfigMap).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any

import aiohttp
import asyncpg
import orjson

from resharder import state
from resharder.move import Mover, Options, Summary
from resharder.progress import Progress
from resharder.publish import current_map
from resharder.settings import ResharderSettings
from shared.settings import load
from shared.shardmap import ShardMap, parse_range

USAGE, DONE, ABORTED = 2, 0, 1


def _print_summary(s: Summary) -> None:
    print(f"move {s.move_id}: buckets {s.lo}-{s.hi} from shard {s.source} to shard {s.target}: "
          f"{s.outcome}" + (f" ({s.reason})" if s.reason else ""))  # fmt: skip
    for phase, secs in s.phases.items():
        print(f"  {phase:<8} {secs:8.3f} s")
    if s.fence_seconds is not None:
        print(f"  writes fenced for {s.fence_seconds:.3f} s")
    if s.copy_rows_per_second is not None:
        print(f"  copy rate {s.copy_rows_per_second:.0f} rows/s")
    for table, diff in s.diff.items():
        print(
            f"  {table:<15} rows {s.rows.get(table, 0):>8}  missing {diff['missing']}  "
            f"extra {diff['extra']}  mismatched {diff['mismatched']}"
        )
    if s.map_version is not None:
        print(f"  shard map version {s.map_version}")


async def _registry(settings: ResharderSettings) -> asyncpg.Connection:
    if not settings.registry_dsn:
        raise SystemExit("set MEDSVC_RESHARDER_DSN (or MEDSVC_CENTRAL_DSN): the move registry")
    password = settings.pg_password.get_secret_value() if settings.pg_password else None
    conn = await asyncpg.connect(settings.registry_dsn, password=password, timeout=10)
    await state.ensure_schema(conn)
    return conn


async def move(args: argparse.Namespace, settings: ResharderSettings) -> int:
    try:
        lo, hi = parse_range(args.buckets)
    except ValueError as exc:
        print(f"resharder: --buckets: {exc}", file=sys.stderr)
        return USAGE
    shard_map = await current_map(settings.shard_map, settings.shardmap_configmap)
    if hi >= shard_map.buckets:
        print(f"resharder: buckets go from 0 to {shard_map.buckets - 1}", file=sys.stderr)
        return USAGE
    try:
        shard_map.shard(args.to)
    except KeyError:
        print(f"resharder: no shard {args.to} in the map (add it first)", file=sys.stderr)
        return USAGE
    registry = await _registry(settings)
    try:
        owners = shard_map.owners()
        sources = {owners[b] for b in range(lo, hi + 1)} - {args.to}
        resumable = [
            m
            for m in await state.recent(registry, 50)
            if m.phase in state.ACTIVE and (m.lo, m.hi, m.target) == (lo, hi, args.to)
        ]
        if resumable:
            source = resumable[0].source  # the map may already name the target
        elif not sources:
            print(f"buckets {lo}-{hi} already belong to shard {args.to}")
            return DONE
        elif len(sources) > 1:
            print(f"resharder: buckets {lo}-{hi} belong to shards {sorted(sources)}; move the part "
                  "of each shard separately", file=sys.stderr)  # fmt: skip
            return USAGE
        else:
            source = sources.pop()
        try:
            m, resumed = await state.claim(registry, lo, hi, source, args.to)
        except state.Refused as exc:
            print(f"resharder: {exc}", file=sys.stderr)
            return USAGE
        if resumed:
            print(f"resuming move {m.move_id} (phase {m.phase})", file=sys.stderr)
        options = Options(fence_limit=args.fence_limit or settings.fence_limit,
                          hold_before_fence=args.hold_before_fence,
                          stall_at=settings.resharder_stall,
                          streams=args.streams)  # fmt: skip
        progress = Progress(quiet=args.json)
        password = settings.pg_password.get_secret_value() if settings.pg_password else None
        mover = Mover(m, shard_map, registry, settings.shard_map, password, options, progress,
                      settings.shardmap_configmap)  # fmt: skip
        summary = await mover.run(resumed)
        progress.done()
    finally:
        await registry.close()
    if args.json:
        sys.stdout.write(orjson.dumps(summary.as_json()).decode() + "\n")
    else:
        _print_summary(summary)
    return DONE if summary.outcome == "done" else ABORTED


_VERSION = re.compile(r"^medsvc_shard_map_version\s+([0-9.e+]+)", re.M)


async def _process_versions(shard_map: ShardMap, urls: list[str]) -> dict[str, Any]:
    """The map version each process reports on /metrics (None: did not answer)."""
    targets = sorted(
        {u.rstrip("/") for s in shard_map.shards for us in s.members.values() for u in us}
        | {u.rstrip("/") for u in urls}
    )
    out: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(url: str) -> None:
            try:
                async with session.get(url + "/metrics") as resp:
                    found = _VERSION.search(await resp.text())
                    out[url] = int(float(found.group(1))) if found else None
            except (aiohttp.ClientError, asyncio.TimeoutError):
                out[url] = None

        await asyncio.gather(*(one(u) for u in targets))
    return out


async def status(args: argparse.Namespace, settings: ResharderSettings) -> int:
    shard_map = await current_map(settings.shard_map, settings.shardmap_configmap)
    registry = await _registry(settings)
    try:
        moves = await state.recent(registry, args.limit)
    finally:
        await registry.close()
    versions = await _process_versions(shard_map, args.url or [])
    doc = {
        "mapVersion": shard_map.version,
        "shards": [{"id": s.id, "buckets": [list(r) for r in s.buckets]} for s in shard_map.shards],
        "moves": [{"moveId": m.move_id, "buckets": [m.lo, m.hi], "source": m.source,
                   "target": m.target, "phase": m.phase, "startedAt": m.started_at.isoformat(),
                   "reason": m.detail.get("reason")} for m in moves],
        "processes": versions,
    }  # fmt: skip
    if args.json:
        print(orjson.dumps(doc).decode())
        return 0
    print(f"shard map version {shard_map.version}")
    for s in doc["shards"]:
        print(
            f"  shard {s['id']}: buckets {', '.join(f'{a}-{b}' for a, b in s['buckets']) or 'none'}"
        )
    active = [m for m in moves if m.phase in state.ACTIVE]
    print(f"moves in progress: {len(active) or 'none'}")
    for m in moves:
        print(
            f"  move {m.move_id}: buckets {m.lo}-{m.hi} shard {m.source} -> {m.target}: {m.phase}"
        )
    print("map version per process:")
    for url, v in sorted(versions.items()):
        print(f"  {url}  {v if v is not None else 'no answer'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resharder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    mv = sub.add_parser("move", help="move a bucket range to a shard, online")
    mv.add_argument("--buckets", required=True, help="LO-HI, inclusive (or one bucket N)")
    mv.add_argument("--to", type=int, required=True, help="the shard that takes them")
    mv.add_argument(
        "--fence-limit",
        type=float,
        default=None,
        help="seconds writes may stay fenced before the move aborts (2)",
    )
    mv.add_argument(
        "--hold-before-fence",
        type=float,
        default=0.0,
        help="catch up at least this many seconds before fencing (0)",
    )
    mv.add_argument(
        "--streams",
        type=int,
        default=0,
        help="replication streams to copy with, each over a bucket sub-range"
        " (0: as many as the servers have room for, at most 4)",
    )
    mv.add_argument("--json", action="store_true", help="print the summary as JSON")
    st = sub.add_parser("status", help="moves in progress and each process's map version")
    st.add_argument("--url", action="append", help="another process to ask (a gateway...)")
    st.add_argument("--limit", type=int, default=10)
    st.add_argument("--json", action="store_true")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return USAGE if exc.code else 0
    settings = load(ResharderSettings)
    if args.command == "move":
        return asyncio.run(move(args, settings))
    return asyncio.run(status(args, settings))


if __name__ == "__main__":
    sys.exit(main())
