"""The versioned shard map: moving buckets and adding shards make the next version, and a
watcher switches to a newer file (never an older or broken one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resharder.publish import next_map
from shared.shardmap import (
    MapWatcher,
    Shard,
    ShardMap,
    even_ranges,
    load_shard_map,
    parse_range,
    ranges_of,
    write_shard_map,
)  # fmt: skip


def two_shards(version: int = 1) -> ShardMap:
    return ShardMap(version=version, shards=[
        Shard(id=i, buckets=r, postgres="x") for i, r in enumerate(even_ranges(2))])  # fmt: skip


def test_moving_buckets_makes_the_next_version_with_exact_ranges() -> None:
    m = two_shards().with_shard(Shard(id=2, buckets=[], postgres="y"))
    assert m.version == 2 and m.shard(2).buckets == []
    moved = m.with_owner(128, 255, 2)
    assert moved.version == 3
    assert moved.shard(0).buckets == [(0, 127), (256, 511)]
    assert moved.shard(2).buckets == [(128, 255)]
    assert moved.shard(1).buckets == [(512, 1023)]
    owners = moved.owners()
    assert owners[127] == 0 and owners[128] == 2 and owners[255] == 2 and owners[256] == 0


def test_a_new_shard_must_start_empty_and_unique() -> None:
    with pytest.raises(ValueError):
        two_shards().with_shard(Shard(id=2, buckets=[(0, 1)], postgres="y"))
    with pytest.raises(ValueError):
        two_shards().with_shard(Shard(id=1, buckets=[], postgres="y"))


def test_ranges_and_parsing() -> None:
    assert ranges_of([0, 0, 1, 0, 1, 1], 1) == [(2, 2), (4, 5)]
    assert parse_range("0-63") == (0, 63) and parse_range("7") == (7, 7)
    for bad in ("9-3", "x", "-1-4"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_publishing_a_move_already_in_force_changes_nothing() -> None:
    m = two_shards()
    assert next_map(m, 600, 700, 1) is None
    assert next_map(m, 0, 10, 1).version == 2  # type: ignore[union-attr]


def test_watcher_switches_only_to_a_newer_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "shardmap.json"
    write_shard_map(path, two_shards(version=5))
    watcher = MapWatcher(path)
    seen: list[int] = []
    watcher.on_change(lambda new: seen.append(new.version))
    assert not watcher.reload()  # unchanged file
    write_shard_map(path, two_shards(version=4))  # older: ignored
    assert not watcher.reload() and watcher.current.version == 5
    path.write_text("{not json")  # broken: ignored, the process keeps its map
    assert not watcher.reload() and watcher.current.version == 5
    write_shard_map(path, two_shards(version=5).with_owner(0, 9, 1))
    assert watcher.reload() and watcher.current.version == 6 and seen == [6]
    assert watcher.current.shard_id_for("carol-99") == 0  # bucket 76 stays
    assert load_shard_map(path).shard(1).buckets == [(0, 9), (512, 1023)]
