"""``python -m bench.lean``: the client-side CPU of the gateway's two lean hops, per call.

Why: gateway/upstream.py (the FE hop) and shared/resp.py (the read cache's Redis commands)
exist to spend less CPU per request than aiohttp's client and redis-py's pool; this measures
that cost where it is paid, in the calling process, so a change to either can be compared
with the one before it (run it on both checkouts, one after the other).

- ``forward``: :func:`gateway.proxy.forward` to a hello-world (bench/hello.py, its own
  process) through one lean cluster member, ``--conc`` requests in flight.
- ``peek``: :meth:`shared.cache.ReadCache.peek` (one HGET) on a local Redis, one at a time
  and ``--conc`` at a time (those share a batch: one write, one read).

- ``parse``: the exchange objects alone, no socket (a transport that drops writes): one
  answer of 300 bytes (Content-Length, chunked) through ``_Exchange``, one HGET's reply
  (and eight in one read) through ``RespConnection``. Best of 5, wall clock, steadier than
  the rows above on a shared machine: the parsers' own cost.

The figure is this process's CPU (user + system, ``time.process_time``) over the calls, the
event loop (uvloop) included; the server's CPU is not counted. Each row is the median of
``--runs`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

from deploy.localstack.ports import free_port
from deploy.localstack.redis_server import RedisServer
from gateway.balancer import Cluster, Member
from gateway.proxy import forward
from gateway.upstream import _Exchange
from shared.cache import ReadCache
from shared.resp import RespConnection


async def _cpu_per_call(
    call: Callable[[], Awaitable[object]], n: int, conc: int, runs: int
) -> float:
    """The median over ``runs`` of this process's CPU µs per call, ``conc`` in flight."""
    figures = []
    for _ in range(runs + 1):  # the first run warms up
        left = iter(range(n))

        async def worker() -> None:
            for _ in left:
                await call()

        before = time.process_time()
        await asyncio.gather(*(worker() for _ in range(conc)))
        figures.append((time.process_time() - before) / n * 1e6)
    return statistics.median(figures[1:])


async def _wait_port(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError(f"nothing listens on {port}")


async def forward_row(n: int, conc: int, runs: int) -> float:
    port = free_port()
    hello = subprocess.Popen([sys.executable, "-m", "bench.hello", "--port", str(port)])
    try:
        await _wait_port(port)

        def session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15, sock_connect=2))

        cluster = Cluster(0, "user", [Member(f"http://127.0.0.1:{port}", session, lean=True)], 1)
        headers = {"Authorization": "Bearer x", "Accept": "application/json"}

        async def call() -> None:
            answer = await forward(cluster, "GET", "/v1/users/u1", headers, None)
            assert answer.status == 200, answer.status

        try:
            return await _cpu_per_call(call, n, conc, runs)
        finally:
            await cluster.close()
    finally:
        hello.terminate()
        hello.wait()


async def peek_rows(n: int, conc: int, runs: int) -> tuple[float, float]:
    base = Path(tempfile.mkdtemp(prefix="medsvc-bench-lean-"))
    server = RedisServer("redis-bench-lean", base, free_port(), base / "redis.log")
    try:
        await server.start()
        cache = ReadCache(server.url, 0)
        await cache.redis.hset("{g}", "f", b"x" * 300)  # type: ignore[union-attr]

        async def call() -> None:
            assert await cache.peek("user", "g", "f") is not None

        try:
            one = await _cpu_per_call(call, n, 1, runs)
            many = await _cpu_per_call(call, n, conc, runs)
        finally:
            await cache.close()
        return one, many
    finally:
        await server.stop()
        shutil.rmtree(base, ignore_errors=True)


class _NoTransport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


_ANSWERS = {
    "Content-Length": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: 300\r\nDate: Tue, 01 Dec 2026 17:00:00 GMT\r\n"
        b'Server: Python/3.11 aiohttp/3.14.5\r\nETag: "7"\r\n\r\n' + b"x" * 300
    ),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"100\r\n" + b"y" * 256 + b"\r\n2c\r\n" + b"z" * 44 + b"\r\n0\r\n\r\n"
    ),
}


async def parse_rows(n: int) -> None:
    exchange = _Exchange()
    exchange.connection_made(_NoTransport())  # type: ignore[arg-type]
    for name, answer in _ANSWERS.items():

        def one(answer: bytes = answer) -> None:
            future = exchange.send(b"GET / HTTP/1.1\r\n\r\n", False)
            exchange.data_received(answer)
            assert future.result()[0] == 200 and exchange.done()

        us = min(timeit.repeat(one, number=n, repeat=5)) / n * 1e6
        print(f"parse: HTTP answer, 300 B, {name}: {us:.2f} µs", flush=True)
    conn = RespConnection()
    conn.connection_made(_NoTransport())  # type: ignore[arg-type]
    reply = b"$300\r\n" + b"v" * 300 + b"\r\n"

    def hget(k: int) -> None:
        futures = conn.send([("HGET", "{g}", "f")] * k)
        conn.data_received(reply * k)
        assert futures[-1].result() is not None

    for k in (1, 8):
        us = min(timeit.repeat(lambda: hget(k), number=n // k, repeat=5)) / (n // k) / k * 1e6
        print(f"parse: HGET, {k} in one write and read: {us:.2f} µs per command", flush=True)


async def main(args: argparse.Namespace) -> None:
    if "parse" in args.rows:
        await parse_rows(args.n)
    if "forward" in args.rows:
        us = await forward_row(args.n, args.conc, args.runs)
        print(f"forward, {args.conc} in flight: {us:.1f} µs CPU per request", flush=True)
    if "peek" in args.rows:
        one, many = await peek_rows(args.n, args.conc, args.runs)
        print(f"peek (HGET), one at a time: {one:.1f} µs CPU per command", flush=True)
        print(f"peek (HGET), {args.conc} at a time: {many:.1f} µs CPU per command", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.lean", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="calls per run")
    parser.add_argument("--conc", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("rows", nargs="*", default=["forward", "peek", "parse"])
    uvloop.run(main(parser.parse_args()))
