"""Admission control (shared/admission.py) over real HTTP, the retry budget and the slow-Redis rule.

The middleware runs in a real aiohttp server on a free port; the handler records that it ran
and waits on an event, so that the test controls exactly how many requests are in flight.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import CACHED_READ, OTHER, request_class
from gateway.retrybudget import RetryBudget
from shared.admission import Limiter, admission_middleware
from shared.cache import Breaker


async def _server(limits: dict[str, int], classify) -> tuple[TestServer, list[str], asyncio.Event]:  # type: ignore[no-untyped-def]
    started: list[str] = []
    release = asyncio.Event()

    async def work(request: web.Request) -> web.Response:
        started.append(request.path)
        await release.wait()
        return web.json_response({"ok": True})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="m")

    app = web.Application(middlewares=[admission_middleware(Limiter(limits), classify)])
    app.router.add_route("*", "/v1/{tail:.*}", work)
    app.router.add_get("/metrics", metrics)
    server = TestServer(app, port=0)
    await server.start_server()
    return server, started, release


async def test_past_the_bound_a_request_is_shed_at_once_and_not_run() -> None:
    server, started, release = await _server(
        {"request": 3}, lambda r: None if r.path == "/metrics" else "request"
    )
    try:
        async with aiohttp.ClientSession() as http:
            held = [asyncio.create_task(http.post(server.make_url(f"/v1/w{i}"))) for i in range(3)]
            while len(started) < 3:
                await asyncio.sleep(0.01)
            async with http.post(
                server.make_url("/v1/extra"), headers={"X-Request-ID": "r-1"}
            ) as resp:
                body = await resp.json(content_type=None)
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert resp.headers["Content-Type"].startswith("application/problem+json")
                assert resp.headers["X-Request-ID"] == "r-1"
                assert body["status"] == 503 and body["title"] == "Service Unavailable"
                assert "not been applied" in body["detail"]
            assert "/v1/extra" not in started  # shed before any work
            async with http.get(server.make_url("/metrics")) as resp:  # never shed
                assert resp.status == 200
            release.set()
            for task in held:
                resp = await task
                assert resp.status == 200
                resp.release()
            async with http.post(server.make_url("/v1/after")) as resp:  # the slots came back
                assert resp.status == 200
    finally:
        release.set()
        await server.close()


async def test_cached_reads_are_shed_last() -> None:
    """With the lower bound reached, other requests are shed while cached reads still enter."""
    server, started, release = await _server({OTHER: 2, CACHED_READ: 4}, request_class)
    try:
        async with aiohttp.ClientSession() as http:
            held = [
                asyncio.create_task(http.post(server.make_url(f"/v1/users/u{i}/visits")))
                for i in range(2)
            ]
            while len(started) < 2:
                await asyncio.sleep(0.01)
            async with http.post(server.make_url("/v1/users/x/visits")) as resp:
                assert resp.status == 503
            async with http.get(server.make_url("/v1/users")) as resp:  # a search: not cached
                assert resp.status == 503
            reads = [
                asyncio.create_task(http.get(server.make_url(f"/v1/users/r{i}"))) for i in range(2)
            ]
            while len(started) < 4:
                await asyncio.sleep(0.01)
            async with http.get(server.make_url("/v1/users/r9")) as resp:  # now the read bound
                assert resp.status == 503
            release.set()
            for task in held + reads:
                resp = await task
                assert resp.status == 200
                resp.release()
    finally:
        release.set()
        await server.close()


def test_a_limiter_needs_positive_bounds() -> None:
    for bad in ({}, {"request": 0}):
        try:
            Limiter(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_retries_stay_a_fraction_of_requests() -> None:
    clock = _Clock()
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, cap=10.0, clock=clock)
    # The starting allowance lets a quiet gateway fail over when a member dies...
    assert all(budget.admit(1) for _ in range(10))
    assert not budget.admit(1)
    # ...then 1,000 requests earn 100 retries, and no more.
    allowed = 0
    for _ in range(1000):
        assert budget.admit(0)
        if budget.admit(1):
            allowed += 1
    assert 95 <= allowed <= 100


def test_the_retry_budget_refills_slowly_with_time() -> None:
    clock = _Clock()
    budget = RetryBudget(ratio=0.1, min_per_second=2.0, cap=10.0, clock=clock)
    while budget.admit(1):
        pass
    clock.now += 1.0
    assert budget.admit(1) and budget.admit(1) and not budget.admit(1)
    clock.now += 3600.0  # never more than the cap
    assert sum(budget.admit(1) for _ in range(20)) == 10


def test_a_slow_redis_does_not_open_the_breaker_while_it_still_answers() -> None:
    breaker = Breaker(cooldown=1.0, slow_window=0.2)
    breaker.ok()
    assert not breaker.read_timed_out() and breaker.allows()  # one timeout: that read only
    breaker.last_ok = time.monotonic() - 0.5  # nothing answered for longer than the window
    assert breaker.read_timed_out()
    assert not breaker.allows()  # open for the cool-down: reads go to PostgreSQL


def test_nginx_lets_through_what_the_gateways_admit_together() -> None:
    """The edge bounds follow the gateways' own (two thirds: room for an uneven split), so
    nginx never sends the gateways more than they admit nor opens more connections than they
    can accept (deploy/nginx/nginx.conf.j2)."""
    from pathlib import Path

    from deploy.localstack.nginx import NginxConfig
    from shared.settings import GatewaySettings

    gw = GatewaySettings()
    for n in (1, 2, 3):
        text = NginxConfig(
            run_dir=Path("/tmp/x"),
            http_port=1,
            https_port=2,
            ops_port=3,
            cert=Path("/c"),
            key=Path("/k"),
            gateways=[f"127.0.0.1:{9000 + i}" for i in range(n)],
        ).render()
        every, uncached = n * gw.max_in_flight_cached * 2 // 3, n * gw.max_in_flight * 2 // 3
        assert (every, uncached) == (48 * n, 32 * n)
        assert f"limit_conn inflight {every};" in text
        assert f"limit_conn inflight_uncached {uncached};" in text
        assert text.count(f"max_fails=3 fail_timeout=2s max_conns={every};") == n
        assert f"keepalive {every * n};" in text  # every connection max_conns allows, kept
        assert "proxy_next_upstream error;" in text  # never on a timeout: no doubled load


def test_nginx_follows_bounds_the_gateways_are_started_with(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A stack whose gateways get MEDSVC_MAX_IN_FLIGHT(_CACHED) sizes nginx from the same
    values the gateways' settings parse, not from the defaults."""
    from pathlib import Path

    from deploy.localstack.nginx import NginxConfig, gateway_bounds
    from shared.settings import GatewaySettings

    env = {"MEDSVC_MAX_IN_FLIGHT": "30", "MEDSVC_MAX_IN_FLIGHT_CACHED": "150"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    gw = GatewaySettings()
    assert (gw.max_in_flight, gw.max_in_flight_cached) == (30, 150)
    text = NginxConfig(
        run_dir=Path("/tmp/x"), http_port=1, https_port=2, ops_port=3, cert=Path("/c"),
        key=Path("/k"), gateways=["127.0.0.1:9000", "127.0.0.1:9001"], **gateway_bounds(env),
    ).render()  # fmt: skip
    assert f"limit_conn inflight {2 * gw.max_in_flight_cached * 2 // 3};" in text
    assert f"limit_conn inflight_uncached {2 * gw.max_in_flight * 2 // 3};" in text
    assert gateway_bounds({}) == {
        "gateway_in_flight": GatewaySettings.model_fields["max_in_flight"].default,
        "gateway_in_flight_cached": GatewaySettings.model_fields["max_in_flight_cached"].default,
    }
