"""``/v1/studies...``: researchers and admins, to the anonymizer API cluster.

Runs are started and read there. The records download (NDJSON, any size) is streamed: passed
on a chunk at a time as it comes, never held whole, with an idle timeout (no byte for
``RECORDS_IDLE_TIMEOUT`` seconds) instead of a total one, and ``X-Accel-Buffering: no`` so that
nginx passes it on as it comes too. (Study consent, ``/v1/users/{userName}/studies/{studyId}``,
goes to the patient's shard.)
"""

from __future__ import annotations

import logging
import re

import aiohttp
from aiohttp import web

from gateway.api import api_table
from gateway.appkeys import CENTRAL
from gateway.balancer import Cluster
from gateway.proxy import forward
from shared import policy
from shared.appkeys import VERIFIER
from shared.errors import Unavailable
from shared.logs import request_id_var

log = logging.getLogger("medsvc.gateway.records")

_RECORDS = re.compile(r"/v1/studies/[^/?]+/runs/[^/?]+/records")
RECORDS_IDLE_TIMEOUT = 60.0
_RECORDS_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=RECORDS_IDLE_TIMEOUT)
_CHUNK = 64 * 1024
_PASSED_ON = ("Content-Type", "ETag", "Retry-After")


# Who may use the studies API at all, from the anonymizer's contract.
STUDIES_ROLES = api_table().service_roles("anonymizer")


async def studies(request: web.Request) -> web.StreamResponse:
    principal = request.app[VERIFIER].from_request(request)
    policy.may_use_service(principal, STUDIES_ROLES, "the studies API")
    cluster = request.app[CENTRAL].get("anonymizer")
    if cluster is None:
        raise Unavailable("no anonymizer is configured", retry_after=30)
    if request.method == "GET" and _RECORDS.fullmatch(request.path):
        return await stream_records(request, cluster)
    body = await request.read() if request.body_exists else None
    # The anonymizer keeps the answers of keyed POSTs: a lost one may be sent again.
    up = await forward(
        cluster, request.method, request.raw_path, dict(request.headers), body, keyed_posts=True
    )
    return up.response()


async def _open(cluster: Cluster, request: web.Request) -> aiohttp.ClientResponse:
    """The records response of a live anonymizer (a GET: any failure moves to the next one)."""
    headers = {k: v for k in ("Authorization", "Accept") if (v := request.headers.get(k))}
    headers["X-Request-ID"] = request_id_var.get()
    for member in cluster.candidates():
        try:
            resp = await member.session.get(
                member.url + request.raw_path, headers=headers, timeout=_RECORDS_TIMEOUT
            )
        except (aiohttp.ClientError, TimeoutError):
            await cluster.mark_failed(member)
            continue
        cluster.mark_ok(member)
        return resp
    raise Unavailable("no anonymizer server is live", retry_after=5)


async def stream_records(request: web.Request, cluster: Cluster) -> web.StreamResponse:
    """Pass the records on as they come; memory holds one chunk, whatever the body's size."""
    async with await _open(cluster, request) as up:
        headers = {k: v for k in _PASSED_ON if (v := up.headers.get(k))}
        if up.status != 200:  # a problem document: small, passed on whole
            return web.Response(status=up.status, body=await up.read(), headers=headers)
        headers["X-Accel-Buffering"] = "no"
        headers["X-Request-ID"] = request_id_var.get()
        out = web.StreamResponse(status=200, headers=headers)
        if up.content_length is not None:
            out.content_length = up.content_length
        await out.prepare(request)
        try:
            async for chunk in up.content.iter_chunked(_CHUNK):
                await out.write(chunk)
            await out.write_eof()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # Upstream failed or the client left. The status is sent: the only honest signal
            # left is a cut connection (the client sees a body shorter than its
            # Content-Length, or no final chunk).
            log.warning(
                "records stream cut",
                extra={"action": "gateway.records_cut", "error": type(exc).__name__},
            )
            if request.transport is not None:
                request.transport.close()
        return out
