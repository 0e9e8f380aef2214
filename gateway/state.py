"""A cluster per shard and service: what the gateway sends a shard's requests to."""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import CLUSTERS
from gateway.balancer import Cluster
from shared.errors import Unavailable


def cluster_for(app: web.Application, shard_id: int, service: str) -> Cluster:
    """The cluster serving ``service`` on ``shard_id`` (503 when the map lists none)."""
    cluster = app[CLUSTERS].get((shard_id, service))
    if cluster is None:
        raise Unavailable(f"shard {shard_id} has no {service} servers configured")
    return cluster
