"""The shard map: which physical shard owns a userName, and where that shard lives.

``bucket = stable_hash(userName) mod buckets``; the map assigns every bucket to exactly one
shard. The hash is the first 8 bytes of SHA-256 read big-endian: the same in every process,
language and release (never Python's salted ``hash``). Adding a shard moves buckets between
shards, not every key. ``tests/unit/test_shardmap.py`` pins golden values.

The file is JSON::

    {"version": 3, "buckets": 1024,
     "shards": [
        {"id": 0, "buckets": [[0, 511]],
         "postgres": "postgresql://medsvc@127.0.0.1:15432/medsvc",
         "redis": "redis://127.0.0.1:16379/0",
         "members": {"user": ["http://127.0.0.1:9100"], "visit": ["http://127.0.0.1:9100"]}}
     ]}

``members`` lists, per service, the base URLs of the FE servers of that shard hosting it.

The map is versioned: every change (a shard added, buckets moved) is written as a new file
with ``version`` + 1, atomically (:func:`write_shard_map`), and every process watches the
file (:class:`MapWatcher`) and switches to a higher version without a restart. The map only
routes: the shard databases themselves know which buckets they own (table
``shard_buckets``), so a process still on an old version is refused (421) and reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_BUCKETS = 1024
log = logging.getLogger("medsvc.shardmap")
MAP_VERSION = Gauge("medsvc_shard_map_version", "The shard map version this process routes with")


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

    version: int = Field(default=1, ge=0)
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
        # _owner is set in the validator above with object.__setattr__ (not a declared field).
        owner: int = self._owner[bucket_of(user_name, self.buckets)]  # type: ignore[attr-defined]
        return owner

    def shard_for(self, user_name: str) -> Shard:
        """Return the shard owning ``user_name``."""
        return self.shard(self.shard_id_for(user_name))

    def owners(self) -> list[int]:
        """The owning shard id of every bucket, by bucket."""
        return list(self._owner)  # type: ignore[attr-defined]

    def with_owner(self, lo: int, hi: int, shard_id: int) -> ShardMap:
        """A new version of this map in which buckets ``lo``..``hi`` belong to ``shard_id``."""
        self.shard(shard_id)
        owner = self.owners()
        for b in range(lo, hi + 1):
            owner[b] = shard_id
        shards = [s.model_copy(update={"buckets": ranges_of(owner, s.id)}) for s in self.shards]
        return ShardMap(version=self.version + 1, buckets=self.buckets, shards=shards)

    def with_shard(self, shard: Shard) -> ShardMap:
        """A new version of this map with ``shard`` added (it must own no bucket yet)."""
        if shard.buckets:
            raise ValueError("a new shard owns no bucket: move buckets to it afterwards")
        if any(s.id == shard.id for s in self.shards):
            raise ValueError(f"shard {shard.id} exists")
        return ShardMap(
            version=self.version + 1, buckets=self.buckets, shards=[*self.shards, shard]
        )

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


def ranges_of(owner: list[int], shard_id: int) -> list[tuple[int, int]]:
    """The contiguous bucket ranges ``shard_id`` owns in the bucket → owner list ``owner``."""
    out: list[tuple[int, int]] = []
    for b, o in enumerate(owner):
        if o != shard_id:
            continue
        if out and out[-1][1] == b - 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((b, b))
    return out


def parse_range(text: str) -> tuple[int, int]:
    """``"LO-HI"`` (or one bucket ``"N"``) as (lo, hi); ValueError when malformed."""
    lo_s, sep, hi_s = text.partition("-")
    lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
    if lo > hi or lo < 0:
        raise ValueError(f"bad bucket range {text!r}")
    return lo, hi


def load_shard_map(path: str | Path) -> ShardMap:
    """Read and validate the shard map file at ``path``."""
    return ShardMap.model_validate(json.loads(Path(path).read_text()))


def write_shard_map(path: str | Path, shard_map: ShardMap) -> None:
    """Replace the map file atomically (write a sibling, fsync, rename): a watcher reads
    either the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".shardmap-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(shard_map.model_dump_json(indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class MapWatcher:
    """The current shard map of a process: re-read when the file changes, switched to when
    its version is higher. In Kubernetes the file is a ConfigMap volume, which the kubelet
    replaces (by a symlink swap) when the ConfigMap changes; locally the resharder and
    ``deploy.localstack add-shard`` rewrite it with :func:`write_shard_map`.
    """

    def __init__(
        self, path: str | Path, initial: ShardMap | None = None, interval: float = 0.5
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.current = initial if initial is not None else load_shard_map(self.path)
        self._stamp = self._stat()
        MAP_VERSION.set(self.current.version)
        self._listeners: list[Callable[[ShardMap], None]] = []

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def on_change(self, listener: Callable[[ShardMap], None]) -> None:
        """Call ``listener(new_map)`` (synchronously, in the event loop) on every switch."""
        self._listeners.append(listener)

    def reload(self, force: bool = False) -> bool:
        """Read the file if it changed (or ``force``); switch when its version is higher.

        Returns whether the map changed. A file that does not parse is logged and ignored:
        a process keeps serving with the map it has.
        """
        stamp = self._stat()
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            new = load_shard_map(self.path)
        except (OSError, ValueError) as exc:
            log.warning(
                "shard map unreadable; keeping version %s",
                self.current.version,
                extra={"action": "shardmap.unreadable", "error": type(exc).__name__},
            )
            return False
        if new.version <= self.current.version:
            return False
        old, self.current = self.current, new
        MAP_VERSION.set(new.version)
        log.info(
            "shard map switched",
            extra={"action": "shardmap.switched", "from": old.version, "to": new.version},
        )
        for listener in self._listeners:
            listener(new)
        return True

    async def run(self) -> None:
        """Poll the file until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.reload()
