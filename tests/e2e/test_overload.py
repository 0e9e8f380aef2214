"""A burst far past saturation through nginx: the excess is shed cleanly, nothing collapses.

1,000 connections for 5 s (wrk, the 90/10 read/write mix of ``make bench``) against a stack
that lets 96 requests in flight through nginx and whose gateways admit 72 each
(nginx.conf.j2, shared/admission.py): many times what the machine serves. The burst must
leave no 502 or 504, every answer that is not a 2xx a 503 with Retry-After (a shed) or a 429
(the rate limit), no listen queue overflowing (the kernel's counter), and the stack serving
normally within a second after the burst. A second test sends clients that honour
Retry-After, which come back in waves: nginx must keep its connections to the gateways
through them (closing and reopening them spends the gateways' CPU on connections instead of
requests).

nginx's rate limit is raised for the burst (and put back after): wrk sends from one address,
and the point is overload, not rate limiting. The kernel's listen-overflow counter is
machine-wide: on a machine shared with other load tests it can move for their sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.loadgen import Load, WrkRun, wrk_binary
from bench.overload import listen_overflows
from tests.e2e.api import Api, unique

BURST_CONNECTIONS = 1000
BURST_SECONDS = 5.0
WAVE_SECONDS = 5.0


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


async def _shed_count(http, stack) -> float:  # type: ignore[no-untyped-def]
    total = 0.0
    for gw in stack.gateways:
        async with http.get(gw.url + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("medsvc_admission_shed_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.asynccontextmanager
async def _rate_limit_off(nginx) -> AsyncIterator[None]:  # type: ignore[no-untyped-def]
    """nginx's rate limit raised out of reach meanwhile (wrk sends from one address), then
    put back."""
    rate, burst = nginx.config.rate, nginx.config.burst
    nginx.config.rate = nginx.config.burst = 1_000_000
    await nginx.reload()
    await asyncio.sleep(1.0)  # the new workers take the new connections
    try:
        yield
    finally:
        nginx.config.rate, nginx.config.burst = rate, burst
        await nginx.reload()


def _gateway_connections(ports: set[int]) -> set[tuple[int, str]]:
    """The established TCP connections accepted on ``ports`` (the gateways'), by (port, peer),
    from /proc/net/tcp{,6} (state 01: established)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, peer, state = fields[1], fields[2], fields[3]
            port = int(local.rsplit(":", 1)[1], 16)
            if state == "01" and port in ports:
                out.add((port, peer))
    return out


async def _connection_churn(ports: set[int], at: float) -> tuple[int, int]:
    """(connections to the gateways at ``at`` s into the burst, how many of them were closed
    within the next second). (New ones may open meanwhile: the burst still ramping up.)"""
    await asyncio.sleep(at)
    before = _gateway_connections(ports)
    await asyncio.sleep(1.0)
    after = _gateway_connections(ports)
    return len(before), len(before - after)


async def _probe_during_burst(admin: Api, users: list[str], until: float) -> list[str]:
    """Requests of our own among wrk's: each non-2xx must be a proper shed or a 429."""
    wrong: list[str] = []
    i = 0
    while time.monotonic() < until:
        i += 1
        reply = await admin.call("GET", f"/v1/users/{users[i % len(users)]}")
        if reply.status == 200 or reply.status == 429:
            continue
        retry_after = reply.headers.get("Retry-After")
        if not (reply.status == 503 and retry_after and reply.problem):
            wrong.append(f"{reply.status} Retry-After={retry_after} {reply.body}")
    return wrong


async def test_a_burst_far_past_saturation_is_shed_without_collapse(
    admin: Api, stack, http, admin_token, tmp_path: Path
) -> None:
    wrk_binary()  # a clear failure when wrk is missing (make deps installs it)
    users = [(await admin.create_patient(unique("burst")))["userName"] for _ in range(16)]
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    for name in users:  # cached, as the fast path would have them
        assert (await admin.call("GET", f"/v1/users/{name}")).status == 200

    async with _rate_limit_off(stack.nginx):
        sheds_before = await _shed_count(http, stack)
        overflows_before = listen_overflows()
        load = Load(connections=BURST_CONNECTIONS, threads=1, duration=BURST_SECONDS, timeout=10)
        run = WrkRun(
            stack.base_url, "mix", [str(users_file), admin_token, "1"], load, BURST_SECONDS
        )
        await run.start()
        probe = asyncio.create_task(
            _probe_during_burst(admin, users, time.monotonic() + BURST_SECONDS - 1.0)
        )
        result = await run.result()
        ended = time.monotonic()

        # Serving normally within a second of the burst's end: a read and a write succeed.
        recovered = None
        while time.monotonic() - ended < 1.0:
            read = await admin.call("GET", f"/v1/users/{users[0]}")
            write = await admin.call(
                "POST",
                f"/v1/users/{users[1]}/visits",
                {"type": "outpatient", "startedAt": "2026-11-30T08:00:00Z"},
            )
            if read.status == 200 and write.status == 201:
                recovered = time.monotonic() - ended
                break
        overflows_after = listen_overflows()
        wrong = await probe
        sheds = await _shed_count(http, stack) - sheds_before

    statuses = result.statuses
    print(
        f"burst: statuses {statuses}, sheds counted by the gateways {sheds:.0f}, "
        f"wrk errors {result.errors}, recovered after {recovered} s"
    )
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    assert ok > 0, statuses
    assert statuses.get(502, 0) == 0 and statuses.get(504, 0) == 0, statuses
    not_ok = {s: n for s, n in statuses.items() if not 200 <= s < 300}
    assert set(not_ok) <= {429, 503}, statuses
    assert result.retry_after_503 == statuses.get(503, 0), "a 503 without Retry-After"
    assert statuses.get(503, 0) > 0, statuses  # it was overload (nginx or a gateway shed)
    assert result.errors["connect"] == 0, result.errors
    assert wrong == []
    assert overflows_before is not None and overflows_after == overflows_before, (
        f"listen queue overflows during the burst: {overflows_after - overflows_before}"  # type: ignore[operator]
    )
    assert recovered is not None, "the stack did not serve a read and a write within 1 s"
    # And it keeps serving: every one of a few more requests succeeds.
    for name in users:
        assert (await admin.call("GET", f"/v1/users/{name}")).status == 200


async def test_nginx_keeps_its_gateway_connections_through_waves_of_clients(
    admin: Api, stack, admin_token, tmp_path: Path
) -> None:
    """Clients that honour Retry-After come back in waves (the shed ones a second later, all
    at once): the requests in flight swing between the edge bound and a few. nginx must keep
    the connections to the gateways through the troughs (its idle pool holds every connection
    max_conns allows to every gateway); a pool of one edge bound for two gateways closed
    connections to one while opening new ones to the other, hundreds a second."""
    wrk_binary()
    users = [(await admin.create_patient(unique("waves")))["userName"] for _ in range(8)]
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    async with _rate_limit_off(stack.nginx):
        load = Load(connections=500, threads=1, duration=WAVE_SECONDS, timeout=10)
        run = WrkRun(
            stack.base_url, "get_user", [str(users_file), admin_token, "1"], load, WAVE_SECONDS,
            env={"BENCH_HONOUR_RETRY_AFTER": "1"},
        )  # fmt: skip
        await run.start()
        ports = {int(gw.url.rsplit(":", 1)[1]) for gw in stack.gateways}
        connections, closed = await _connection_churn(ports, 2.5)
        result = await run.result()
    print(f"waves: statuses {result.statuses}, connections to the gateways {connections}, "
          f"closed within a second {closed}")  # fmt: skip
    assert result.statuses.get(503, 0) > 0, result.statuses  # the edge did shed: waves
    assert connections > 0 and closed <= connections // 20, (connections, closed)
