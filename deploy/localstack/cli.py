"""``python -m deploy.localstack run|token|add-shard``: behind ``make run`` and ``make token``.

``add-shard``, beside a running ``make run``, asks it (SIGUSR1 to the pid in
``<base>/run.pid``) to start one more shard owning no bucket, and waits until the shard map
lists it with its FE servers: the running gateways and the anonymizer then know it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from shared.shardmap import load_shard_map

from .procs import ProcessError
from .stack import DEFAULT_JWT_SECRET, Stack, StackConfig
from .tokens import DEFAULT_TTL, make_token

log = logging.getLogger("localstack")

# `make run`'s internal ports: consecutive from here (clear of 5432 and 6379), so that the
# shard map and the DSNs stay the same from one start to the next.
RUN_PORT_BASE = 15400


def _banner(stack: Stack) -> str:
    token = stack.token("admin", ["admin"])
    lines = [
        "",
        "MedicalService is up.",
        f"  HTTP   {stack.base_url}",
        f"  HTTPS  {stack.https_url}   (self-signed: --cacert {stack.cert_path})",
        f"  logs   {stack.logs_dir}",
        *(
            [
                f"  Prometheus {stack.prometheus.url}  (targets: {stack.prometheus.url}/targets,"
                f" alerts: {stack.prometheus.url}/alerts)"
            ]
            if stack.prometheus
            else []
        ),
        f"  shard map {stack.shard_map_path}",
    ]
    for i, pg in stack.postgres.items():
        lines.append(f"  shard {i}: {pg.dsn}  {stack.redis[i].url}")
    lines += [
        f"  central: {stack.central_dsn}",
        "",
        "Admin token (12 h):",
        f"  {token}",
        "",
        "Try:",
        f"  curl -s -H 'Authorization: Bearer {token}' {stack.base_url}/v1/users/alice.smith",
        "",
        "Ctrl-C stops everything; the data stays in the base folder for the next start.",
        "",
    ]
    return "\n".join(lines)


async def _run(cfg: StackConfig) -> int:
    stack = Stack(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(stack.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("interrupted during start-up")
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        return 130
    if (exc := starting.exception()) is not None:
        log.error("%s", exc)
        return 1
    print(_banner(stack), flush=True)
    pid_file = stack.base_dir / "run.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    adding: set[asyncio.Task[int]] = set()

    async def add_shard() -> int:
        try:
            new_id = await stack.add_shard()
        except Exception as exc:  # noqa: BLE001 - reported; the running stack carries on
            log.error("adding a shard failed: %s", exc)
            raise
        print(
            f"shard {new_id} is up: {stack.postgres[new_id].dsn}  {stack.redis[new_id].url}",
            flush=True,
        )
        return new_id

    def on_add() -> None:
        task = asyncio.create_task(add_shard())
        adding.add(task)
        task.add_done_callback(adding.discard)

    loop.add_signal_handler(signal.SIGUSR1, on_add)
    await stopped
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    log.info("stopping")
    await stack.stop()
    log.info("all stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m deploy.localstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole stack until Ctrl-C")
    run.add_argument("--base-dir", type=Path, default=Path("var"), help="data, logs (./var)")
    run.add_argument("--shards", type=int, default=2)
    run.add_argument("--fe-per-shard", type=int, default=2)
    run.add_argument("--gateways", type=int, default=2)
    run.add_argument("--http-port", type=int, default=8080)
    run.add_argument("--https-port", type=int, default=8443)
    run.add_argument(
        "--port-base", type=int, default=RUN_PORT_BASE,
        help=f"first internal port ({RUN_PORT_BASE}); 0 = any free ports",
    )  # fmt: skip
    run.add_argument("--nginx-workers", default="1", help="nginx worker_processes (1, or auto)")
    run.add_argument("--jwt-secret", default=DEFAULT_JWT_SECRET)
    run.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")

    tok = sub.add_parser("token", help="print a bearer token")
    tok.add_argument("--sub", default="admin", help="the caller's userName")
    tok.add_argument(
        "--role", action="append", help="role, or roles a,b (repeatable; default admin)"
    )
    tok.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="seconds valid")
    tok.add_argument("--jwt-secret", default=DEFAULT_JWT_SECRET)

    add = sub.add_parser("add-shard", help="start one more shard beside a running `make run`")
    add.add_argument(
        "--base-dir", type=Path, default=Path("var"), help="the running stack's (./var)"
    )
    add.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it")

    args = parser.parse_args(argv)
    if args.command == "add-shard":
        return _add_shard(args.base_dir, args.timeout)
    if args.command == "token":
        roles = [r for arg in args.role or ["admin"] for r in arg.split(",") if r]
        print(make_token(args.jwt_secret, args.sub, roles, args.ttl))
        return 0

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    log.setLevel(logging.INFO)  # progress: each process as it starts and stops
    workers = int(args.nginx_workers) if args.nginx_workers.isdigit() else args.nginx_workers
    cfg = StackConfig(
        base_dir=args.base_dir, shards=args.shards, fe_per_shard=args.fe_per_shard,
        gateways=args.gateways, http_port=args.http_port, https_port=args.https_port,
        internal_port_base=args.port_base or None, nginx_workers=workers,
        jwt_secret=args.jwt_secret, prometheus=not args.no_prometheus, keep_map=True,
    )  # fmt: skip
    try:
        return asyncio.run(_run(cfg))
    except (ProcessError, OSError) as exc:
        print(f"localstack: {exc}", file=sys.stderr)
        return 1


def _add_shard(base_dir: Path, timeout: float) -> int:
    """Ask the running stack in ``base_dir`` for a new shard; wait until the map lists it."""
    try:
        pid = int((base_dir / "run.pid").read_text())
        before = load_shard_map(base_dir / "shardmap.json")
    except (OSError, ValueError) as exc:
        print(
            f"localstack: no running stack in {base_dir} ({exc}); start `make run` first",
            file=sys.stderr,
        )
        return 2
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        print(f"localstack: the stack (pid {pid}) is not running", file=sys.stderr)
        return 1
    known = {s.id for s in before.shards}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        with contextlib.suppress(OSError, ValueError):
            now = load_shard_map(base_dir / "shardmap.json")
            added = [s for s in now.shards if s.id not in known and s.members]
            if added:
                shard = added[0]
                print(f"shard {shard.id} added, owning no bucket (shard map version {now.version})")
                print(f"  postgres {shard.postgres}\n  redis    {shard.redis}")
                for url in sorted({u for urls in shard.members.values() for u in urls}):
                    print(f"  FE       {url}")
                print(
                    f"move buckets to it: python -m resharder move --buckets LO-HI --to {shard.id}"
                )
                return 0
    print(f"localstack: no new shard after {timeout:.0f} s; see {base_dir}/logs", file=sys.stderr)
    return 1
