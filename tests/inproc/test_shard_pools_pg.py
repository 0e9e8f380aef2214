"""The anonymizer's shard connections, against a real PostgreSQL: the pooled connections an
ownership cut holds its lock on (and lets go of when the snapshots are taken, the connection
staying pooled), and the read pool's session settings.

(tests/e2e/test_resharding.py holds runs against bucket moves on the real stack.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from anonymizer.shards import OwnershipCut, ShardPools
from shared.errors import Unavailable
from shared.ownership import OWNERSHIP_CUT_LOCK
from tests.inproc.conftest import one_shard_map


@pytest_asyncio.fixture(loop_scope="session")
async def pools(shard_db: str) -> AsyncIterator[ShardPools]:
    p = ShardPools(one_shard_map(shard_db), None, max_size=2)
    try:
        yield p
    finally:
        await p.close()


async def move_could_flip(dsn: str) -> bool:
    """Could a bucket move take the cut's lock exclusively now (resharder/move.py)?"""
    conn = await asyncpg.connect(dsn)
    try:
        taken = await conn.fetchval("SELECT pg_try_advisory_lock($1)", OWNERSHIP_CUT_LOCK)
        if taken:
            await conn.execute("SELECT pg_advisory_unlock($1)", OWNERSHIP_CUT_LOCK)
        return bool(taken)
    finally:
        await conn.close()


async def test_a_cut_holds_the_shards_until_every_reader_has_its_snapshot(
    pools: ShardPools, shard_db: str
) -> None:
    shard = pools.shard_map.shards[0]
    cut = await OwnershipCut.hold(pools, [shard, shard])  # two readers of one shard
    assert not await move_could_flip(shard_db)
    await cut.taken()
    assert not await move_could_flip(shard_db)  # one reader still without its snapshot
    await cut.taken()
    assert await move_could_flip(shard_db)
    # The connections went back to their pool, unlocked, and serve the next cut.
    cut_pool = await pools.cut_pool(shard)
    assert cut_pool.get_size() - cut_pool.get_idle_size() == 0
    again = await OwnershipCut.hold(pools, [shard])
    assert not await move_could_flip(shard_db)
    await again.release()
    assert await move_could_flip(shard_db)


async def test_a_cut_waits_for_a_move_to_flip(pools: ShardPools, shard_db: str) -> None:
    shard = pools.shard_map.shards[0]
    mover = await asyncpg.connect(shard_db)
    try:
        await mover.execute("SELECT pg_advisory_lock($1)", OWNERSHIP_CUT_LOCK)
        waiting = asyncio.ensure_future(OwnershipCut.hold(pools, [shard]))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await mover.execute("SELECT pg_advisory_unlock($1)", OWNERSHIP_CUT_LOCK)
        cut = await asyncio.wait_for(waiting, 10)
        assert not await move_could_flip(shard_db)
        await cut.release()
    finally:
        await mover.close()


async def test_a_cut_gives_up_as_unavailable_past_its_lock_timeout(
    shard_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OwnershipCut, "TIMEOUT", "200ms")  # (the cut pool's sessions' setting)
    pools = ShardPools(one_shard_map(shard_db), None, max_size=2)
    mover = await asyncpg.connect(shard_db)
    try:
        await mover.execute("SELECT pg_advisory_lock($1)", OWNERSHIP_CUT_LOCK)
        shard = pools.shard_map.shards[0]
        with pytest.raises(Unavailable, match="200ms"):
            await asyncio.wait_for(OwnershipCut.hold(pools, [shard]), 10)
        cut_pool = await pools.cut_pool(shard)
        assert cut_pool.get_size() - cut_pool.get_idle_size() == 0  # given back
    finally:
        await mover.close()
        await pools.close()


async def test_reads_run_without_jit(pools: ShardPools) -> None:
    pool = await pools.get(pools.shard_map.shards[0])
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW jit") == "off"
