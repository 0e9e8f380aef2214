"""Admission control: a bound on the requests in flight in one process, shed past it at once.

Why: a server that accepts every request it is sent queues the excess in its event loop,
where each waits behind all the others; past saturation every request gets slower, clients
time out and retry, and the work done for the timed-out ones is wasted (a metastable
failure). Bounding the requests in flight keeps the latency of the admitted ones near what
the process does at full speed, and the excess gets an immediate ``503`` with
``Retry-After`` and a problem body, *before* any work is done: a shed write has certainly
not been applied, so the client may simply send it again.

The bound is fixed (simple, and correct without tuning on a noisy shared machine), per
*class* of request, over one count of requests in flight: a request of a class is admitted
while fewer than that class's bound are in flight in all. A class with a higher bound is
shed last: the gateway gives the reads it may answer from the cache a higher bound than
the requests it must pass on, so that under overload writes and misses are refused first
and cached reads keep being served. The operations endpoints (/healthz, /readyz, /metrics)
are never shed: an overloaded process is alive, and its metrics are what shows it.

The middleware goes *first* in the application's list, ahead of logging and metrics: a
shed costs a counter increment and a small constant response.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web
from prometheus_client import Counter, Gauge

SHED = Counter(
    "medsvc_admission_shed_total",
    "Requests refused with 503 at once because the process had its bound of requests in"
    " flight, by request class",
    ["class"],
)
IN_FLIGHT = Gauge(
    "medsvc_admission_in_flight", "Requests in flight in this process (admitted, not answered)"
)
LIMIT = Gauge(
    "medsvc_admission_limit", "Bound of requests in flight for each request class", ["class"]
)

OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Seconds a shed client is told to wait: short, the excess of a burst clears in well under it.
RETRY_AFTER = 1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Classifier = Callable[[web.Request], str | None]


class Limiter:
    """One count of requests in flight and a bound for each class of request.

    Single-threaded (one asyncio loop): no lock is needed between the check and the count.
    """

    def __init__(self, limits: Mapping[str, int]) -> None:
        if not limits or min(limits.values()) < 1:
            raise ValueError(f"every class needs a bound of at least 1: {dict(limits)}")
        self.limits = dict(limits)
        self.in_flight = 0
        for klass, bound in self.limits.items():
            LIMIT.labels(klass).set(bound)

    def try_acquire(self, klass: str) -> bool:
        """Count one more request of ``klass`` in flight, or False when its bound is reached."""
        if self.in_flight >= self.limits[klass]:
            return False
        self.in_flight += 1
        IN_FLIGHT.set(self.in_flight)
        return True

    def release(self) -> None:
        """One admitted request has been answered."""
        self.in_flight -= 1
        IN_FLIGHT.set(self.in_flight)


_SHED_BODY = orjson.dumps({
    "type": "about:blank", "title": "Service Unavailable", "status": 503,
    "detail": "the server is at its bound of requests in flight and did not start this one;"
    " it has not been applied: retry after the Retry-After seconds",
})  # fmt: skip


def shed_response(request: web.Request) -> web.Response:
    """The immediate 503 of a request that was not admitted (RFC 9457, with Retry-After)."""
    rid = request.headers.get("X-Request-ID") or uuid.uuid4().hex
    return web.Response(
        status=503, body=_SHED_BODY, content_type="application/problem+json",
        headers={"Retry-After": str(RETRY_AFTER), "X-Request-ID": rid[:200]},
    )  # fmt: skip


def every_request(request: web.Request) -> str | None:
    """One class for every request but the operations endpoints (which are never shed)."""
    return None if request.path in OPERATIONS_PATHS else "request"


def admission_middleware(limiter: Limiter, classify: Classifier = every_request):  # type: ignore[no-untyped-def]
    """The middleware that admits a request under ``limiter`` or sheds it with a 503.

    ``classify`` names the request's class (a key of the limiter's bounds), or None for a
    request that is never shed.
    """

    @web.middleware
    async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
        klass = classify(request)
        if klass is None:
            return await handler(request)
        if not limiter.try_acquire(klass):
            SHED.labels(klass).inc()
            return shed_response(request)
        try:
            return await handler(request)
        finally:
            limiter.release()

    return admission
