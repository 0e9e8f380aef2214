"""``python -m bench.direct``: CPU per request of each component, one hop driven directly.

Why: the main table drives the whole stack to saturation through nginx, and on a shared
2-core machine its CPU-per-request figures move by a fifth from one run to the next with
the other programs' load. This drives one FE server or one gateway at a fixed, moderate
concurrency from one Python client, and divides the CPU each component used (user + system,
from /proc, whole process trees) by the requests sent: steadier, and comparable between two
checkouts run one after the other (``cd other-checkout && python -m bench.direct``).

The stack is a throwaway one (1 shard, 1 FE server, 1 gateway, PostgreSQL durable as in
the bench), with 200 patients. Rows: POST visit to the FE server and through the gateway;
GET user answered from the cache by the gateway; GET user with the cache off (both
processes restarted with ``MEDSVC_CACHE=false``), to the FE server and through the gateway.
CPU is read in clock ticks (10 ms): with the default 3,000 requests a figure moves in steps
of 3.3 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.procstat import tree_cpu_seconds
from deploy.localstack.throwaway import throwaway_stack

Request = tuple[str, str, dict[str, Any]]
PATIENTS = 200
VISIT = {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z", "reason": "check-up"}


async def _drive(
    session: aiohttp.ClientSession, make: Callable[[], Request], n: int, conc: int
) -> dict[int, int]:
    left = iter(range(n))
    statuses: dict[int, int] = {}

    async def worker() -> None:
        for _ in left:
            method, url, kwargs = make()
            async with session.request(method, url, **kwargs) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(conc)))
    return statuses


async def _row(
    title: str, session: aiohttp.ClientSession, make: Callable[[], Request],
    pids: dict[str, int], n: int, conc: int,
) -> dict[str, Any]:  # fmt: skip
    await _drive(session, make, max(n // 10, 50), conc)  # warm-up
    before = tree_cpu_seconds(pids.values())
    started = time.perf_counter()
    statuses = await _drive(session, make, n, conc)
    seconds = time.perf_counter() - started
    after = tree_cpu_seconds(pids.values())
    us = {k: 1e6 * (after.get(p, 0.0) - before.get(p, 0.0)) / n for k, p in pids.items()}
    row = {"title": title, "us": us, "rate": n / seconds, "statuses": statuses}
    print(f"{title:<34} {n / seconds:7.0f} req/s  " + "  ".join(
        f"{k} {v:6.1f}" for k, v in us.items()) + f"  {statuses}", flush=True)  # fmt: skip
    return row


async def run(n: int, conc: int) -> list[dict[str, Any]]:
    rows = []
    async with throwaway_stack(
        "medsvc-bench-direct-", shards=1, fe_per_shard=1, gateways=1, fast=False
    ) as stack:
        fe, gw = stack.fe[0][0], stack.gateways[0]
        assert fe.pid and gw.pid and stack.postgres[0].pid and stack.redis[0].pid
        pids = {"fe": fe.pid, "gateway": gw.pid, "postgres": stack.postgres[0].pid,
                "redis": stack.redis[0].pid}  # fmt: skip
        headers = {"Authorization": f"Bearer {stack.token('bench.admin', ['admin'])}"}
        rng = random.Random(1)
        names = [f"bench.direct.{i}" for i in range(PATIENTS)]
        connector = aiohttp.TCPConnector(limit=conc * 2)
        async with aiohttp.ClientSession(connector=connector) as http:
            for name in names:
                body = {"userName": name, "role": "patient", "givenName": "P",
                        "familyName": "Q", "birthDate": "1980-04-02", "sex": "female"}  # fmt: skip
                async with http.post(f"{stack.base_url}/v1/users", json=body,
                                     headers=headers) as resp:  # fmt: skip
                    assert resp.status == 201, await resp.text()

            def post(base: str) -> Callable[[], Request]:
                return lambda: ("POST", f"{base}/v1/users/{rng.choice(names)}/visits",
                                {"json": VISIT, "headers": headers})  # fmt: skip

            def get(base: str) -> Callable[[], Request]:
                return lambda: ("GET", f"{base}/v1/users/{rng.choice(names)}",
                                {"headers": headers})  # fmt: skip

            rows.append(await _row("POST visit → FE", http, post(fe.url), pids, n, conc))
            rows.append(await _row("POST visit → gateway", http, post(gw.url), pids, n, conc))
            await _drive(http, get(gw.url), PATIENTS * 2, conc)  # fill the cache
            rows.append(await _row("GET user, cached → gateway", http, get(gw.url), pids, n,
                                   conc))  # fmt: skip
            for proc in (fe, gw):
                proc.env = {**(proc.env or {}), "MEDSVC_CACHE": "false"}
                await proc.restart()
            await asyncio.sleep(1.0)
            assert fe.pid and gw.pid
            pids |= {"fe": fe.pid, "gateway": gw.pid}
            rows.append(await _row("GET user, cache off → FE", http, get(fe.url), pids, n, conc))
            rows.append(await _row("GET user, cache off → gateway", http, get(gw.url), pids, n,
                                   conc))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.direct", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--requests", type=int, default=3000, help="requests per row (3000)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    a = p.parse_args(argv)
    asyncio.run(run(a.requests, a.concurrency))


if __name__ == "__main__":
    main()
