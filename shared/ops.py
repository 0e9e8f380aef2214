"""The operations endpoints every process serves: /healthz, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from shared.appkeys import READINESS
from shared.metrics import metrics_handler
from shared.problems import problem

ReadinessCheck = Callable[[web.Application], Awaitable[None]]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when every registered check (database, cache, ...) passes."""
    for check in request.app.get(READINESS, []):
        try:
            await check(request.app)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return problem(503, f"not ready: {type(exc).__name__}", headers={"Retry-After": "1"})
    return web.json_response({"status": "ready"})


def setup_ops(app: web.Application, checks: list[ReadinessCheck]) -> None:
    """Mount the operations endpoints with the given readiness checks."""
    app[READINESS] = checks
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics_handler, allow_head=False)
