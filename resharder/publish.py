"""Publishing a new shard map version: the map file every process watches.

Locally (``make run``, the tests) the file is rewritten atomically. In Kubernetes the file is
a ConfigMap volume: the resharder patches the ConfigMap through the API server (its service
account may patch that one ConfigMap, deploy/k8s/base/resharder-job.yaml), and the kubelet
refreshes the mounted file in every pod; until then a pod with the old map is refused by the
old owner (421) and its requests wait, so a slow refresh costs latency, never correctness.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from shared.shardmap import ShardMap, load_shard_map, write_shard_map

_SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def next_map(current: ShardMap, lo: int, hi: int, target: int) -> ShardMap | None:
    """The next version giving ``lo..hi`` to ``target``; None when ``current`` already does."""
    owners = current.owners()
    if all(owners[b] == target for b in range(lo, hi + 1)):
        return None
    return current.with_owner(lo, hi, target)


async def current_map(map_path: str, configmap: str = "") -> ShardMap:
    """The map in force: the ConfigMap's (the mounted file may lag behind it), or the file's."""
    if not configmap:
        return load_shard_map(map_path)
    async with _api() as (session, base, ctx):
        async with session.get(f"{base}/{configmap}", ssl=ctx) as resp:
            if resp.status != 200:
                raise RuntimeError(f"reading ConfigMap {configmap} failed: {resp.status}")
            doc = await resp.json()
    return ShardMap.model_validate_json(doc["data"]["shardmap.json"])


async def publish(map_path: str, lo: int, hi: int, target: int, configmap: str = "") -> int:
    """Publish the map with ``lo..hi`` on ``target``; return the version now in force."""
    current = await current_map(map_path, configmap)
    new = next_map(current, lo, hi, target)
    if new is None:
        return current.version
    if configmap:
        await _patch_configmap(configmap, new)
    else:
        write_shard_map(map_path, new)
    return new.version


@contextlib.asynccontextmanager
async def _api() -> AsyncIterator[tuple[aiohttp.ClientSession, str, ssl.SSLContext]]:
    """A session to the API server with this pod's service account, and the ConfigMaps URL."""
    namespace = (_SA / "namespace").read_text().strip()
    token = (_SA / "token").read_text().strip()
    ctx = ssl.create_default_context(cafile=str(_SA / "ca.crt"))
    base = f"https://kubernetes.default.svc/api/v1/namespaces/{namespace}/configmaps"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        yield session, base, ctx


async def _patch_configmap(name: str, shard_map: ShardMap) -> None:
    """Merge-patch the ConfigMap ``name`` in this pod's namespace with the new map."""
    body = {"data": {"shardmap.json": shard_map.model_dump_json(indent=2) + "\n"}}
    async with _api() as (session, base, ctx), session.patch(
        f"{base}/{name}", data=json.dumps(body), ssl=ctx,
        headers={"Content-Type": "application/merge-patch+json"},
    ) as resp:  # fmt: skip
        if resp.status >= 300:
            raise RuntimeError(f"patching ConfigMap {name} failed: {resp.status}")
