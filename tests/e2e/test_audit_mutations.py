"""A mutation test of the audit verifier: every single change a database superuser can make is
caught, by the service (``GET /v1/audit/verify`` over HTTP) and by the offline tool.

A log of a few thousand events is appended by the real store code (its COPY path computes
the chain and the Merkle tree) into its own database on the stack's central PostgreSQL, with
checkpoints signed by the real signer along the way. Each example then rewrites the table as
the superuser would (triggers off), asks both verifiers, and puts the original rows back.

"Strong" mutations re-hash the chain and rebuild the tree after the change, as an attacker
holding the code (but not the signing key) would: only the signed checkpoints catch those, so
they are placed at or below the last checkpoint. Events after it are protected only by the
chain against a party that does not re-hash (README.md, threat model).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from audit_service import offline, store
from audit_service.app import create_app
from audit_service.chain import GENESIS, canonical, chain_hash, subject_of
from audit_service.checkpoints import (
    CheckpointLog,
    load_private_key,
    new_private_pem,
    public_pem,
    sign,
)
from audit_service.merkle import CompactRange, leaf_hash
from audit_service.settings import AuditSettings
from audit_service.verify import make_checkpoint
from deploy.localstack.tokens import make_token
from shared.db import pool_scope
from shared.dbsetup import ensure_database, migrate
from shared.entity import encode

EVENTS = 3000
CHECKPOINT_EVERY = 700  # checkpoints at 700, 1400, 2100, 2800; 200 events after the last
LAST_CHECKPOINT = (EVENTS // CHECKPOINT_EVERY) * CHECKPOINT_EVERY
SECRET = "mutation-test-secret"
COLUMNS = ["seq", "event_id", "entity_type", "entity_id", "subject", "actor", "occurred_at",
           "body", "prev_hash", "hash", "tree_nodes"]  # fmt: skip


class LoopThread:
    """An event loop in a thread of its own, so hypothesis' synchronous examples can await."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _pending(i: int) -> store.Pending:
    user = f"patient.{i % 97}"
    if i % 50 == 0:  # a patient's create event, shipped by a shard: registers the patient
        return store.Pending(
            event_id=uuid.uuid4(), entity_type="user", entity_id=user, action="create",
            actor="dr.0",
            occurred_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i),
            source="user_service/shard-0", request_id=None, changes=[], before=None,
            after={"userName": user, "role": "patient"},
        )  # fmt: skip
    visit = i % 3 == 0
    return store.Pending(
        event_id=uuid.uuid4(), entity_type="visit" if visit else "user",
        entity_id=f"{user}/{uuid.UUID(int=i)}" if visit else user, action="update",
        actor=f"dr.{i % 11}",
        occurred_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i),
        source=f"user_service/shard-{i % 2}", request_id=None, changes=["phone"],
        before={"phone": str(i)}, after={"phone": str(i + 1), "note": "ü"},
    )  # fmt: skip


