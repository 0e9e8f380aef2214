"""The audit-log step of ``make bench``: ingest with the Merkle tree and signed checkpoints on,
and the time verify takes per 100,000 events.

Ingest is driven the way the shards' outbox relays drive it: ``POST /internal/events/batch``
straight to the audit processes (two relays, one per process, batches of 500), while the
processes sign a checkpoint every few seconds. Its rate is compared with the POST visit row
(each visit write makes one event): the audit log must keep up with the write path.
Verify is timed over the whole store (the seed's events, the scenarios' and these), by the
service (``GET /v1/audit/verify``) and by the offline tool, and scaled to 100,000 events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import statistics
import time
import uuid
from typing import TYPE_CHECKING

import aiohttp
import orjson

from audit_service import offline
from audit_service.checkpoints import CheckpointLog
from bench.report import Measurement, Row

if TYPE_CHECKING:
    from bench.runner import BenchContext

EVENTS = 100_000
BATCH = 500
PROOFS = 200


def _batch(start: int) -> bytes:
    """A relay's batch: visit updates shaped like the ones the FE servers write."""
    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    events = []
    for i in range(start, start + BATCH):
        user = f"bench.patient.{i % 10_000}"
        visit = {"visitId": str(uuid.UUID(int=i)), "userName": user, "clinician": "dr.bench",
                 "startedAt": "2026-11-01T09:00:00Z", "endedAt": None, "reason": "check-up",
                 "diagnosis": f"code {i % 97}", "notes": "follow-up in two weeks",
                 "version": 2}  # fmt: skip
        events.append({
            "eventId": str(uuid.uuid4()), "entityType": "visit",
            "entityId": f"{user}/{visit['visitId']}", "action": "update", "actor": "dr.bench",
            "occurredAt": (at + dt.timedelta(seconds=i)).isoformat(),
            "source": "visit_service/shard-0", "requestId": None, "changes": ["diagnosis"],
            "before": {**visit, "diagnosis": None, "version": 1}, "after": visit,
        })  # fmt: skip
    return orjson.dumps({"events": events})


async def _proof_latency(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[float, float]:
    """Median milliseconds of an inclusion and of a consistency proof, sequential calls."""
    rng = random.Random(1)
    async with http.get(url + "/v1/audit/events", params={"limit": "200"}, headers=headers) as r:
        ids = [e["eventId"] for e in (await r.json())["items"]]
    async with http.get(url + "/v1/audit/checkpoints/latest", headers=headers) as r:
        size = (await r.json())["treeSize"]
    inclusion, consistency = [], []
    for _ in range(PROOFS):
        started = time.perf_counter()
        async with http.get(
            url + f"/v1/audit/events/{rng.choice(ids)}/proof", headers=headers
        ) as r:
            assert r.status == 200, await r.text()
            await r.read()
        inclusion.append(time.perf_counter() - started)
        old = rng.randint(1, size)
        started = time.perf_counter()
        async with http.get(url + "/v1/audit/consistency", headers=headers,
                            params={"from": str(old), "to": str(size)}) as r:  # fmt: skip
            assert r.status == 200, await r.text()
            await r.read()
        consistency.append(time.perf_counter() - started)
    return statistics.median(inclusion) * 1000, statistics.median(consistency) * 1000


async def audit_log(ctx: BenchContext) -> list[Row | Measurement]:
    stack = ctx.stack
    urls = [p.url for p in stack.services["audit"]]
    admin = {"Authorization": f"Bearer {stack.token('bench-relay', ['admin'])}",
             "Content-Type": "application/json"}  # fmt: skip
    auditor = {"Authorization": f"Bearer {stack.token('bench-auditor', ['auditor'])}"}
    batches = [_batch(start) for start in range(0, EVENTS, BATCH)]
    cp_log = CheckpointLog(stack.audit_keys.checkpoint_log)
    signed_before = len(cp_log.read())
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def relay(k: int) -> None:
            for body in batches[k :: len(urls)]:
                async with http.post(
                    urls[k] + "/internal/events/batch", data=body, headers=admin
                ) as r:
                    assert r.status == 200, await r.text()

        await ctx.gate.wait(ctx.components())
        started = time.perf_counter()
        await asyncio.gather(*(relay(k) for k in range(len(urls))))
        ingest_seconds = time.perf_counter() - started
        signed = len(cp_log.read()) - signed_before
        async with http.post(urls[0] + "/internal/checkpoints", headers=admin) as r:
            assert r.status == 200, await r.text()
        proof_ms = await _proof_latency(http, urls[0], auditor)
        await ctx.gate.wait(ctx.components())
        started = time.perf_counter()
        async with http.get(urls[0] + "/v1/audit/verify", headers=auditor) as r:
            verdict = await r.json()
        verify_seconds = time.perf_counter() - started
    assert verdict["ok"], verdict
    started = time.perf_counter()
    offline_verdict = await offline.run([
        "--checkpoints", str(cp_log.path), "--public-key", str(stack.audit_keys.public_keys),
        "--dsn", stack.central_postgres.dsn_for("audit"),
    ])  # fmt: skip
    offline_seconds = time.perf_counter() - started
    assert offline_verdict.ok, offline_verdict
    checked = verdict["checked"]
    ingest = Row(
        "audit_ingest", f"audit ingest, tree + signed checkpoints on ({EVENTS:,} events, "
        f"{len(urls)} relays, batches of {BATCH})", rate=EVENTS / ingest_seconds, unit="events/s",
        seconds=ingest_seconds, baseline="post_visit", target=1.0,
        extra={"checkpointsSigned": signed},
    )  # fmt: skip
    return [
        ingest,
        Measurement("audit checkpoints signed during ingest", signed, "checkpoints",
                    f"in {ingest_seconds:.1f} s"),  # fmt: skip
        Measurement("audit inclusion proof, median latency (one HTTP call, direct)",
                    proof_ms[0], "ms",
                    f"{PROOFS} proofs of random events in a tree of {checked:,}"),
        Measurement("audit consistency proof, median latency (one HTTP call, direct)",
                    proof_ms[1], "ms", f"{PROOFS} proofs between random sizes"),
        Measurement("audit verify (GET /v1/audit/verify) per 100,000 events",
                    verify_seconds * 100_000 / checked, "s",
                    f"{checked:,} events in {verify_seconds:.1f} s"),
        Measurement("audit verify (offline tool, --dsn) per 100,000 events",
                    offline_seconds * 100_000 / offline_verdict.checked, "s",
                    f"{offline_verdict.checked:,} events in {offline_seconds:.1f} s"),
    ]  # fmt: skip
