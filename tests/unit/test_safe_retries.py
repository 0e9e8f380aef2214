"""Which requests a hop may send again, and what an Idempotency-Key is (no servers)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from fe_server.audit_client import AuditRejected
from gateway.proxy import retry_safe
from shared.idempotency import IdempotencyKey


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
def test_idempotent_methods_are_always_retried(method: str) -> None:
    assert retry_safe(method, CIMultiDict(), keyed_posts=False)


def test_a_post_is_retried_only_with_a_key_and_where_keys_are_kept() -> None:
    keyed = CIMultiDict({"idempotency-key": "k-1"})  # any case, as clients send it
    assert retry_safe("POST", keyed, keyed_posts=True)
    assert not retry_safe("POST", keyed, keyed_posts=False)
    assert not retry_safe("POST", CIMultiDict(), keyed_posts=True)


def test_a_patch_is_never_retried_even_with_a_key() -> None:
    assert not retry_safe("PATCH", CIMultiDict({"Idempotency-Key": "k"}), keyed_posts=True)


def test_a_keys_lock_depends_on_caller_path_and_key_only() -> None:
    one = IdempotencyKey("alice", "/v1/users", "k", b"body-1")
    assert one.lock_id == IdempotencyKey("alice", "/v1/users", "k", b"body-2").lock_id
    others = [
        ("bob", "/v1/users", "k"),
        ("alice", "/v1/studies", "k"),
        ("alice", "/v1/users", "k2"),
    ]
    assert all(IdempotencyKey(*o, b"body-1").lock_id != one.lock_id for o in others)
    assert -(2**63) <= one.lock_id < 2**63  # a PostgreSQL bigint


@pytest.mark.parametrize(
    ("status", "for_good"),
    [(400, True), (413, True), (422, True), (401, False), (403, False), (408, False), (429, False)],
)
def test_which_refusals_of_audit_service_are_for_good(status: int, for_good: bool) -> None:
    assert AuditRejected(status, "refused").for_good is for_good
