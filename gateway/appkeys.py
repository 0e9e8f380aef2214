"""Typed application keys of the gateway: what its app holds besides the shared ones
(``shared.appkeys``: the shard map and the token verifier, the same keys every process uses)."""

from __future__ import annotations

from aiohttp import web

# (shard id, service) -> the Cluster of FE servers serving it (gateway/state.py cluster_for).
CLUSTERS = web.AppKey("gateway_clusters", dict)
# service -> the Cluster of a central service (audit, anonymizer) (gateway/central.py).
CENTRAL = web.AppKey("gateway_central_clusters", dict)
# The Routing (gateway/routing.py): the current map, its clusters and caches.
ROUTING = web.AppKey("gateway_routing", object)
# Seconds a request refused with 421 (its bucket moved, or is moving) is held and retried.
MOVE_HOLD = web.AppKey("gateway_move_hold", float)
# shard id -> the ReadCache the fast path peeks into (gateway/fastpath.py).
CACHES = web.AppKey("gateway_caches", dict)
# The OpenAPI document as served, encoded once (gateway/docs.py).
DOCUMENT = web.AppKey("gateway_openapi_document", bytes)
