"""Verification of the whole audit log against the signed checkpoints, and the signer.

The same :class:`LogVerifier` runs in the service (``GET /v1/audit/verify``) and in the
offline tool (``python -m audit_service verify``). It checks, in order:

1. the checkpoint log alone: every signature (keyring of public keys, by keyId), every
   compact range against its signed root, and a consistency proof from each checkpoint to the
   next (the log only ever grew);
2. every event in seq order: the hash chain and the columns against the hashed body (as
   :class:`audit_service.chain.ChainVerifier`), the stored tree nodes against the ones
   recomputed from the bodies, and, at each checkpoint's treeSize, the recomputed root against
   the signed one;
3. the end: every checkpoint was reached (no cut tail), the chain head and the tree the
   database records match what the events produce (the tail past the last checkpoint chains
   on), and ``audit_patients`` (whose events clinicians may read) is exactly the set the
   hashed events register (:func:`audit_service.chain.registers_patient`).

The database is the party not trusted here, so every call re-reads every event; only the
checkpoint log (outside the database) is trusted as far as its signatures go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

import asyncpg
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit_service import store
from audit_service.chain import ChainVerifier, StoredEvent, Verdict, registers_patient
from audit_service.checkpoints import Checkpoint, CheckpointLog, checkpoint_problem, sign
from audit_service.merkle import CompactRange, check_consistency, leaf_hash
from audit_service.metrics import CHECKPOINT_REFUSED, CHECKPOINT_TREE_SIZE

log = logging.getLogger("medsvc.audit.verify")


class LogVerifier:
    """Feed it the events in seq order after :meth:`check_log`; then :meth:`finish`."""

    def __init__(self, checkpoints: Sequence[Checkpoint], keyring: Mapping[str, Ed25519PublicKey],
                 *, check_nodes: bool = True) -> None:  # fmt: skip
        self.checkpoints = list(checkpoints)
        self.keyring = keyring
        self.check_nodes = check_nodes
        self.chain = ChainVerifier()
        self.verdict: Verdict = self.chain.verdict
        self.tree = CompactRange()
        self._next = 0  # the next checkpoint the events must reach
        self._verified_size = 0  # the last checkpoint's size the events reproduced
        self.patients: set[str] = set()  # users the events register as patients

    def _fail(self, seq: int | None, reason: str) -> bool:
        self.verdict.ok, self.verdict.first_bad_seq, self.verdict.reason = False, seq, reason
        return False

    def check_log(self, already_checked: int = 0) -> bool:
        """Signatures, compact ranges and consistency of the checkpoint log itself (all but the
        first ``already_checked`` checkpoints, which an earlier call checked unchanged)."""
        prev = self.checkpoints[already_checked - 1] if already_checked else None
        for cp in self.checkpoints[already_checked:]:
            problem = checkpoint_problem(cp, prev, self.keyring)
            if problem:
                return self._fail(None, f"checkpoint log: {problem}")
            prev = cp
        while self._next < len(self.checkpoints) and self.checkpoints[self._next].tree_size == 0:
            self._next += 1
        return True

    def feed(self, ev: StoredEvent) -> bool:
        """Check one event; False once something is wrong (feed no more)."""
        if not self.chain.feed(ev):
            return False
        if ev.entity_type == "user" and '"create"' in ev.body:
            event = orjson.loads(ev.body)
            if registers_patient(ev.entity_type, event.get("action", ""), event.get("after"),
                                 str(event.get("source", ""))):  # fmt: skip
                self.patients.add(ev.entity_id)
        completed = self.tree.append(leaf_hash(ev.body.encode("utf-8")))
        if self.check_nodes and ev.tree_nodes != b"".join(completed):
            return self._fail(ev.seq, f"event seq {ev.seq}: its stored tree nodes were altered")
        while (
            self._next < len(self.checkpoints)
            and self.checkpoints[self._next].tree_size == self.tree.size
        ):
            cp = self.checkpoints[self._next]
            if self.tree.root().hex() != cp.root_hash:
                start, end = self._rewritten_span(cp)
                return self._fail(start, (
                    f"events {start}..{end} do not reproduce the signed checkpoint of treeSize "
                    f"{cp.tree_size}: the log was rewritten there"
                ))  # fmt: skip
            self._verified_size = cp.tree_size
            self._next += 1
        return True

    def _rewritten_span(self, cp: Checkpoint) -> tuple[int, int]:
        """The seqs of the first peak (perfect subtree) that differs from the checkpoint's."""
        start = 0
        for ours, signed in zip(self.tree.peaks, cp.range().peaks, strict=True):
            width = _peak_width(self.tree.size, start)
            if ours != signed:
                return max(start, self._verified_size) + 1, start + width
            start += width
        return self._verified_size + 1, cp.tree_size

    def finish(
        self, head: Mapping[str, object] | None, patients: set[str] | None = None
    ) -> Verdict:
        """After the last event: every checkpoint reached, the head (if any) matches, and the
        patients table (if given) is the one the events register."""
        if not self.verdict.ok:
            return self.verdict
        if self._next < len(self.checkpoints):
            cp = self.checkpoints[self._next]
            self._fail(self.tree.size + 1, (
                f"events {self.tree.size + 1}..{cp.tree_size}, signed in the checkpoint of "
                f"treeSize {cp.tree_size}, are missing"
            ))  # fmt: skip
            return self.verdict
        if head is not None:
            self.chain.finish(int(head["last_seq"]), str(head["last_hash"]))  # type: ignore[call-overload]
            if self.verdict.ok and (
                head["tree_size"] != self.tree.size or head["tree_range"] != self.tree.to_bytes()
            ):
                self._fail(
                    self.tree.size, "the tree the chain head records does not match the events"
                )
        if self.verdict.ok and patients is not None and patients != self.patients:
            extra, missing = sorted(patients - self.patients), sorted(self.patients - patients)
            self._fail(None, (
                f"audit_patients lists {len(extra)} user(s) no event registers as a patient"
                f"{' (e.g. ' + extra[0] + ')' if extra else ''} and lacks {len(missing)} that "
                f"events register{' (e.g. ' + missing[0] + ')' if missing else ''}: it decides "
                "which events clinicians may read"
            ))  # fmt: skip
        return self.verdict


