"""``/v1/studies...``: researchers and admins, to the anonymizer API cluster.

Runs are started and read there; the records download is NDJSON, passed on as it comes.
(Study consent, ``/v1/users/{userName}/studies/{studyId}``, goes to the patient's shard.)
"""

from __future__ import annotations

from aiohttp import web

from gateway.central import CENTRAL
from gateway.proxy import forward
from gateway.state import VERIFIER
from shared import policy
from shared.errors import Unavailable


async def studies(request: web.Request) -> web.Response:
    policy.may_use_studies_api(request.app[VERIFIER].from_request(request))
    cluster = request.app[CENTRAL].get("anonymizer")
    if cluster is None:
        raise Unavailable("no anonymizer is configured", retry_after=30)
    body = await request.read() if request.body_exists else None
    # The anonymizer keeps the answers of keyed POSTs: a lost one may be sent again.
    up = await forward(cluster, request.method, request.raw_path, dict(request.headers), body,
                       keyed_posts=True)
    return up.response()
