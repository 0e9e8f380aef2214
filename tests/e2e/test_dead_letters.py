"""An audit event audit_service refuses for good: dead-lettered, the trail flows on, replayed.

The operator's scenario: an event audit_service rejects as invalid sits in a shard's outbox
(planted here, as a bug in a writer would leave it). It must not block the shard's audit
trail, must not be dropped, must be counted, and must reach the audit store once the cause
is fixed and the operator replays it — ahead of the later events of the same entity.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import asyncpg
import pytest

from tests.e2e.api import Api
from tests.e2e.test_audit import all_events, wait_for_events
from tests.e2e.test_audit_faults import metric


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


async def plant(conn: asyncpg.Connection, entity_id: str, action: str) -> int:
    """An event in the outbox, as a writer's transaction would have left it; its outbox id."""
    return await conn.fetchval(
        """INSERT INTO audit_outbox (entity_type, entity_id, action, actor, source, row_after)
           VALUES ('note', $1, $2, 'dr.planted', 'test/dead-letters', '{"text": "n"}'::jsonb)
           RETURNING id""",
        entity_id,
        action,
    )


async def until(probe, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await probe()):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.2)
    return value


async def dead_lettered(http, stack) -> float:
    return sum(
        [
            await metric(http, fe.url, "medsvc_audit_dead_lettered_total", 0) or 0
            for fe in stack.fe[0]
        ]
    )


async def test_a_refused_event_is_dead_lettered_the_trail_flows_on_and_a_replay_delivers_it(
    admin: Api, http, stack
) -> None:
    note = f"note-{uuid.uuid4()}"
    conn = await asyncpg.connect(stack.shard_map.shard(0).postgres)
    try:
        before = await dead_lettered(http, stack)
        bad = await plant(conn, note, "not a valid action")  # audit_service answers 422
        later = await plant(conn, note, "update")  # valid, but must not overtake the bad one

        # The bad event is dead-lettered, with audit_service's reason; its entity's later event
        # waits.
        reason = await until(
            lambda: conn.fetchval("SELECT reason FROM audit_dead_letters WHERE id = $1", bad)
        )
        assert "422" in reason
        assert await conn.fetchval("SELECT count(*) FROM audit_outbox WHERE id = $1", later) == 1
        assert await dead_lettered(http, stack) == before + 1
        gauges = [await metric(http, fe.url, "medsvc_audit_dead_letters", 0) for fe in stack.fe[0]]
        assert max(g or 0 for g in gauges) >= 1

        # Every other entity's events flow on.
        patient = None
        while patient is None or stack.shard_map.shard_id_for(patient["userName"]) != 0:
            patient = await admin.create_patient()
        events = await wait_for_events(admin, 1, entityType="user", entityId=patient["userName"])
        assert [e["action"] for e in events] == ["create"]
        assert await all_events(admin, entityType="note", entityId=note) == []

        # The operator fixes the cause, then replays.
        await conn.execute("UPDATE audit_dead_letters SET action = 'create' WHERE id = $1", bad)
        env = dict(os.environ, MEDSVC_SHARD_MAP=str(stack.shard_map_path))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fe_server.dead_letters",
            "replay",
            "--shard",
            "0",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        assert "1 dead letters marked for replay" in out.decode()

        events = await wait_for_events(admin, 2, entityType="note", entityId=note)
        assert [e["action"] for e in events] == ["create", "update"], "the entity's order is kept"
        assert await conn.fetchval("SELECT count(*) FROM audit_dead_letters") == 0
        assert (
            await conn.fetchval("SELECT count(*) FROM audit_outbox WHERE entity_id = $1", note) == 0
        )
    finally:
        await conn.execute("DELETE FROM audit_outbox WHERE entity_id = $1", note)
        await conn.execute("DELETE FROM audit_dead_letters WHERE entity_id = $1", note)
        await conn.close()