class Log:
    """The seeded audit database, its checkpoint files, and a server over it."""

    def __init__(self, dsn: str, folder: Path) -> None:
        self.dsn, self.folder = dsn, folder
        self.key_file, self.public_file = folder / "key.pem", folder / "public.pem"
        self.cp_log = CheckpointLog(folder / "checkpoints.jsonl")
        self.rows: list[dict[str, Any]] = []
        self.head: dict[str, Any] = {}
        self.patients: set[str] = set()
        self.url = ""
        self.http: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None

    async def seed(self) -> None:
        self.key_file.write_bytes(new_private_pem())
        self.public_file.write_bytes(public_pem(load_private_key(self.key_file)))
        await ensure_database(self.dsn, None)
        await migrate(self.dsn, None, "audit", store.MIGRATIONS)
        key = load_private_key(self.key_file)
        async with pool_scope(
            self.dsn, password=None, min_size=1, max_size=2, what="audit"
        ) as pool:
            for start in range(0, EVENTS, CHECKPOINT_EVERY):
                batch = [_pending(i) for i in range(start, min(start + CHECKPOINT_EVERY, EVENTS))]
                await store.append_events(pool, batch, trusted_source=True)
                if start + len(batch) <= LAST_CHECKPOINT:
                    assert await make_checkpoint(pool, self.cp_log, key) is not None
        conn = await asyncpg.connect(self.dsn)
        try:
            self.rows = [
                dict(r)
                for r in await conn.fetch(
                    f"SELECT {', '.join(COLUMNS)} FROM audit_events ORDER BY seq"
                )
            ]
            self.head = dict(await conn.fetchrow("SELECT * FROM audit_chain_head"))
            self.patients = await store.patients(conn)
        finally:
            await conn.close()
        assert len(self.rows) == EVENTS
        assert self.patients == {f"patient.{i % 97}" for i in range(0, EVENTS, 50)}
        assert [cp.tree_size for cp in self.cp_log.read()] == list(
            range(CHECKPOINT_EVERY, EVENTS + 1, CHECKPOINT_EVERY)
        )

    async def serve(self) -> None:
        settings = AuditSettings(
            audit_dsn=self.dsn, jwt_secret=SECRET, audit_checkpoint_log=self.cp_log.path,
            audit_public_keys_file=self.public_file, pg_pool_min=1, pg_pool_max=2,
        )  # fmt: skip
        self.runner = web.AppRunner(create_app(settings))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def stop(self) -> None:
        if self.http:
            await self.http.close()
        if self.runner:
            await self.runner.cleanup()

    async def write(self, rows: list[dict[str, Any]], head: dict[str, Any],
                    patients: set[str] | None = None) -> None:  # fmt: skip
        """Replace the tables and the head as the superuser (every trigger off)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute("DELETE FROM audit_events")
                await conn.copy_records_to_table(
                    "audit_events",
                    records=[tuple(r[c] for c in COLUMNS) for r in rows],
                    columns=COLUMNS,
                )
                await conn.execute(
                    """UPDATE audit_chain_head
                       SET last_seq = $1, last_hash = $2, tree_size = $3, tree_range = $4""",
                    head["last_seq"], head["last_hash"], head["tree_size"], head["tree_range"],
                )  # fmt: skip
                await conn.execute("DELETE FROM audit_patients")
                chosen = self.patients if patients is None else patients
                await conn.executemany("INSERT INTO audit_patients (user_name) VALUES ($1)",
                                       [(u,) for u in sorted(chosen)])
        finally:
            await conn.close()

    async def service_verdict(self) -> dict[str, Any]:
        assert self.http is not None
        token = make_token(SECRET, "audrey.auditor", ["auditor"], 600)
        async with self.http.get(self.url + "/v1/audit/verify",
                                 headers={"Authorization": f"Bearer {token}"}) as resp:  # fmt: skip
            assert resp.status == 200, await resp.text()
            return await resp.json()

    def offline_args(self) -> list[str]:
        return [
            "--checkpoints",
            str(self.cp_log.path),
            "--public-key",
            str(self.public_file),
            "--dsn",
            self.dsn,
        ]

    async def offline_verdict(self) -> dict[str, Any]:
        verdict = (await offline.run(self.offline_args())).model()
        shown: dict[str, Any] = orjson.loads(encode(verdict))  # as the tool prints it
        return shown


@pytest.fixture(scope="module")
def seeded(stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, Log]]:
    loop = LoopThread()
    log = Log(stack.central_postgres.dsn_for(f"audit_mut_{uuid.uuid4().hex[:8]}"),
              tmp_path_factory.mktemp("audit-mutations"))  # fmt: skip
    try:
        loop.run(log.seed())
        loop.run(log.serve())
        yield loop, log
    finally:
        loop.run(log.stop())
        loop.close()


# -- the superuser's changes ------------------------------------------------------------------

Rows = list[dict[str, Any]]
Mutation = Callable[[Rows, dict[str, Any], st.DataObject], tuple[Rows, dict[str, Any]]]


def _copy(rows: Rows) -> Rows:
    return [dict(r) for r in rows]


def reforge(rows: Rows, head: dict[str, Any]) -> tuple[Rows, dict[str, Any]]:
    """What an attacker with the code but not the key does after a change: renumber the bodies,
    re-hash the whole chain, rebuild the tree nodes and move the head to match."""
    prev, tree = GENESIS, CompactRange()
    for seq, r in enumerate(rows, start=1):
        event = orjson.loads(r["body"])
        event["seq"] = seq
        body = canonical(event)
        r.update(seq=seq, body=body.decode(), prev_hash=prev, hash=chain_hash(prev, body),
                 event_id=uuid.UUID(event["eventId"]), entity_type=event["entityType"],
                 entity_id=event["entityId"],
                 subject=subject_of(event["entityType"], event["entityId"]), actor=event["actor"],
                 tree_nodes=b"".join(tree.append(leaf_hash(body))))  # fmt: skip
        prev = r["hash"]
    return rows, {**head, "last_seq": len(rows), "last_hash": prev, "tree_size": tree.size,
                  "tree_range": tree.to_bytes()}  # fmt: skip


def _any_seq(data: st.DataObject) -> int:
    return data.draw(st.integers(1, EVENTS), label="seq")


def _signed_seq(data: st.DataObject) -> int:
    return data.draw(st.integers(1, LAST_CHECKPOINT), label="signed seq")


def _altered(column: str, value: Any) -> Any:
    if column == "event_id":
        return uuid.uuid4()
    if column == "occurred_at":
        return value + dt.timedelta(seconds=1)
    if column in ("prev_hash", "hash"):
        return ("a" if value[0] != "a" else "b") + value[1:]
    if column == "tree_nodes":
        return bytes([value[0] ^ 1]) + value[1:]
    if column == "body":
        return value.replace('"phone":"', '"phone":"9', 1)
    if column == "subject":
        return "someone.else"
    return value + "x"


def alter_column(
    rows: Rows, head: dict[str, Any], data: st.DataObject
) -> tuple[Rows, dict[str, Any]]:
    seq = _any_seq(data)
    column = data.draw(st.sampled_from([c for c in COLUMNS if c != "seq"]), label="column")
    rows[seq - 1][column] = _altered(column, rows[seq - 1][column])
    return rows, head


def delete(rows: Rows, head: dict[str, Any], data: st.DataObject) -> tuple[Rows, dict[str, Any]]:
    del rows[_any_seq(data) - 1]
    return rows, head


def delete_and_rehash(
    rows: Rows, head: dict[str, Any], data: st.DataObject
) -> tuple[Rows, dict[str, Any]]:
    del rows[_signed_seq(data) - 1]
    return reforge(rows, head)


def insert_forged(
    rows: Rows, head: dict[str, Any], data: st.DataObject
) -> tuple[Rows, dict[str, Any]]:
    """A forged event slipped in after a signed one, everything after renumbered and re-hashed."""
    at = data.draw(st.integers(0, LAST_CHECKPOINT - 1), label="after seq")
    forged = dict(rows[at])
    event = orjson.loads(forged["body"]) | {"eventId": str(uuid.uuid4()), "actor": "forger"}
    forged["body"] = canonical(event).decode()
    rows.insert(at, forged)
    return reforge(rows, head)


def swap(rows: Rows, head: dict[str, Any], data: st.DataObject) -> tuple[Rows, dict[str, Any]]:
    """Two events exchange places (their seq columns), nothing re-hashed."""
    i, j = _any_seq(data) - 1, _any_seq(data) - 1
    if i == j:
        j = (i + 1) % EVENTS
    rows[i]["seq"], rows[j]["seq"] = rows[j]["seq"], rows[i]["seq"]
    return rows, head


def swap_and_rehash(
    rows: Rows, head: dict[str, Any], data: st.DataObject
) -> tuple[Rows, dict[str, Any]]:
    i = _signed_seq(data) - 1
    j = data.draw(st.integers(0, EVENTS - 1).filter(lambda k: k != i), label="other")
    rows[i], rows[j] = rows[j], rows[i]
    return reforge(rows, head)


def renumber(rows: Rows, head: dict[str, Any], data: st.DataObject) -> tuple[Rows, dict[str, Any]]:
    """The events from one seq on are shifted up (a gap), the head moved to the new last."""
    seq = _any_seq(data)
    shift = data.draw(st.integers(1, 5), label="shift")
    for r in rows[seq - 1 :]:
        r["seq"] += shift
    return rows, {**head, "last_seq": rows[-1]["seq"]}


def cut_tail(rows: Rows, head: dict[str, Any], data: st.DataObject) -> tuple[Rows, dict[str, Any]]:
    """Events cut from below the last checkpoint to the end; the head left as it was."""
    keep = data.draw(st.integers(0, LAST_CHECKPOINT - 1), label="keep")
    return rows[:keep], head


def cut_tail_and_rewrite_head(
    rows: Rows, head: dict[str, Any], data: st.DataObject
) -> tuple[Rows, dict[str, Any]]:
    """As the issue found it: events deleted and the chain head moved back to match."""
    keep = data.draw(st.integers(0, LAST_CHECKPOINT - 1), label="keep")
    return reforge(rows[:keep], head)


def rewrite_and_rehash(
    rows: Rows, head: dict[str, Any], data: st.DataObject
) -> tuple[Rows, dict[str, Any]]:
    """One signed event's content changed, then the whole chain after it re-hashed."""
    seq = _signed_seq(data)
    event = orjson.loads(rows[seq - 1]["body"])
    event["after"] = {**(event["after"] or {}), "phone": "000"}
    rows[seq - 1]["body"] = canonical(event).decode()
    return reforge(rows, head)


