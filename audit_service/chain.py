"""The hash chain: the canonical form of an event, its hash, and verification of a stored chain.

Canonical event (the bytes that are hashed)
    The event as the API shows it *without* ``hash`` and ``prevHash``: ``eventId``, ``seq``,
    ``entityType``, ``entityId``, ``action``, ``actor``, ``occurredAt``, ``source``,
    ``requestId``, ``changes``, ``before``, ``after``. Serialised as JSON with

    * object keys sorted by code point, at every level;
    * no insignificant whitespace (``{"a":1,"b":[1,2]}``);
    * UTF-8, non-ASCII characters as themselves (not ``\\u`` escapes); control characters
      escaped as JSON requires;
    * ``occurredAt`` in UTC with a ``Z`` suffix, fractional seconds (6 digits) only when
      non-zero: ``2026-11-24T09:30:00Z``, ``2026-11-24T09:30:00.250000Z``;
    * numbers as orjson writes them (shortest round-trip form for floats).

    The audit store keeps these exact bytes (column ``body``), so a verifier never has to
    re-serialise JSON the database parsed: it hashes what is stored.

Hash
    ``hash = hex(SHA-256(prevHash ‖ canonical))`` where ``prevHash`` is the previous event's
    hash as 64 lowercase hex ASCII characters; the first event's ``prevHash`` is
    :data:`GENESIS` (64 zeros). ``seq`` is inside the canonical form, so reordering, removing
    or renumbering events breaks the chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from audit_service.models import ChainVerdict

GENESIS = "0" * 64

_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z


def canonical(event: dict[str, Any]) -> bytes:
    """The canonical JSON bytes of ``event`` (see the module docstring)."""
    occurred = event.get("occurredAt")
    if isinstance(occurred, dt.datetime):
        if occurred.tzinfo is None:
            raise ValueError("occurredAt must be timezone-aware")
        event = {**event, "occurredAt": occurred.astimezone(dt.UTC)}
    return orjson.dumps(event, option=_CANONICAL)


def chain_hash(prev_hash: str, body: bytes) -> str:
    """``hex(SHA-256(prev_hash ‖ body))``."""
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


def subject_of(entity_type: str, entity_id: str) -> str | None:
    """The userName a user or visit event is about (``{userName}/{visitId}`` for a visit)."""
    if entity_type == "user":
        return entity_id
    if entity_type == "visit":
        return entity_id.split("/", 1)[0]
    return None


# The source of an event posted to POST /v1/audit/events (``api/{caller}``): such an event never
# registers a patient, whatever it says.
API_SOURCE_PREFIX = "api/"


def registers_patient(entity_type: str, action: str, after: Any, source: str) -> bool:
    """Whether this event makes its user a patient whose events clinicians may read: a user's
    create event, shipped from a shard (not posted to the API), whose ``after`` says
    ``"role": "patient"``. The table ``audit_patients`` is derived from exactly these events,
    so verify can rebuild it from the hashed bodies."""
    return (
        entity_type == "user" and action == "create" and isinstance(after, dict)
        and after.get("role") == "patient" and not source.startswith(API_SOURCE_PREFIX)
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of the audit store as the verifier reads it."""

    seq: int
    event_id: str
    entity_type: str
    entity_id: str
    subject: str | None
    actor: str
    occurred_at: dt.datetime
    body: str
    prev_hash: str
    hash: str
    tree_nodes: bytes | None = None


@dataclass
class Verdict:
    """What :func:`verify_chain` found."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    last_seq: int = 0

    def model(self) -> ChainVerdict:
        """The verdict as ``GET /v1/audit/verify`` and the offline verifier show it: an intact
        chain's has no ``firstBadSeq`` nor ``reason`` key."""
        verdict = ChainVerdict.model_construct(
            ok=self.ok, checked=self.checked, lastSeq=self.last_seq,
            firstBadSeq=self.first_bad_seq, reason=self.reason,
        )  # fmt: skip
        return verdict.omitting_none() if self.ok else verdict


