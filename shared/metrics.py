"""Prometheus metrics shared by every process, and the ``/metrics`` handler.

Labels are bounded: route templates (never raw paths), shard ids (never userNames).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

HTTP_REQUESTS = Counter(
    "medsvc_http_requests_total",
    "HTTP requests served, by route template, method and status",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "medsvc_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


async def metrics_handler(request: web.Request) -> web.Response:
    """Serve the process's metrics in the Prometheus text format."""
    resp = web.Response(body=generate_latest())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
