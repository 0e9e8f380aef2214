"""``python -m bench.move``: a bucket move under the 90/10 mix, against a raw COPY of its rows.

A local stack (durable PostgreSQL settings, as ``make run``) is started in a temporary folder;
~``--visits`` visits' worth of patients are loaded into a quarter of shard 0's buckets (SQL,
4 visits each); a third shard is added; then, while a load generator runs the 90/10 mix (GET
user / PATCH user) through nginx, ``python -m resharder move`` moves those buckets to the new
shard. Printed (JSON): the move's summary (fence, copy rate), the copy time against two raw
COPYs of the same rows (to /dev/null; source → target into tables with the same indexes),
the second also timed while the mix runs (the move's copy competes with it for the same two
cores), and the mix's p50/p99 before and during the move.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import orjson

from deploy.localstack.stack import REPO_ROOT
from deploy.localstack.throwaway import throwaway_stack

LO, HI = 0, 127
_SEED = """
INSERT INTO users (user_name, role, given_name, family_name, birth_date)
SELECT n, 'patient', 'G', 'F', '1980-01-01'
FROM (SELECT 'bench.' || g AS n FROM generate_series(1, $1::int) g) s
WHERE medsvc_bucket(n) BETWEEN $2 AND $3
"""
_SEED_VISITS = """
INSERT INTO visits (visit_id, user_name, clinician, type, started_at, diagnoses, vitals)
SELECT gen_random_uuid(), u.user_name, 'dr.bench', 'outpatient', now() - (k || ' days')::interval,
       '[{"system":"ICD-10","code":"E11.9","display":"Type 2 diabetes mellitus"}]',
       '{"heartRate": 70, "systolic": 128, "diastolic": 82}'
FROM users u, generate_series(1, 4) k WHERE u.user_name LIKE 'bench.%'
"""


async def _psql(*args: str, stdin: Any = None, stdout: Any = asyncio.subprocess.DEVNULL) -> Any:
    return await asyncio.create_subprocess_exec(
        "psql", "-q", "-v", "ON_ERROR_STOP=1", *args, stdin=stdin, stdout=stdout
    )


async def raw_copies(src: str, dst: str) -> dict[str, float]:
    """Seconds to COPY the moving rows out (to /dev/null), and out of src into dst's tables."""
    out: dict[str, float] = {}
    started = time.monotonic()
    for table in ("users", "visits"):
        p = await _psql(
            src, "-c", f"COPY (SELECT * FROM {table} WHERE bucket BETWEEN {LO} AND {HI}) TO STDOUT"
        )
        await p.wait()
    out["copyToNull"] = time.monotonic() - started
    p = await _psql(
        dst,
        "-c",
        "CREATE TABLE bench_users (LIKE users INCLUDING ALL);"
        " CREATE TABLE bench_visits (LIKE visits INCLUDING ALL)",
    )
    await p.wait()
    started = time.monotonic()
    for table in ("users", "visits"):
        reader, writer = os.pipe()
        a = await _psql(
            src,
            "-c",
            f"COPY (SELECT * FROM {table} WHERE bucket BETWEEN {LO} AND {HI}) TO STDOUT",
            stdout=writer,
        )
        os.close(writer)
        b = await _psql(dst, "-c", f"COPY bench_{table} FROM STDIN", stdin=reader)
        os.close(reader)
        await asyncio.gather(a.wait(), b.wait())
    out["copyAcross"] = time.monotonic() - started
    p = await _psql(dst, "-c", "DROP TABLE bench_users, bench_visits")
    await p.wait()
    return out


class Mix:
    """The 90/10 mix (GET user / PATCH user) over ``names``; latencies per window."""

    def __init__(self, base_url: str, token: str, names: list[str]) -> None:
        self.base_url, self.token, self.names = base_url, token, names
        self.window: list[float] = []
        self.errors = 0
        self.stop = asyncio.Event()

    async def worker(self, http: aiohttp.ClientSession, seed: int) -> None:
        rnd = random.Random(seed)
        auth = {"Authorization": f"Bearer {self.token}"}
        while not self.stop.is_set():
            name = rnd.choice(self.names)
            started = time.perf_counter()
            if rnd.random() < 0.9:
                resp = await http.get(f"{self.base_url}/v1/users/{name}", headers=auth)
            else:
                resp = await http.patch(
                    f"{self.base_url}/v1/users/{name}",
                    data=orjson.dumps({"phone": f"+1-555-{seed:04d}"}),
                    headers={**auth, "Content-Type": "application/merge-patch+json"},
                )
            await resp.read()
            self.window.append(time.perf_counter() - started)
            if resp.status != 200:
                self.errors += 1

    def take(self) -> dict[str, float]:
        lat, self.window = sorted(self.window), []
        if not lat:
            return {"requests": 0}
        return {
            "requests": len(lat),
            "p50ms": round(1000 * lat[len(lat) // 2], 1),
            "p99ms": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
        }


async def main_async(opts: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_stack("medsvc-bench-move-") as stack:
        src = stack.postgres[0].dsn
        # 1/8 of the candidate names land in 128 of 1024 buckets; 4 visits each. A bulk load:
        # replica role, so no audit events (the ownership and bucket triggers still fire).
        conn = await asyncpg.connect(src)
        try:
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(_SEED, opts.visits * 2, LO, HI)
            await conn.execute(_SEED_VISITS)
        finally:
            await conn.close()
        new_id = await stack.add_shard()
        dst = stack.postgres[new_id].dsn
        raw = await raw_copies(src, dst)
        conn = await asyncpg.connect(src)
        names = [
            r["user_name"] for r in await conn.fetch("SELECT user_name FROM users LIMIT 20000")
        ]
        await conn.close()
        mix = Mix(stack.base_url, stack.token("admin", ["admin"]), names)
        async with aiohttp.ClientSession() as http:
            workers = [asyncio.create_task(mix.worker(http, i)) for i in range(opts.connections)]
            await asyncio.sleep(opts.before)
            before = mix.take()
            # The same raw COPY again, now competing with the mix for the CPU as the move will.
            raw_loaded = await raw_copies(src, dst)
            mix.take()  # (the mix's figures while that ran are no one's)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "resharder",
                "move",
                "--buckets",
                f"{LO}-{HI}",
                "--to",
                str(new_id),
                "--json",
                *(["--streams", str(opts.streams)] if opts.streams else []),
                cwd=REPO_ROOT,
                env=stack.python_env(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await proc.communicate()
            during = mix.take()
            mix.stop.set()
            await asyncio.gather(*workers)
        summary = orjson.loads(out.decode().strip().splitlines()[-1])
        copy_s = summary["phaseSeconds"]["copy"]
        return {
            "move": summary,
            "exit": proc.returncode,
            "rawCopySeconds": raw,
            "copyRatioToCopyToNull": round(raw["copyToNull"] / copy_s, 3),
            "copyRatioToCopyAcross": round(raw["copyAcross"] / copy_s, 3),
            "rawCopySecondsUnderMix": raw_loaded,
            "copyRatioToCopyAcrossUnderMix": round(raw_loaded["copyAcross"] / copy_s, 3),
            "mixBefore": before,
            "mixDuringMove": during,
            "mixErrors": mix.errors,
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.move",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--visits", type=int, default=100_000, help="visits in the moving buckets")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--before", type=float, default=10.0, help="seconds of mix before the move")
    parser.add_argument(
        "--streams", type=int, default=0, help="the resharder's --streams (0: its own choice)"
    )
    opts = parser.parse_args()
    result = asyncio.run(main_async(opts))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0 if result["exit"] == 0 and result["mixErrors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
