"""The gateway's view of the shards: the watched shard map and a cluster (and read cache) per
shard, grown in place when a new map version lists a new shard or new members.

The dicts of clusters and caches are the same objects for the life of the process (the routes
and the cached-read path hold them through app keys); a new map adds or replaces entries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from gateway.balancer import Cluster, Member, SessionFactory
from shared.cache import ReadCache
from shared.shardmap import MapWatcher, ShardMap

log = logging.getLogger("medsvc.gateway")


class Routing:
    """The current map and what it takes to reach each of its shards."""

    def __init__(
        self,
        watcher: MapWatcher,
        new_session: SessionFactory,
        cooldown: float,
        cache: bool,
        cache_credentials: Mapping[str, str | None] | None = None,
    ) -> None:
        self.watcher = watcher
        self._new_session = new_session
        self._cooldown = cooldown
        self._cache = cache
        self._cache_credentials = dict(cache_credentials or {})
        self.clusters: dict[tuple[int, str], Cluster] = {}
        self.caches: dict[int, ReadCache] = {}
        self._retired: list[Cluster] = []
        self._sync(watcher.current)
        watcher.on_change(self._sync)

    @property
    def map(self) -> ShardMap:
        return self.watcher.current

    def _sync(self, shard_map: ShardMap) -> None:
        for shard in shard_map.shards:
            for service, urls in shard.members.items():
                wanted = [u.rstrip("/") for u in urls]
                old = self.clusters.get((shard.id, service))
                if old is not None and [m.url for m in old.members] == wanted:
                    continue
                # The FE servers' hop: lean request/response exchanges (gateway/upstream.py).
                members = [Member(u, self._new_session, lean=True) for u in wanted]
                self.clusters[(shard.id, service)] = Cluster(
                    shard.id, service, members, self._cooldown
                )
                if old is not None:
                    self._retired.append(old)
                log.info(
                    "shard cluster added",
                    extra={
                        "action": "gateway.cluster_added",
                        "shard": shard.id,
                        "service": service,
                    },
                )
            if self._cache and shard.redis and shard.id not in self.caches:
                self.caches[shard.id] = ReadCache(shard.redis, shard.id, **self._cache_credentials)

    async def close(self) -> None:
        for cluster in [*self.clusters.values(), *self._retired]:
            await cluster.close()
        await asyncio.gather(*(c.close() for c in self.caches.values()), return_exceptions=True)
