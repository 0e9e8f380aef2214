"""The central services behind the gateway: audit_service (``/v1/audit/...``).

Unlike the shards, a central service has one cluster for all users. The gateway
authenticates the caller and lets through only the roles that may use the service at all;
the service itself applies the finer rules (it verifies the token again).
"""

from __future__ import annotations

from aiohttp import web

from gateway.api import api_table
from gateway.appkeys import CENTRAL
from gateway.balancer import Cluster, Member, SessionFactory
from gateway.proxy import forward
from shared import policy
from shared.appkeys import VERIFIER
from shared.errors import Unavailable

# The shard label central clusters carry in the gateway's per-shard metrics.
CENTRAL_SHARD_LABEL = -1
# Who may use the audit API at all: whoever audit_service's contract lets call one of its
# operations (the service applies the finer rules).
AUDIT_ROLES = api_table().service_roles("audit")


def central_clusters(
    urls_by_service: dict[str, str], new_session: SessionFactory, cooldown: float
) -> dict[str, Cluster]:
    """One cluster per central service that has URLs (comma-separated)."""
    clusters = {}
    for service, urls in urls_by_service.items():
        members = [Member(u.strip().rstrip("/"), new_session) for u in urls.split(",") if u.strip()]
        if members:
            clusters[service] = Cluster(CENTRAL_SHARD_LABEL, service, members, cooldown)
    return clusters


async def audit(request: web.Request) -> web.Response:
    """``/v1/audit/...``: admins, auditors and clinicians, to the audit_service cluster."""
    principal = request.app[VERIFIER].from_request(request)
    policy.may_use_service(principal, AUDIT_ROLES, "the audit API")
    cluster = request.app[CENTRAL].get("audit")
    if cluster is None:
        raise Unavailable("no audit service is configured", retry_after=30)
    body = await request.read() if request.body_exists else None
    try:
        # audit_service keeps the answers of keyed POSTs: a lost one may be sent again.
        up = await forward(cluster, request.method, request.raw_path, dict(request.headers), body,
                           keyed_posts=True)
    except Unavailable as exc:
        raise Unavailable(
            "the audit service is unavailable (a POST may or may not have been recorded: "
            "retry it with the same eventId)", retry_after=exc.retry_after,
        ) from exc
    return up.response()
