"""The shard map: which physical shard owns a userName, and where that shard lives.

``bucket = stable_hash(userName) mod buckets``; the map assigns every bucket to exactly one
shard. The hash is the first 8 bytes of SHA-256 read big-endian: the same in every process,
language and release (never Python's salted ``hash``). Adding a shard moves buckets between
shards, not every key. ``tests/unit/test_shardmap.py`` pins golden values.

The file is JSON::

    {"buckets": 1024,
     "shards": [
        {"id": 0, "buckets": [[0, 511]],
         "postgres": "postgresql://medsvc@127.0.0.1:15432/medsvc",
         "redis": "redis://127.0.0.1:16379/0",
         "members": {"user": ["http://127.0.0.1:9100"], "visit": ["http://127.0.0.1:9100"]}}
     ]}

``members`` lists, per service, the base URLs of the FE servers of that shard hosting it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_BUCKETS = 1024


def stable_hash(user_name: str) -> int:
    """Return the 64-bit stable hash of ``user_name`` (SHA-256, first 8 bytes, big-endian)."""
    return int.from_bytes(hashlib.sha256(user_name.encode("utf-8")).digest()[:8], "big")


def bucket_of(user_name: str, buckets: int = DEFAULT_BUCKETS) -> int:
    """Return the logical bucket of ``user_name``."""
    return stable_hash(user_name) % buckets


class Shard(BaseModel):
    """One physical shard: its buckets, its data servers and its FE clusters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=0)
    buckets: list[tuple[int, int]]
    postgres: str
    redis: str | None = None
    members: dict[str, list[str]] = Field(default_factory=dict)


class ShardMap(BaseModel):
    """All shards and the bucket → shard assignment; validated to cover every bucket once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    buckets: int = Field(default=DEFAULT_BUCKETS, gt=0)
    shards: list[Shard]

    @model_validator(mode="after")
    def _covers_every_bucket_once(self) -> ShardMap:
        owner: list[int | None] = [None] * self.buckets
        ids = [s.id for s in self.shards]
        if len(set(ids)) != len(ids):
            raise ValueError("shard ids must be unique")
        for shard in self.shards:
            for lo, hi in shard.buckets:
                if not 0 <= lo <= hi < self.buckets:
                    raise ValueError(f"shard {shard.id}: bucket range {lo}-{hi} out of bounds")
                for b in range(lo, hi + 1):
                    if owner[b] is not None:
                        raise ValueError(f"bucket {b} assigned to shards {owner[b]} and {shard.id}")
                    owner[b] = shard.id
        missing = [b for b, o in enumerate(owner) if o is None]
        if missing:
            raise ValueError(f"{len(missing)} buckets have no shard (first: {missing[0]})")
        object.__setattr__(self, "_owner", owner)
        return self

    def shard_id_for(self, user_name: str) -> int:
        """Return the id of the shard owning ``user_name``."""
        return self._owner[bucket_of(user_name, self.buckets)]  # type: ignore[attr-defined]

    def shard_for(self, user_name: str) -> Shard:
        """Return the shard owning ``user_name``."""
        return self.shard(self.shard_id_for(user_name))

    def shard(self, shard_id: int) -> Shard:
        """Return the shard with id ``shard_id`` (KeyError when absent)."""
        for s in self.shards:
            if s.id == shard_id:
                return s
        raise KeyError(shard_id)


def even_ranges(n_shards: int, buckets: int = DEFAULT_BUCKETS) -> list[list[tuple[int, int]]]:
    """Split ``buckets`` into ``n_shards`` contiguous ranges of (nearly) equal size."""
    out = []
    for i in range(n_shards):
        lo = i * buckets // n_shards
        hi = (i + 1) * buckets // n_shards - 1
        out.append([(lo, hi)])
    return out


def load_shard_map(path: str | Path) -> ShardMap:
    """Read and validate the shard map file at ``path``."""
    return ShardMap.model_validate(json.loads(Path(path).read_text()))
