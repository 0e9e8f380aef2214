"""Passing one request to an FE cluster: retries where they are safe, 503 where none is live."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.balancer import Cluster
from gateway.metrics import MEMBERS_DOWN, UPSTREAM_LATENCY, UPSTREAM_REQUESTS
from gateway.retrybudget import BUDGET
from gateway.upstream import ConnectFailed, ExchangeFailed
from shared.errors import Unavailable
from shared.logs import request_id_var

log = logging.getLogger("medsvc.gateway")

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_FORWARD_REQUEST = ("Authorization", "Content-Type", "If-Match", "Accept", "Idempotency-Key")
_FORWARD_RESPONSE = (
    "Content-Type",
    "ETag",
    "Location",
    "Retry-After",
    "Allow",
    "Idempotent-Replayed",
)


# The labelled metric children by (shard, service[, outcome]): ``labels()`` validates and
# locks on every call; the label sets are few, so each is looked up once.
_REQUESTS: dict[tuple[str, str, str], Any] = {}
_LATENCIES: dict[tuple[str, str], Any] = {}


def retry_safe(method: str, headers: CIMultiDict[str], keyed_posts: bool) -> bool:
    """May a request whose connection was lost after sending be sent again?

    Idempotent methods; and, where the cluster honours keys (``keyed_posts``), a POST carrying
    an Idempotency-Key: the FE server stores the key with the write in one transaction, so a
    second attempt replays the first one's answer (or waits for it) instead of writing again.
    A POST without a key never is.
    """
    if method in IDEMPOTENT:
        return True
    return keyed_posts and method == "POST" and "Idempotency-Key" in headers


@dataclass
class Upstream:
    """An FE cluster's answer."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers)


async def forward(
    cluster: Cluster,
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    keyed_posts: bool = False,
) -> Upstream:
    """Send the request to a live member of ``cluster``, failing over where that is safe.

    A refused connection never reached a server, so any method moves on to the next member.
    A connection lost after sending is retried only where :func:`retry_safe` says so: a POST
    without an Idempotency-Key, or a PATCH, may have committed, so its caller gets 503 rather
    than a second write.
    """
    shard, service = str(cluster.shard_id), cluster.service
    # Header names are case-insensitive, whatever the client sent (a request's own headers
    # are already a case-insensitive mapping).
    given = headers if isinstance(headers, CIMultiDictProxy | CIMultiDict) else CIMultiDict(headers)
    out_headers = CIMultiDict((k, v) for k in _FORWARD_REQUEST if (v := given.get(k)) is not None)
    out_headers["X-Request-ID"] = request_id_var.get()
    for attempt, member in enumerate(cluster.candidates()):
        if not BUDGET.admit(attempt):  # retries stay a fraction of requests (retrybudget.py)
            raise Unavailable(
                f"a shard {shard} {service} server failed and retries are paused (retry "
                "budget spent); the request was not applied elsewhere", retry_after=1,
            )  # fmt: skip
        started = time.perf_counter()
        try:
            if member.upstream is not None:
                # The path goes out exactly as the routes checked it.
                status, answer, payload = await member.upstream.request(
                    method, path_qs, out_headers.items(), body
                )
            else:
                # encoded=True: the member gets exactly the path the routes checked; a plain
                # URL string would be normalised again by yarl (dot-segments collapsed).
                async with member.session.request(
                    method, URL(member.url + path_qs, encoded=True), headers=out_headers,
                    data=body,
                ) as resp:
                    payload = await resp.read()
                status, answer = resp.status, CIMultiDict(resp.headers)
        except (aiohttp.ClientConnectorError, ConnectFailed) as exc:
            outcome, retry = "refused", True
            error: Exception = exc
        except (aiohttp.ClientError, ExchangeFailed, OSError, asyncio.TimeoutError) as exc:
            outcome, retry = "lost", retry_safe(method, out_headers, keyed_posts)
            error = exc
        else:
            cluster.mark_ok(member)
            _requests(shard, service, str(status)).inc()
            if (latency := _LATENCIES.get((shard, service))) is None:
                latency = _LATENCIES[(shard, service)] = UPSTREAM_LATENCY.labels(shard, service)
            latency.observe(time.perf_counter() - started)
            kept = CIMultiDict((k, v) for k in _FORWARD_RESPONSE if (v := answer.get(k)))
            return Upstream(status, kept, payload)
        _requests(shard, service, outcome).inc()
        await cluster.mark_failed(member)
        MEMBERS_DOWN.labels(shard, service).set(
            sum(not m.live(time.monotonic()) for m in cluster.members)
        )
        log.warning(
            "member failed",
            extra={
                "action": "gateway.member_failed",
                "member": member.url,
                "shard": cluster.shard_id,
                "service": service,
                "error": type(error).__name__,
                "outcome": outcome,
            },
        )
        if not retry:
            raise Unavailable(
                f"shard {shard} lost the connection during a {method}; it may or may not have "
                "been applied: read the resource before retrying"
            ) from error
    raise Unavailable(f"shard {shard} has no live {service} server", retry_after=5)


def _requests(shard: str, service: str, outcome: str) -> Any:
    """The UPSTREAM_REQUESTS child of these labels."""
    if (counter := _REQUESTS.get((shard, service, outcome))) is None:
        counter = _REQUESTS[(shard, service, outcome)] = UPSTREAM_REQUESTS.labels(
            shard, service, outcome
        )
    return counter