def _peak_width(size: int, start: int) -> int:
    """The width of the peak of a tree of ``size`` leaves that starts at leaf ``start``."""
    rest = size - start
    return 1 << (rest.bit_length() - 1)


async def verify_database(conn: asyncpg.Connection, checkpoints: Sequence[Checkpoint],
                          keyring: Mapping[str, Ed25519PublicKey],
                          already_checked: int = 0,
                          log_checked: Callable[[], None] | None = None) -> Verdict:  # fmt: skip
    """Verify the events of the audit database ``conn`` against ``checkpoints`` (read first:
    every checkpoint then covers only events committed before the snapshot taken here)."""
    verifier = LogVerifier(checkpoints, keyring)
    if not verifier.check_log(already_checked):
        return verifier.verdict
    if log_checked is not None:
        log_checked()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head = await store.chain_head(conn)
        patients = await store.patients(conn)
        async for ev in store.scan_events(conn):
            if not verifier.feed(ev):
                break
    return verifier.finish(head, patients)


# -- the signer -------------------------------------------------------------------------------

_LOCKS: dict[str, asyncio.Lock] = {}


async def make_checkpoint(pool: asyncpg.Pool, cp_log: CheckpointLog,
                          key: Ed25519PrivateKey) -> Checkpoint | None:  # fmt: skip
    """Sign the tree if it grew since the last checkpoint; return the new checkpoint or None.

    The signer does not take the database's word for the new root: it extends the last
    checkpoint's compact range with leaves it hashes itself from the new events' bodies, and
    signs only when that matches the root the database records and the database's consistency
    proof from the last checkpoint holds. A database rewritten below the last checkpoint is
    refused (logged) rather than signed.
    """
    lock = _LOCKS.setdefault(str(cp_log.path), asyncio.Lock())
    async with lock, pool.acquire() as conn, cp_log.locked_async():
        # The head is read under the log's lock: another process may have signed meanwhile.
        head = await store.chain_head(conn)
        size = int(head["tree_size"])
        last = cp_log.last()
        last_size = last.tree_size if last else 0
        if size <= last_size:
            if size < last_size:
                _refuse(f"audit tree size {size} is below the last checkpoint's {last_size}")
                return None
            return None
        tree = last.range() if last else CompactRange()
        if last and tree.root().hex() != last.root_hash:
            _refuse("the last checkpoint's compact range does not match its root")
            return None
        async for seq, leaf in store.leaves_between(conn, last_size, size):
            if seq != tree.size + 1:
                _refuse(f"audit event seq {tree.size + 1} is missing")
                return None
            tree.append(leaf)
        recorded = CompactRange.from_bytes(size, head["tree_range"])
        if tree.size != size or tree.root() != recorded.root():
            _refuse("the audit events do not extend the last checkpoint")
            return None
        proof = await store.consistency_proof(conn, last_size, size) if last_size else []
        if last and not check_consistency(last_size, size, bytes.fromhex(last.root_hash),
                                          tree.root(), proof):  # fmt: skip
            _refuse("the audit tree is not consistent with the last checkpoint")
            return None
        cp = sign(key, tree, proof)
        cp_log.append(cp)
    CHECKPOINT_TREE_SIZE.set(cp.tree_size)
    log.info("audit checkpoint signed: treeSize %d", cp.tree_size)
    return cp


def _refuse(why: str) -> None:
    CHECKPOINT_REFUSED.inc()
    log.error("not signing an audit checkpoint: %s (the audit log was rewritten?)", why)