def change_subject(
    rows: Rows, head: dict[str, Any], data: st.DataObject
) -> tuple[Rows, dict[str, Any]]:
    """subject (what a clinician may read) pointed at another user; nothing else touched."""
    seq = _any_seq(data)
    subjects = st.sampled_from(["someone.else", None, "patient.1"])
    rows[seq - 1]["subject"] = data.draw(subjects.filter(lambda s: s != rows[seq - 1]["subject"]))
    return rows, head


MUTATIONS: dict[str, Mutation] = {
    f.__name__: f for f in (
        alter_column, delete, delete_and_rehash, insert_forged, swap, swap_and_rehash, renumber,
        cut_tail, cut_tail_and_rewrite_head, rewrite_and_rehash, change_subject,
    )
}  # fmt: skip


def test_the_untouched_log_verifies(seeded: tuple[LoopThread, Log]) -> None:
    loop, log = seeded
    for verdict in (loop.run(log.service_verdict()), loop.run(log.offline_verdict())):
        assert verdict == {"ok": True, "checked": EVENTS, "lastSeq": EVENTS}, verdict
    # The offline tool as an auditor runs it: its own process, exit status 0.
    done = subprocess.run([sys.executable, "-m", "audit_service", "verify", *log.offline_args()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and orjson.loads(done.stdout)["ok"] is True, done.stderr


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_every_single_superuser_change_is_flagged(
    seeded: tuple[LoopThread, Log], kind: str
) -> None:
    loop, log = seeded

    # No shrinking: a failing example is reported as drawn (shrinking re-runs both verifiers).
    @settings(max_examples=5, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])  # fmt: skip
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        rows, head = MUTATIONS[kind](_copy(log.rows), dict(log.head), data)
        loop.run(log.write(rows, head))
        try:
            for who, verdict in (("service", loop.run(log.service_verdict())),
                                 ("offline", loop.run(log.offline_verdict()))):  # fmt: skip
                assert verdict["ok"] is False, (who, verdict)
                assert verdict["reason"], (who, verdict)
        finally:
            loop.run(log.write(log.rows, log.head))

    example()
    assert loop.run(log.service_verdict())["ok"] is True


def test_the_offline_tool_fails_with_status_1_on_a_rewritten_log(
    seeded: tuple[LoopThread, Log],
) -> None:
    loop, log = seeded
    rows, head = cut_tail_and_rewrite_head(
        _copy(log.rows), dict(log.head), _Fixed(CHECKPOINT_EVERY + 5)
    )  # type: ignore[arg-type]
    loop.run(log.write(rows, head))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "audit_service", "verify", *log.offline_args()],
            capture_output=True, text=True, timeout=120,
        )
        verdict = orjson.loads(done.stdout)
        assert done.returncode == 1 and verdict["ok"] is False
        assert verdict["firstBadSeq"] == CHECKPOINT_EVERY + 6, verdict
    finally:
        loop.run(log.write(log.rows, log.head))


