"""The audit chain's canonical form and hash, and what verification concludes from a chain."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import uuid

import orjson
import pytest
from pydantic import ValidationError

from audit_service.chain import (
    GENESIS,
    StoredEvent,
    canonical,
    chain_hash,
    subject_of,
    verify_chain,
)
from audit_service.models import EventBatch, NewEvent
from audit_service.settings import AuditSettings, dsn_with
from audit_service.store import Pending
from shared.entity import encode

T0 = dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC)


def test_canonical_json_sorts_keys_at_every_level_without_whitespace_in_utf8() -> None:
    event = {"b": 1, "a": {"z": [1, 2.5, None], "é": "ü"}, "A": True}
    assert canonical(event) == '{"A":true,"a":{"z":[1,2.5,null],"é":"ü"},"b":1}'.encode()


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (T0, "2026-11-24T09:30:00Z"),
        (T0.replace(microsecond=250000), "2026-11-24T09:30:00.250000Z"),
        (
            dt.datetime(2026, 11, 24, 11, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2026-11-24T09:30:00Z",
        ),
    ],
)
def test_occurred_at_is_written_in_utc_with_z(when: dt.datetime, text: str) -> None:
    assert orjson.loads(canonical({"occurredAt": when}))["occurredAt"] == text


def test_a_naive_occurred_at_is_refused() -> None:
    with pytest.raises(ValueError):
        canonical({"occurredAt": dt.datetime(2026, 1, 1)})


def test_hash_is_sha256_of_prev_hash_then_canonical_body() -> None:
    # Pinned: a change of the hash's input format breaks every stored chain.
    assert (
        chain_hash(GENESIS, b'{"a":1}')
        == "fc6cee09194dd2578bd7664604fcb72a539066fd34544cea0009c43eb6cdc289"
    )
    assert chain_hash("ab" * 32, b"x") == hashlib.sha256(b"ab" * 32 + b"x").hexdigest()


def test_a_visit_event_is_about_its_patient() -> None:
    assert subject_of("visit", "alice.smith/0b9c") == "alice.smith"
    assert subject_of("user", "alice.smith") == "alice.smith"
    assert subject_of("study", "diabetes-2026") is None


def pending(i: int) -> Pending:
    return Pending(
        event_id=uuid.UUID(int=i + 1), entity_type="user", entity_id=f"user{i}", action="update",
        actor=f"dr{i}", occurred_at=T0 + dt.timedelta(seconds=i), source="user_service/shard-0",
        request_id=None, changes=["email"], before={"email": None}, after={"email": f"{i}@x.org"},
    )  # fmt: skip


def chain(n: int) -> list[StoredEvent]:
    """A well-formed stored chain of ``n`` events, as the store writes it."""
    out, prev = [], GENESIS
    for seq in range(1, n + 1):
        p = pending(seq)
        body = p.body(seq)
        digest = chain_hash(prev, body)
        out.append(
            StoredEvent(
                seq,
                str(p.event_id),
                p.entity_type,
                p.entity_id,
                subject_of(p.entity_type, p.entity_id),
                p.actor,
                p.occurred_at,
                body.decode(),
                prev,
                digest,
            )
        )
        prev = digest
    return out


def check(events: list[StoredEvent], head: StoredEvent | None = None):  # type: ignore[no-untyped-def]
    last = head or chain(5)[-1]
    return verify_chain(events, last.seq, last.hash)


def test_an_intact_chain_verifies() -> None:
    verdict = check(chain(5))
    assert (
        verdict.ok
        and verdict.checked == 5
        and encode(verdict.model()) == b'{"ok":true,"checked":5,"lastSeq":5}'
    )


def test_an_empty_chain_verifies() -> None:
    assert verify_chain([], 0, GENESIS).ok


def test_altered_content_is_named() -> None:
    events = chain(5)
    events[2] = dataclasses.replace(events[2], body=events[2].body.replace("3@x.org", "evil@x.org"))
    verdict = check(events)
    assert not verdict.ok and verdict.first_bad_seq == 3 and verdict.checked == 2


def test_an_altered_hash_is_named() -> None:
    events = chain(5)
    events[2] = dataclasses.replace(events[2], hash="a" * 64)
    assert check(events).first_bad_seq == 3


def test_a_deleted_event_is_named() -> None:
    events = chain(5)
    del events[2]
    verdict = check(events)
    assert verdict.first_bad_seq == 3 and "missing" in (verdict.reason or "")


def test_a_deleted_first_event_is_named() -> None:
    assert check(chain(5)[1:]).first_bad_seq == 1


def test_deleted_last_events_are_caught_by_the_chain_head() -> None:
    verdict = check(chain(5)[:3])
    assert verdict.first_bad_seq == 4 and not verdict.ok


def test_an_event_rewritten_with_a_matching_hash_is_caught_by_the_next_link() -> None:
    events = chain(5)
    body = events[2].body.replace("3@x.org", "evil@x.org")
    events[2] = dataclasses.replace(
        events[2], body=body, hash=chain_hash(events[2].prev_hash, body.encode())
    )
    assert check(events).first_bad_seq == 3


def test_renumbered_events_are_named() -> None:
    events = chain(5)
    del events[2]
    events[2:] = [dataclasses.replace(e, seq=e.seq - 1) for e in events[2:]]
    assert check(events, head=events[-1]).first_bad_seq == 3


def test_an_altered_indexed_column_is_named() -> None:
    events = chain(5)
    events[3] = dataclasses.replace(events[3], actor="someone.else")
    verdict = check(events)
    assert verdict.first_bad_seq == 4 and "actor" in (verdict.reason or "")


def test_a_changed_subject_is_named() -> None:
    """subject decides what a clinician may read: it is checked against the hashed event."""
    events = chain(5)
    events[2] = dataclasses.replace(events[2], subject="someone.else")
    verdict = check(events)
    assert verdict.first_bad_seq == 3 and "subject" in (verdict.reason or "")


def test_a_batch_event_is_validated_strictly() -> None:
    good = {
        "eventId": str(uuid.uuid4()),
        "entityType": "user",
        "entityId": "a.b",
        "action": "create",
        "actor": "dr.x",
        "occurredAt": "2026-11-24T09:30:00Z",
        "source": "user_service/shard-0",
        "changes": [],
        "before": None,
        "after": {"userName": "a.b"},
    }
    assert (
        EventBatch.model_validate_json(orjson.dumps({"events": [good]})).events[0].actor == "dr.x"
    )
    for bad in (
        {"colour": "red"},
        {"occurredAt": "2026-11-24T09:30:00"},
        {"changes": "email"},
        {"entityType": "has space"},
        {"actor": ""},
    ):
        with pytest.raises(ValidationError):
            EventBatch.model_validate_json(orjson.dumps({"events": [good | bad]}))
    with pytest.raises(ValidationError):
        EventBatch.model_validate_json(b'{"events": []}')


def test_a_new_event_needs_only_what_it_is_about() -> None:
    event = NewEvent.model_validate_json(
        b'{"entityType": "study", "entityId": "s1", "action": "run"}'
    )
    assert event.actor is None and event.eventId is None and event.changes == []


def test_the_audit_database_defaults_to_audit_on_the_central_server() -> None:
    s = AuditSettings(central_dsn="postgresql://medsvc@127.0.0.1:5432/medsvc")
    assert s.audit_dsn == "postgresql://medsvc@127.0.0.1:5432/audit"
    assert s.writer_dsn == "postgresql://audit_writer@127.0.0.1:5432/audit"
    assert (
        dsn_with("postgresql://u:pw@h:1/db?sslmode=require", user="w")
        == "postgresql://w@h:1/db?sslmode=require"
    )
    with pytest.raises(ValidationError):
        AuditSettings(central_dsn="", audit_dsn="")
