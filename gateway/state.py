"""What the gateway keeps: the shard map, the token verifier, a cluster per shard and service."""

from __future__ import annotations

from aiohttp import web

from gateway.balancer import Cluster
from shared.auth import TokenVerifier
from shared.errors import Unavailable
from shared.shardmap import ShardMap

SHARD_MAP = web.AppKey("shard_map", ShardMap)
VERIFIER = web.AppKey("verifier", TokenVerifier)
CLUSTERS = web.AppKey("clusters", dict)


def cluster_for(app: web.Application, shard_id: int, service: str) -> Cluster:
    """The cluster serving ``service`` on ``shard_id`` (503 when the map lists none)."""
    cluster = app[CLUSTERS].get((shard_id, service))
    if cluster is None:
        raise Unavailable(f"shard {shard_id} has no {service} servers configured")
    return cluster
