"""RFC 9457 problem responses, and the middlewares every aiohttp app of the project uses.

``observe_middleware`` gives each request its id (the client's ``X-Request-ID`` or a new one),
echoes it, logs one access line and records metrics. ``error_middleware`` is the one path by
which errors become responses: :class:`~shared.errors.ServiceError`, pydantic's
``ValidationError``, aiohttp's HTTP exceptions, and anything unexpected (logged, answered
with a 500 that shows nothing internal).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from shared.appkeys import REQUEST_SHARD, SHARD_ID
from shared.errors import FieldError, MethodNotAllowed, ServiceError, Unavailable, ValidationFailed
from shared.logs import ACCESS, request_id_from, request_id_var
from shared.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = logging.getLogger("medsvc.http")

PROBLEM_TYPE = "application/problem+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: Iterable[FieldError] = (),
    headers: dict[str, str] | None = None,
    extensions: dict[str, object] | None = None,
) -> web.Response:
    """Build an ``application/problem+json`` response (RFC 9457 extension members last)."""
    body: dict[str, object] = {
        "type": "about:blank",
        "title": title or _REASONS.get(status, "Error"),
        "status": status,
        "detail": detail,
        **(extensions or {}),
    }
    errs = [{"field": e.field, "message": e.message} for e in errors]
    if errs:
        body["errors"] = errs
    resp = web.Response(status=status, body=orjson.dumps(body), headers=headers)
    resp.content_type = PROBLEM_TYPE
    return resp


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Translate pydantic's errors into API field errors (``address.postalCode``)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(p) for p in err["loc"]) or "body"
        out.append(FieldError(path, err["msg"]))
    return out


def error_to_response(exc: BaseException) -> web.Response:
    """Map any exception to its problem response (the single error path)."""
    if isinstance(exc, ValidationFailed):
        return problem(exc.status, exc.detail, errors=exc.errors)
    if isinstance(exc, Unavailable):
        return problem(exc.status, exc.detail, headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, MethodNotAllowed):
        return problem(exc.status, exc.detail, headers={"Allow": ", ".join(exc.allowed)})
    if isinstance(exc, ServiceError):
        return problem(exc.status, exc.detail, title=exc.title, extensions=exc.extensions)
    if isinstance(exc, ValidationError):
        return problem(
            422, "the request body or parameters are not valid", errors=field_errors(exc)
        )
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return problem(
            405,
            f"method {exc.method} is not allowed here",
            headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return problem(413, "the request body is larger than 1 MiB")
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return problem(exc.status, exc.reason or _REASONS.get(exc.status, "Error"))
    log.error("unexpected error", exc_info=exc, extra={"action": "http.unexpected_error"})
    return problem(500, "an unexpected error occurred; quote the X-Request-ID when reporting it")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error raised below into an RFC 9457 response."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_to_response(exc)
    except Exception as exc:  # noqa: BLE001 - the one place that answers for everything
        return error_to_response(exc)


def route_template(request: web.Request) -> str:
    """The matched route's template (bounded label), or ``unmatched``."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


# The labelled metric children by (route, method[, status]): ``labels()`` validates and locks
# on every call; the label sets are few (route templates), so each is looked up once.
_COUNTERS: dict[tuple[str, str, int], Any] = {}
_LATENCIES: dict[tuple[str, str], Any] = {}


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id in, request id out; one access log line and metrics per request."""
    rid = request_id_from(request.headers.get("X-Request-ID"))
    request_id_var.set(rid)
    started = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        resp.headers["X-Request-ID"] = rid
        return resp
    finally:
        elapsed = time.perf_counter() - started
        route = route_template(request)
        method = request.method
        if (counter := _COUNTERS.get((route, method, status))) is None:
            counter = _COUNTERS[(route, method, status)] = HTTP_REQUESTS.labels(
                route, method, str(status)
            )
        counter.inc()
        if (latency := _LATENCIES.get((route, method))) is None:
            latency = _LATENCIES[(route, method)] = HTTP_LATENCY.labels(route, method)
        latency.observe(elapsed)
        ACCESS.write({
            "action": "http.request",
            "method": method,
            "route": route,
            "status": status,
            "durationMs": round(elapsed * 1000, 2),
            # The gateway names the shard it chose; an FE server serves one shard.
            "shard": request.get(REQUEST_SHARD, request.app.get(SHARD_ID)),
        })  # fmt: skip
