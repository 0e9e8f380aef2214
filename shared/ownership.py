"""Which buckets a shard database owns: seeded once from the shard map, then the database's.

The shard map routes; the shard databases decide. Each database records which shard it is
(``shard_identity``) and the owner of every bucket (``shard_buckets``); every read of a user
checks it (shared/service.py ``require_owned``) and every write checks it again in its own
transaction (the trigger ``medsvc_check_owner``). The first FE server to start on a database
seeds both tables from the map it was given; after that only a move (resharder/) changes them.
"""

from __future__ import annotations

import logging

import asyncpg

from shared.shardmap import DEFAULT_BUCKETS, ShardMap

log = logging.getLogger("medsvc.ownership")

# The bucket count the database's medsvc_bucket() computes (user_service/migrations/004_*).
DB_BUCKETS = DEFAULT_BUCKETS

# The ownership cut: an advisory lock on every shard database. A bucket move flips ownership
# in two databases, one transaction each; it holds this lock exclusively on both (taken in
# ascending shard id order) until both flips commit. The anonymizer holds it shared on every
# shard (same order) while a run takes its snapshots, so that no run sees one flip without
# the other (anonymizer/shards.py OwnershipCut, resharder/move.py _fence). Held for
# milliseconds on either side; the same order on both sides rules out a deadlock.
OWNERSHIP_CUT_LOCK = 0x6D65_6473_6375_7421  # 'medscut!'


async def seed_ownership(conn: asyncpg.Connection, shard_id: int, shard_map: ShardMap) -> bool:
    """Record ``shard_id`` and the map's bucket owners unless this database already knows.

    Returns whether it seeded. Refuses a database that says it is another shard (a map
    pointing shard N at shard M's database would otherwise serve M's users as N's).
    """
    if shard_map.buckets != DB_BUCKETS:
        raise RuntimeError(
            f"the shard databases compute {DB_BUCKETS} buckets, the map has {shard_map.buckets}"
        )
    async with conn.transaction():
        # Several FE servers start at once: one seeds, the others find it done.
        await conn.execute("LOCK TABLE shard_identity IN EXCLUSIVE MODE")
        known = await conn.fetchval("SELECT shard_id FROM shard_identity")
        if known is not None:
            if known != shard_id:
                raise RuntimeError(f"this database is shard {known}, not shard {shard_id}")
            return False
        await conn.execute("INSERT INTO shard_identity (shard_id) VALUES ($1)", shard_id)
        await conn.executemany(
            # since_xid 1 (frozen, visible in every snapshot): the buckets a shard starts with
            # are not "moved in" for the anonymizer.
            "INSERT INTO shard_buckets (bucket, owner, since_xid) VALUES ($1, $2, '1')"
            " ON CONFLICT (bucket) DO NOTHING",
            list(enumerate(shard_map.owners())),
        )
    log.info(
        "bucket ownership seeded",
        extra={"action": "ownership.seeded", "shard": shard_id, "mapVersion": shard_map.version},
    )
    return True


async def owned_buckets(conn: asyncpg.Connection | asyncpg.Pool) -> list[int]:
    """The buckets this database owns."""
    rows = await conn.fetch(
        "SELECT sb.bucket FROM shard_buckets sb JOIN shard_identity si ON sb.owner = si.shard_id"
        " ORDER BY sb.bucket"
    )
    return [r["bucket"] for r in rows]