class _Fixed:
    """A stand-in for hypothesis' data that always draws ``value``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def draw(self, strategy: Any, label: str | None = None) -> int:
        return self.value


def test_a_client_holding_an_older_checkpoint_detects_a_rewritten_history(
    seeded: tuple[LoopThread, Log],
) -> None:
    """The worst case: the superuser also holds the signing key. They cut the log below a
    checkpoint a client kept, append other events, and sign the rewritten tree. Every signature
    holds; the consistency proof from the client's checkpoint to the new one cannot."""
    from tests.e2e.test_audit_proofs import consistent, signature_holds

    loop, log = seeded
    # The client kept the checkpoint of 1400 events.
    held = orjson.loads(encode(log.cp_log.read()[1].public()))
    public = log.public_file.read_bytes()
    assert signature_holds(held, public)
    rows, head = cut_tail_and_rewrite_head(_copy(log.rows), dict(log.head), _Fixed(1000))  # type: ignore[arg-type]
    # 2500 other events after seq 1000: a tree larger than any the client has seen.
    for i, extra in enumerate(_copy(log.rows[1000:] + log.rows[:500])):
        event = orjson.loads(extra["body"]) | {"eventId": str(uuid.uuid4()), "actor": f"forger.{i}"}
        rows.append(extra | {"body": canonical(event).decode()})
    rows, head = reforge(rows, head)
    original_log = log.cp_log.path.read_bytes()
    loop.run(log.write(rows, head))
    try:
        # The honest signer refuses to sign over it: it extends only its last checkpoint.
        async def sign_honestly() -> Any:
            async with pool_scope(
                log.dsn, password=None, min_size=1, max_size=1, what="audit"
            ) as pool:
                return await make_checkpoint(pool, log.cp_log, load_private_key(log.key_file))

        assert loop.run(sign_honestly()) is None
        # The key holder signs the rewritten tree anyway.
        tree = CompactRange.from_bytes(head["tree_size"], head["tree_range"])
        log.cp_log.append(sign(load_private_key(log.key_file), tree, []))
        token = make_token(SECRET, "audrey.auditor", ["auditor"], 600)

        async def client() -> tuple[dict[str, Any], dict[str, Any]]:
            assert log.http is not None
            hdrs = {"Authorization": f"Bearer {token}"}
            async with log.http.get(log.url + "/v1/audit/checkpoints/latest", headers=hdrs) as r:
                latest = await r.json()
            params = {"from": str(held["treeSize"]), "to": str(latest["treeSize"])}
            async with log.http.get(
                log.url + "/v1/audit/consistency", params=params, headers=hdrs
            ) as r:
                assert r.status == 200
                return latest, await r.json()

        latest, reply = loop.run(client())
        assert latest["treeSize"] == 3500 and signature_holds(
            latest, public
        )  # a valid signature...
        proof = [bytes.fromhex(h) for h in reply["proof"]]
        assert not consistent(
            held["treeSize"],
            latest["treeSize"],
            bytes.fromhex(held["rootHash"]),
            bytes.fromhex(latest["rootHash"]),
            proof,
        )  # ...but no consistency
        # Both verifiers flag it too (the checkpoint log itself is no longer consistent).
        for verdict in (loop.run(log.service_verdict()), loop.run(log.offline_verdict())):
            assert verdict["ok"] is False and "consistent" in verdict["reason"], verdict
    finally:
        log.cp_log.path.write_bytes(original_log)
        loop.run(log.write(log.rows, log.head))
    assert loop.run(log.service_verdict())["ok"] is True


