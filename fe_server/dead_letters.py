"""Audit events audit_service refused for good: kept, counted, and replayed on an operator's word.

The relay (:mod:`fe_server.outbox`) moves an event here when audit_service keeps refusing it
(a 4xx other than the transient ones, after retries and after the batch was split down to
that one event), and then moves on: one bad event no longer blocks its shard's audit trail.
Nothing is dropped: the row keeps everything the outbox row had, plus audit_service's reason.

Order. The events of one entity enter the chain in commit order (DESIGN.md). So once an
entity has a dead letter, the relay skips its later events: they wait in the outbox (and
show in its backlog and age) rather than enter the chain ahead of it. Other entities' events
flow on. A dead letter keeps its outbox id, so a replay puts it back ahead of them.

Replay. ``python -m fe_server.dead_letters replay --shard N`` (after fixing the cause) marks the
shard's dead letters for replay and waits for the relay to take them: the shipping relay
puts them back into the outbox itself, between two batches, so that no event of the same
entity can slip past them. An event still refused comes back here after its retries.
``python -m fe_server.dead_letters list --shard N`` shows what is held and why (ids, entity
types and reasons only: no event bodies, which carry PHI).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from shared.settings import CommonSettings, load
from shared.shardmap import load_shard_map

_COLUMNS = (
    "id, event_id, entity_type, entity_id, action, actor, source, request_id, occurred_at,"
    " row_before, row_after"
)


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def bury(conn: asyncpg.Connection, ids: list[int], reason: str) -> int:
    """Move these outbox rows to the dead letters with ``reason``; how many moved."""
    # bury: one statement, so a row is in exactly one of the two tables at any time.
    return _count(
        await conn.execute(
            f"""WITH moved AS (
                DELETE FROM audit_outbox WHERE id = ANY($1::bigint[]) RETURNING {_COLUMNS})
            INSERT INTO audit_dead_letters ({_COLUMNS}, reason) SELECT {_COLUMNS}, $2 FROM moved""",
            ids,
            reason,
        )
    )


async def exist(conn: asyncpg.Connection) -> bool:
    """Whether the shard has any dead letter (the relay's cheap check before each batch)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM audit_dead_letters)"))


async def count(conn: asyncpg.Connection) -> int:
    """How many dead letters the shard holds."""
    return int(await conn.fetchval("SELECT count(*) FROM audit_dead_letters"))


async def restore_requested(conn: asyncpg.Connection) -> int:
    """Put the dead letters an operator asked to replay back into the outbox; how many.

    Called by the shipping relay only, between two batches. Each keeps its outbox id, so it
    ships ahead of its entity's later events, which waited in the outbox.
    """
    # restore_requested: one statement, so a row is in exactly one of the two tables.
    return _count(
        await conn.execute(
            f"""WITH back AS (DELETE FROM audit_dead_letters WHERE replay RETURNING {_COLUMNS})
            INSERT INTO audit_outbox ({_COLUMNS}) OVERRIDING SYSTEM VALUE
            SELECT {_COLUMNS} FROM back""",
        )
    )


async def request_replay(conn: asyncpg.Connection) -> int:
    """Mark every dead letter for replay; how many were marked."""
    # request_replay: the relay acts on the mark between two batches.
    return _count(
        await conn.execute("UPDATE audit_dead_letters SET replay = true WHERE NOT replay")
    )


async def _replay(conn: asyncpg.Connection, wait: float) -> int:
    marked = await request_replay(conn)
    print(f"{marked} dead letters marked for replay; waiting for the relay to take them")
    deadline = asyncio.get_running_loop().time() + wait
    while await conn.fetchval("SELECT count(*) FROM audit_dead_letters WHERE replay"):
        if asyncio.get_running_loop().time() > deadline:
            print("the relay has not taken them yet (is an FE server of the shard running?)")
            return 1
        await asyncio.sleep(0.5)
    left = await count(conn)
    print(f"replayed; {left} dead letters now (refused again after the replay, or new)")
    return 0


async def _list(conn: asyncpg.Connection) -> int:
    rows = await conn.fetch(
        """SELECT id, entity_type, action, occurred_at, dead_at, replay, reason
           FROM audit_dead_letters ORDER BY id"""
    )
    for r in rows:
        print(
            f"{r['id']}\t{r['entity_type']}\t{r['action']}\t{r['occurred_at'].isoformat()}\t"
            f"dead {r['dead_at'].isoformat()}\t{'replaying' if r['replay'] else ''}\t{r['reason']}"
        )
    print(f"{len(rows)} dead letters")
    return 0


async def _main(command: str, shard_id: int, wait: float) -> int:
    settings = load(CommonSettings)
    shard = load_shard_map(settings.shard_map).shard(shard_id)
    password = settings.pg_password.get_secret_value() if settings.pg_password else None
    conn = await asyncpg.connect(shard.postgres, password=password, timeout=10)
    try:
        return await (_replay(conn, wait) if command == "replay" else _list(conn))
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fe_server.dead_letters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["replay", "list"])
    parser.add_argument("--shard", type=int, required=True, help="the shard's id in the shard map")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the relay")
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(_main(args.command, args.shard, args.wait)))


if __name__ == "__main__":
    main()
