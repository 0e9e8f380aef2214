"""The shard routing of a userName must never change by accident: golden values."""

import hashlib
import json

import pytest
from pydantic import ValidationError

from shared.shardmap import Shard, ShardMap, bucket_of, even_ranges, load_shard_map, stable_hash


def two_shards() -> ShardMap:
    return ShardMap(
        shards=[Shard(id=i, buckets=r, postgres="x") for i, r in enumerate(even_ranges(2))]
    )


@pytest.mark.parametrize(
    ("user_name", "bucket", "shard"),
    [
        ("alice.smith", 992, 1),
        ("bob", 730, 1),
        ("dr.jones", 960, 1),
        ("carol-99", 76, 0),
        ("zed", 1022, 1),
    ],
)
def test_golden_bucket_and_shard(user_name: str, bucket: int, shard: int) -> None:
    assert bucket_of(user_name) == bucket
    assert two_shards().shard_id_for(user_name) == shard


def test_hash_is_sha256_prefix() -> None:
    # The definition other languages implement: first 8 bytes of SHA-256, big-endian.
    assert stable_hash("alice.smith") == 0x6342582757B1FFE0
    assert stable_hash("alice.smith") == int.from_bytes(
        hashlib.sha256(b"alice.smith").digest()[:8], "big"
    )


def test_even_ranges_cover_all_buckets() -> None:
    assert even_ranges(2) == [[(0, 511)], [(512, 1023)]]
    assert even_ranges(3) == [[(0, 340)], [(341, 681)], [(682, 1023)]]


def test_map_rejects_gaps_and_overlaps() -> None:
    with pytest.raises(ValidationError, match="no shard"):
        ShardMap(shards=[Shard(id=0, buckets=[(0, 100)], postgres="x")])
    with pytest.raises(ValidationError, match="assigned to shards"):
        ShardMap(
            shards=[
                Shard(id=0, buckets=[(0, 1023)], postgres="x"),
                Shard(id=1, buckets=[(5, 5)], postgres="x"),
            ]
        )


def test_load_from_file(tmp_path) -> None:
    path = tmp_path / "map.json"
    path.write_text(two_shards().model_dump_json())
    loaded = load_shard_map(path)
    assert loaded.shard_for("carol-99").id == 0
    assert json.loads(path.read_text())["buckets"] == 1024
