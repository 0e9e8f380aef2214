"""Signed checkpoints and the checkpoint log: signatures, key rotation, the log's own checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_service.checkpoints import (
    CheckpointLog,
    Notary,
    checkpoint_problem,
    key_id,
    load_public_keys,
    new_private_pem,
    public_pem,
    sign,
)
from audit_service.merkle import CompactRange, consistency_ranges, hash_ranges, leaf_hash


def tree_of(n: int) -> tuple[CompactRange, dict]:
    tree, nodes = CompactRange(), {}
    for i in range(n):
        for level, h in enumerate(tree.append(leaf_hash(f"e{i}".encode()))):
            nodes[(level, i >> level)] = h
    return tree, nodes


def grown(old: int, new: int, key: Ed25519PrivateKey):
    """Checkpoints of the trees of ``old`` then ``new`` events, the second with its proof."""
    small, _ = tree_of(old)
    big, nodes = tree_of(new)
    proof = hash_ranges(consistency_ranges(old, new), nodes)
    return sign(key, small, []), sign(key, big, proof)


def test_a_checkpoint_verifies_and_any_changed_field_does_not() -> None:
    key = Ed25519PrivateKey.generate()
    ring = {key_id(key.public_key()): key.public_key()}
    first, second = grown(5, 13, key)
    assert checkpoint_problem(first, None, ring) is None
    assert checkpoint_problem(second, first, ring) is None
    for change in (
        {"tree_size": 14},
        {"root_hash": "0" * 64},
        {"signed_at": "2030-01-01T00:00:00.000000Z"},
        {"signature": first.signature},
    ):
        assert checkpoint_problem(dataclasses.replace(second, **change), first, ring), change


def test_after_a_key_rotation_old_checkpoints_verify_with_the_old_public_key(
    tmp_path: Path,
) -> None:
    old_key, new_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first, _ = grown(5, 13, old_key)
    _, second = grown(5, 13, new_key)
    assert first.key_id != second.key_id
    keyring_file = tmp_path / "public-keys.pem"
    keyring_file.write_bytes(public_pem(old_key) + public_pem(new_key))
    ring = load_public_keys([keyring_file])
    assert checkpoint_problem(first, None, ring) is None
    assert checkpoint_problem(second, first, ring) is None
    # Without the old public key, its checkpoints no longer verify (and say why).
    only_new = {key_id(new_key.public_key()): new_key.public_key()}
    assert "not in the keyring" in (checkpoint_problem(first, None, only_new) or "")


def test_a_checkpoint_that_does_not_extend_the_previous_one_is_named() -> None:
    key = Ed25519PrivateKey.generate()
    ring = {key_id(key.public_key()): key.public_key()}
    first, second = grown(5, 13, key)
    other, _ = tree_of(13)
    other.peaks[0] = leaf_hash(b"rewritten")  # a different history of the same size
    forged = sign(key, other, [bytes.fromhex(p) for p in second.consistency])
    assert "not consistent" in (checkpoint_problem(forged, first, ring) or "")
    assert "smaller" in (checkpoint_problem(first, second, ring) or "")


def test_the_log_appends_and_reads_back_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    log = CheckpointLog(tmp_path / "cp" / "checkpoints.jsonl")
    assert log.read() == [] and log.last() is None
    first, second = grown(5, 13, key)
    with log.locked():
        log.append(first)
        log.append(second)
    assert log.read() == [first, second] and log.last() == second
    with log.path.open("ab") as f:
        f.write(b'{"treeSize": 20, "rootHa')  # a writer died mid-line
    assert log.read() == [first, second] and log.last() == second


def test_a_notary_loads_the_key_files(tmp_path: Path) -> None:
    key_file = tmp_path / "signing-key.pem"
    key_file.write_bytes(new_private_pem())
    notary = Notary.load(tmp_path / "checkpoints.jsonl", key_file, None)
    assert notary is not None and notary.key is not None
    assert list(notary.keyring) == [key_id(notary.key.public_key())]
    assert Notary.load(None, key_file, None) is None


def test_a_checked_prefix_of_the_log_is_not_checked_again_unless_its_bytes_changed(
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    log = CheckpointLog(tmp_path / "checkpoints.jsonl")
    first, second = grown(5, 13, key)
    log.append(first)
    memo: dict = {}
    assert log.read_checked(memo) == ([first], 0)
    CheckpointLog.remember(memo)
    log.append(second)
    assert log.read_checked(memo) == ([first, second], 1)  # only the new line needs checking
    # Not remembered (say the new line failed): the next call still starts after the first.
    assert log.read_checked(memo) == ([first, second], 1)
    # An earlier line rewritten: everything is checked again.
    log.path.write_bytes(log.path.read_bytes().replace(b'"treeSize":5', b'"treeSize":6', 1))
    checkpoints, checked = log.read_checked(memo)
    assert checked == 0 and checkpoints[0].tree_size == 6
