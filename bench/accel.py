"""``python -m bench.accel``: what nginx carrying a cache-off GET user to the FE server would save.

Why: issue 16 weighs letting nginx carry the bytes once the gateway has decided (nginx
``auth_request`` to the gateway, then a proxy to the owning shard's FE servers) instead of
the gateway forwarding every request itself. That design would have to keep every failure
mode the gateway handles today (421 re-routing on a stale map, holding during a move's
fence, retrying another FE member, admission shedding), so it is not built; this measures,
on a throwaway stack with the cache off, what it could save at best.

Two nginx configurations, the same apart from the routing, in front of the same stack
(2 shards × 2 FE servers, PostgreSQL durable, ``MEDSVC_CACHE=false``), each driven by wrk
with ``bench/wrk/get_user.lua`` in turn (``--rounds`` times, interleaved):

- ``gateway``: nginx → the two gateways → FE servers (today's path);
- ``accel``: nginx asks a *decider* (``/_decide/...``: the gateway application itself, with
  one more route that authenticates, applies the path-level role check and picks the shard
  exactly as the gateway's ``user_scoped`` does, then answers 204 with the shard in a
  header) and proxies the request to that shard's FE servers (an nginx upstream per shard,
  rendered from the shard map). Two decider processes stand in for the two gateways.

Each row gives the rate and the CPU per request of every component (process trees, from
/proc), as the bench's own table does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.loadgen import Load, WrkRun
from bench.procstat import tree_cpu_seconds
from deploy.localstack import binaries
from deploy.localstack.ports import free_port
from deploy.localstack.throwaway import throwaway_stack
from shared.types import USER_NAME_PATTERN

_USER_NAME = re.compile(USER_NAME_PATTERN)

_NGINX = """
worker_processes 1;
error_log {run}/error.log warn;
pid {run}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {run}/tmp;
    proxy_temp_path {run}/tmp;
    keepalive_timeout 65s;
    keepalive_requests 10000;
    upstream gateways {{
        {gateways}
        keepalive 64; keepalive_requests 100000;
    }}
    {shards}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            {route}
        }}
        location = /_decide {{
            internal;
            proxy_pass http://gateways/_decide$request_uri;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
_VIA_GATEWAY = """proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""
_ACCEL = """auth_request /_decide;
            auth_request_set $medsvc_shard $upstream_http_x_medsvc_shard;
            proxy_pass http://fe_shard_$medsvc_shard;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""


def decider_main(port: int) -> None:
    """The gateway application with one more route, ``/_decide/v1/users/{userName}``."""
    from gateway.app import create_app
    from gateway.appkeys import ROUTING
    from gateway.routes import caller
    from shared import policy
    from shared.errors import NotFound
    from shared.logs import setup_logging
    from shared.runner import run_app
    from shared.settings import GatewaySettings, load
    from shared.shardmap import load_shard_map

    async def decide(request: web.Request) -> web.Response:
        # What user_scoped (gateway/routes.py) does before it forwards a GET user.
        principal = caller(request)
        user_name = request.match_info["userName"]
        policy.may_use_users_api(principal, user_name)
        if not _USER_NAME.fullmatch(user_name):
            raise NotFound(f"user {user_name[:64]} does not exist")
        shard_id = request.app[ROUTING].map.shard_id_for(user_name)  # type: ignore[attr-defined]
        return web.Response(status=204, headers={"X-Medsvc-Shard": str(shard_id)})

    settings = load(GatewaySettings, port=port, host=None)
    setup_logging(f"decider-{port}", settings.log_level)
    app = create_app(settings, load_shard_map(settings.shard_map))
    app.router.add_get("/_decide/v1/users/{userName}", decide)
    run_app(app, settings.host, settings.port)


async def _start(argv: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=out, stderr=out, start_new_session=True
        )


async def _wait_http(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(url) as resp:
                    await resp.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} does not answer")


async def run(rounds: int, duration: float, users: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="medsvc-bench-accel-"))
    work.chmod(0o755)
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with throwaway_stack(
            "medsvc-bench-accel-stack-", shards=2, fe_per_shard=2, gateways=2, fast=False,
            extra_env={"MEDSVC_CACHE": "false"},
        ) as stack:  # fmt: skip
            env = {**(stack.gateways[0].env or {}), "MEDSVC_CACHE": "false"}
            deciders = [free_port(), free_port()]
            for port in deciders:
                procs.append(await _start(
                    [stack.config.python, "-m", "bench.accel", "decider", "--port", str(port)],
                    env, work / f"decider-{port}.log",
                ))  # fmt: skip
            for port in deciders:
                await _wait_http(f"http://127.0.0.1:{port}/healthz")
            ports: dict[str, int] = {}
            for name in ("gateway", "accel"):
                run_dir = work / name
                (run_dir / "tmp").mkdir(parents=True)
                os.chmod(run_dir / "tmp", 0o777)
                ports[name] = free_port()
                via = stack.gateways if name == "gateway" else None
                upstreams = (
                    [f"127.0.0.1:{g.port}" for g in via] if via
                    else [f"127.0.0.1:{p}" for p in deciders]
                )  # fmt: skip
                shards = "\n    ".join(
                    f"upstream fe_shard_{i} {{ "
                    + " ".join(f"server 127.0.0.1:{fe.port};" for fe in fes)
                    + " keepalive 64; keepalive_requests 100000; }"
                    for i, fes in stack.fe.items()
                )
                (run_dir / "nginx.conf").write_text(_NGINX.format(
                    run=run_dir, port=ports[name], shards=shards,
                    gateways=" ".join(f"server {u};" for u in upstreams),
                    route=_VIA_GATEWAY if name == "gateway" else _ACCEL,
                ))  # fmt: skip
                procs.append(await _start(
                    [binaries.nginx(), "-p", str(run_dir), "-c", str(run_dir / "nginx.conf"),
                     "-g", "daemon off;"], dict(os.environ), run_dir / "stdout.log",
                ))  # fmt: skip
            token = stack.token("bench.admin", ["admin"])
            headers = {"Authorization": f"Bearer {token}"}
            names = [f"bench.accel.{i}" for i in range(users)]
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32)
            ) as http:  # fmt: skip
                sem = asyncio.Semaphore(16)

                async def create(name: str) -> None:
                    body = {"userName": name, "role": "patient", "givenName": "P",
                            "familyName": "Q", "birthDate": "1980-04-02"}  # fmt: skip
                    async with sem, http.post(f"{stack.base_url}/v1/users", json=body,
                                              headers=headers) as resp:  # fmt: skip
                        assert resp.status == 201, await resp.text()

                await asyncio.gather(*(create(n) for n in names))
                for name in ("gateway", "accel"):
                    url = f"http://127.0.0.1:{ports[name]}/v1/users/{names[0]}"
                    async with http.get(url, headers=headers) as resp:
                        body_bytes = await resp.read()
                        if resp.status != 200:
                            logs = [work / name / "error.log", *work.glob("decider-*.log")]
                            raise RuntimeError(f"{name}: {resp.status} {body_bytes[:300]!r}\n"
                                               + "\n".join(f.read_text()[-2000:] for f in logs))
            users_file = work / "users.txt"
            users_file.write_text("\n".join(names) + "\n")
            groups: dict[str, list[int]] = {
                "nginx": [], "gateway": [g.pid for g in stack.gateways if g.pid],
                "decider": [p.pid for p in procs[:2]],
                "fe": [fe.pid for fes in stack.fe.values() for fe in fes if fe.pid],
                "postgres": [pg.pid for pg in stack.postgres.values() if pg.pid],
            }  # fmt: skip
            nginx_pid = {"gateway": procs[2].pid, "accel": procs[3].pid}
            figures: dict[str, list[dict[str, float]]] = {"gateway": [], "accel": []}
            load = Load(connections=50, threads=1, duration=duration)
            for r in range(rounds):
                for name in ("gateway", "accel"):
                    base = f"http://127.0.0.1:{ports[name]}"
                    warm = WrkRun(base, "get_user", [str(users_file), token, "1"], load, 2.0)
                    await warm.start()
                    await warm.result()
                    groups["nginx"] = [nginx_pid[name]]
                    pids = [p for ps in groups.values() for p in ps]
                    wrk = WrkRun(base, "get_user", [str(users_file), token, str(r + 2)], load,
                                 duration)  # fmt: skip
                    await wrk.start()
                    before = tree_cpu_seconds([*pids, wrk.pid])
                    result = await wrk.result()
                    after = tree_cpu_seconds(pids)
                    n = max(result.requests, 1)
                    row: dict[str, float] = {"rate": result.rate,
                                             "p99": result.percentile_ms("99")}  # fmt: skip
                    for group, members in groups.items():
                        row[group] = 1e6 * sum(
                            after.get(p, 0.0) - before.get(p, 0.0) for p in members
                        ) / n
                    row["non2xx"] = result.non_2xx + result.socket_errors
                    figures[name].append(row)
                    print(f"round {r + 1} {name:<8} " + "  ".join(
                        f"{k} {v:,.0f}" for k, v in row.items()), flush=True)  # fmt: skip
            print("\nmedians (µs of CPU per request; rate in req/s)")
            for name, rows in figures.items():
                print(f"{name:<8} " + "  ".join(
                    f"{k} {statistics.median(r[k] for r in rows):,.0f}" for k in rows[0]
                ))  # fmt: skip
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.accel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("decider", help="(internal) run one decider process")
    d.add_argument("--port", type=int, required=True)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (10)")
    p.add_argument("--users", type=int, default=1000, help="patients to create (1000)")
    a = p.parse_args(argv)
    if a.command == "decider":
        decider_main(a.port)
        return
    random.seed(1)
    asyncio.run(run(a.rounds, a.duration, a.users))


if __name__ == "__main__":
    main()