def _export(rows: Rows, path: Path) -> None:
    """Events as GET /v1/audit/events returns them, one a line."""
    with path.open("w") as f:
        for r in rows:
            f.write(f'{r["body"][:-1]},"hash":"{r["hash"]}","prevHash":"{r["prev_hash"]}"}}\n')


def test_the_offline_tool_checks_an_export_of_the_events(
    seeded: tuple[LoopThread, Log], tmp_path: Path
) -> None:
    loop, log = seeded
    args = ["--checkpoints", str(log.cp_log.path), "--public-key", str(log.public_file), "--export"]
    _export(log.rows, tmp_path / "events.jsonl")
    verdict = loop.run(offline.run([*args, str(tmp_path / "events.jsonl")]))
    assert verdict.ok and verdict.checked == EVENTS, verdict
    rows, _ = rewrite_and_rehash(_copy(log.rows), dict(log.head), _Fixed(10))  # type: ignore[arg-type]
    _export(rows, tmp_path / "rewritten.jsonl")
    verdict = loop.run(offline.run([*args, str(tmp_path / "rewritten.jsonl")]))
    assert not verdict.ok and verdict.first_bad_seq is not None and verdict.first_bad_seq <= 10, (
        verdict
    )


def test_events_stored_before_the_tree_existed_get_their_nodes_at_start_up(
    seeded: tuple[LoopThread, Log],
) -> None:
    """A database migrated from the chain-only schema: no tree nodes, an empty tree in the head.
    backfill_tree (run by audit_service at start-up) builds exactly what appending would have."""
    loop, log = seeded
    legacy = [r | {"tree_nodes": None} for r in _copy(log.rows)]
    loop.run(log.write(legacy, {**log.head, "tree_size": 0, "tree_range": b""}))

    async def backfill() -> tuple[int, Rows, dict[str, Any]]:
        conn = await asyncpg.connect(log.dsn)
        try:
            filled = await store.backfill_tree(conn)
            rows = [
                dict(r)
                for r in await conn.fetch(
                    f"SELECT {', '.join(COLUMNS)} FROM audit_events ORDER BY seq"
                )
            ]
            head = dict(await conn.fetchrow("SELECT * FROM audit_chain_head"))
            again = await store.backfill_tree(conn)  # nothing left to do
            assert again == 0
            # The append-only guard is back on.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE audit_events SET actor = 'x' WHERE seq = 1")
            return filled, rows, head
        finally:
            await conn.close()

    try:
        filled, rows, head = loop.run(backfill())
        assert filled == EVENTS
        assert [r["tree_nodes"] for r in rows] == [r["tree_nodes"] for r in log.rows]
        assert (head["tree_size"], head["tree_range"]) == (
            log.head["tree_size"],
            log.head["tree_range"],
        )
        assert loop.run(log.service_verdict())["ok"] is True
    finally:
        loop.run(log.write(log.rows, log.head))


@pytest.mark.parametrize("change", ["a non-patient made visible", "a patient hidden"])
def test_a_changed_patients_table_is_flagged(seeded: tuple[LoopThread, Log], change: str) -> None:
    """audit_patients decides (with subject) which events a clinician reads: verify rebuilds it
    from the hashed events."""
    loop, log = seeded
    patients = set(log.patients)
    if change == "a patient hidden":
        patients.discard(min(patients))
    else:
        patients.add("dr.3")
    loop.run(log.write(log.rows, log.head, patients))
    try:
        for verdict in (loop.run(log.service_verdict()), loop.run(log.offline_verdict())):
            assert verdict["ok"] is False and "audit_patients" in verdict["reason"], verdict
    finally:
        loop.run(log.write(log.rows, log.head))
    assert loop.run(log.service_verdict())["ok"] is True
