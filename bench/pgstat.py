"""``python -m bench.pgstat``: where PostgreSQL's time goes, per statement and per function.

Why: the bench's CPU table says what one request costs the PostgreSQL server as a whole
(about 550 µs of a POST visit); this says which statements and trigger functions that time
is spent in. It starts a throwaway stack (1 shard, 1 FE server, 1 gateway, PostgreSQL durable
as in the bench) with ``pg_stat_statements`` (``track=all``: the statements run inside
triggers and functions too) and ``track_functions=all``, seeds 200 patients, then per phase
resets the statistics, drives ``--requests`` requests through the gateway and prints:

- the PostgreSQL server's CPU per request (its whole process tree, from /proc);
- each statement's calls per request, execution time per request and per call (top-level
  statements and the nested ones under them: a trigger's INSERT is counted inside the
  statement that fired it as well as on its own line);
- each PL/pgSQL or not-inlined SQL function's calls per request, total and self time per
  request (``pg_stat_user_functions``).

Phases: POST visit (the relay in the FE server ships and deletes the outbox rows meanwhile:
its statements are part of what a write costs), and GET user with the cache off (FE server
and gateway restarted with ``MEDSVC_CACHE=false``). ``--pg-setting`` adds settings (e.g.
``commit_delay=20``) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import aiohttp
import asyncpg

from bench.direct import PATIENTS, VISIT, _drive
from bench.procstat import tree_cpu_seconds
from deploy.localstack.throwaway import throwaway_stack

PROFILE_SETTINGS = (
    "shared_preload_libraries=pg_stat_statements",
    "pg_stat_statements.track=all",
    "pg_stat_statements.max=1000",
    "track_functions=all",
)

_STATEMENTS = """
SELECT calls, total_exec_time, total_plan_time, rows, toplevel,
       regexp_replace(query, '\\s+', ' ', 'g') AS query
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC
LIMIT $1
"""

_FUNCTIONS = """
SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions
ORDER BY total_time DESC
"""


async def _reset(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_stat_statements_reset()")
    await conn.execute("SELECT pg_stat_reset()")


async def _report(conn: asyncpg.Connection, title: str, n: int, pg_us: float, top: int) -> None:
    # Statistics reach the shared tables when a backend goes idle: give them a moment.
    await asyncio.sleep(1.5)
    print(f"\n## {title}: {n} requests, PostgreSQL CPU {pg_us:.0f} µs per request\n")
    print("| calls/req | exec µs/req | µs/call | plan µs/req | rows | top | statement |")
    print("|---:|---:|---:|---:|---:|---|---|")
    for r in await conn.fetch(_STATEMENTS, top):
        print(
            f"| {r['calls'] / n:.2f} | {1000 * r['total_exec_time'] / n:.0f} "
            f"| {1000 * r['total_exec_time'] / max(r['calls'], 1):.0f} "
            f"| {1000 * r['total_plan_time'] / n:.0f} | {r['rows']} "
            f"| {'yes' if r['toplevel'] else 'nested'} | {r['query'][:150]} |"
        )
    print("\n| function | calls/req | total µs/req | self µs/req |")
    print("|---|---:|---:|---:|")
    for r in await conn.fetch(_FUNCTIONS):
        print(
            f"| {r['funcname']} | {r['calls'] / n:.2f} | {1000 * r['total_time'] / n:.0f} "
            f"| {1000 * r['self_time'] / n:.0f} |"
        )


async def run(n: int, conc: int, settings: tuple[str, ...], top: int) -> None:
    async with throwaway_stack(
        "medsvc-bench-pgstat-", shards=1, fe_per_shard=1, gateways=1, fast=False,
        pg_settings=(*PROFILE_SETTINGS, *settings),
    ) as stack:  # fmt: skip
        pg = stack.postgres[0]
        assert pg.pid
        db = await asyncpg.connect(pg.dsn)
        await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        headers = {"Authorization": f"Bearer {stack.token('bench.admin', ['admin'])}"}
        rng = random.Random(1)
        names = [f"bench.pgstat.{i}" for i in range(PATIENTS)]
        gw_url = stack.gateways[0].url
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc * 2)) as http:
            for name in names:
                body = {"userName": name, "role": "patient", "givenName": "P",
                        "familyName": "Q", "birthDate": "1980-04-02", "sex": "female"}  # fmt: skip
                async with http.post(f"{gw_url}/v1/users", json=body, headers=headers) as resp:
                    assert resp.status == 201, await resp.text()

            def post() -> tuple[str, str, dict[str, Any]]:
                return ("POST", f"{gw_url}/v1/users/{rng.choice(names)}/visits",
                        {"json": VISIT, "headers": headers})  # fmt: skip

            def get() -> tuple[str, str, dict[str, Any]]:
                return ("GET", f"{gw_url}/v1/users/{rng.choice(names)}", {"headers": headers})

            async def phase(title: str, make: Any) -> None:
                await _drive(http, make, max(n // 10, 50), conc)  # warm-up
                await asyncio.sleep(1.0)  # the relay empties the outbox
                await _reset(db)
                before = tree_cpu_seconds([pg.pid])  # type: ignore[list-item]
                started = time.perf_counter()
                statuses = await _drive(http, make, n, conc)
                await asyncio.sleep(1.0)  # the relay ships what is left: part of the cost
                after = tree_cpu_seconds([pg.pid])  # type: ignore[list-item]
                pg_us = 1e6 * (after[pg.pid] - before[pg.pid]) / n  # type: ignore[index]
                print(f"\n{title}: {n / (time.perf_counter() - started):.0f} req/s {statuses}")
                await _report(db, title, n, pg_us, top)

            await phase("POST visit", post)
            for proc in (stack.fe[0][0], stack.gateways[0]):
                proc.env = {**(proc.env or {}), "MEDSVC_CACHE": "false"}
                await proc.restart()
            await asyncio.sleep(1.0)
            await phase("GET user, cache off", get)
        await db.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.pgstat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--requests", type=int, default=3000, help="requests per phase (3000)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    p.add_argument("--top", type=int, default=25, help="statements to show (25)")
    p.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE")
    a = p.parse_args(argv)
    asyncio.run(run(a.requests, a.concurrency, tuple(a.pg_setting), a.top))


if __name__ == "__main__":
    main()