class ChainVerifier:
    """Checks events fed in ascending ``seq`` order; stops at the first break.

    Per event K it checks, in this order: K follows the previous seq with no gap (a gap means
    deleted events: the first missing seq is bad); ``hash`` is the hash of its stored
    ``prevHash`` and body (else K's content or hash was altered); the indexed columns agree
    with the hashed body (else K's columns were altered, or events were renumbered); its
    ``prevHash`` equals the hash of K-1 (else K-1 was rewritten together with its hash, so
    K-1 is named).
    """

    def __init__(self) -> None:
        self.expected_seq = 1
        self.prev_hash = GENESIS
        self.verdict = Verdict(ok=True, checked=0)

    def _fail(self, seq: int, reason: str) -> bool:
        self.verdict.ok, self.verdict.first_bad_seq, self.verdict.reason = False, seq, reason
        return False

    def feed(self, ev: StoredEvent) -> bool:
        """Check one event; False once the chain is broken (feed no more)."""
        if not self.verdict.ok:
            return False
        if ev.seq != self.expected_seq:
            return self._fail(
                self.expected_seq,
                f"event seq {self.expected_seq} is missing (the next stored event is seq {ev.seq})",
            )
        if chain_hash(ev.prev_hash, ev.body.encode("utf-8")) != ev.hash:
            return self._fail(
                ev.seq, f"event seq {ev.seq} does not match its hash (content or hash altered)"
            )
        problem = _columns_problem(ev)
        if problem:
            return self._fail(ev.seq, f"event seq {ev.seq}: {problem}")
        if ev.prev_hash != self.prev_hash:
            return self._fail(
                ev.seq - 1,
                f"event seq {ev.seq - 1} was rewritten: "
                f"its hash is not the prevHash of seq {ev.seq}",
            )
        self.verdict.checked += 1
        self.verdict.last_seq = ev.seq
        self.expected_seq = ev.seq + 1
        self.prev_hash = ev.hash
        return True

    def finish(self, head_seq: int, head_hash: str) -> Verdict:
        """Compare the end of the chain with the recorded chain head (catches a cut-off tail)."""
        if not self.verdict.ok:
            return self.verdict
        last = self.expected_seq - 1
        if head_seq > last:
            self._fail(
                last + 1, f"events {last + 1}..{head_seq} are missing from the end of the chain"
            )
        elif head_seq < last or head_hash != self.prev_hash:
            self._fail(
                head_seq if head_seq < last else last,
                "the chain head does not match the last event",
            )
        return self.verdict


def _columns_problem(ev: StoredEvent) -> str | None:
    try:
        body = orjson.loads(ev.body)
    except orjson.JSONDecodeError:
        return "the stored body is not JSON"
    expected = {
        "seq": ev.seq,
        "eventId": ev.event_id,
        "entityType": ev.entity_type,
        "entityId": ev.entity_id,
        "actor": ev.actor,
    }
    for key, value in expected.items():
        if body.get(key) != value:
            return f"column {key} does not match the hashed event"
    # subject decides what a clinician may read: it must be the one the hashed event implies.
    if ev.subject != subject_of(str(body.get("entityType")), str(body.get("entityId"))):
        return "column subject does not match the hashed event"
    occurred = ev.occurred_at.astimezone(dt.UTC)
    if orjson.dumps(occurred, option=orjson.OPT_UTC_Z).decode().strip('"') != body.get(
        "occurredAt"
    ):
        return "column occurredAt does not match the hashed event"
    return None


def verify_chain(events: Iterable[StoredEvent], head_seq: int, head_hash: str) -> Verdict:
    """Verify a whole chain given in ascending seq order (see :class:`ChainVerifier`)."""
    verifier = ChainVerifier()
    for ev in events:
        if not verifier.feed(ev):
            break
    return verifier.finish(head_seq, head_hash)
