"""The audit Merkle tree against an independent RFC 6962 implementation written here, and the
published RFC 6962 / Certificate Transparency test vectors."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_service import merkle

# -- an independent RFC 6962 implementation, straight from section 2.1 ------------------------


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return sha(b"")
    if n == 1:
        return sha(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return sha(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n <= 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return subproof(m, leaves[:k], complete) + [mth(leaves[k:])]
    return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


# -- the published vectors --------------------------------------------------------------------

CT_INPUTS = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]  # fmt: skip
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, path): Trillian / transparency-dev reference inclusion proofs.
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
# (old size, new size, proof): the reference consistency proofs.
CT_CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip


def built(leaves: list[bytes]) -> tuple[merkle.CompactRange, dict[merkle.Node, bytes]]:
    """The tree as the store builds it: appended leaf by leaf, the completed nodes kept."""
    tree, nodes = merkle.CompactRange(), {}
    for i, data in enumerate(leaves):
        for level, h in enumerate(tree.append(merkle.leaf_hash(data))):
            nodes[(level, i >> level)] = h
    return tree, nodes


def test_roots_match_the_rfc_6962_vectors() -> None:
    for n, root in enumerate(CT_ROOTS):
        tree, _ = built(CT_INPUTS[:n])
        assert tree.root().hex() == root
        assert mth(CT_INPUTS[:n]).hex() == root  # the independent implementation agrees


@pytest.mark.parametrize(("index", "size", "expected"), CT_INCLUSION)
def test_inclusion_proofs_match_the_reference_vectors(
    index: int, size: int, expected: list[str]
) -> None:
    _, nodes = built(CT_INPUTS[:size])
    proof = merkle.hash_ranges(merkle.inclusion_ranges(index, size), nodes)
    assert [h.hex() for h in proof] == expected
    root = merkle.root_from_inclusion(index, size, merkle.leaf_hash(CT_INPUTS[index]), proof)
    assert root.hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("old", "new", "expected"), CT_CONSISTENCY)
def test_consistency_proofs_match_the_reference_vectors(
    old: int, new: int, expected: list[str]
) -> None:
    _, nodes = built(CT_INPUTS[:new])
    proof = merkle.hash_ranges(merkle.consistency_ranges(old, new), nodes) if old != new else []
    assert [h.hex() for h in proof] == expected
    assert merkle.check_consistency(old, new, bytes.fromhex(CT_ROOTS[old]),
                                    bytes.fromhex(CT_ROOTS[new]), proof)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.data())
def test_proofs_agree_with_the_independent_implementation(size: int, data: st.DataObject) -> None:
    leaves = [f"event {i}".encode() for i in range(size)]
    tree, nodes = built(leaves)
    assert tree.root() == mth(leaves)
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.hash_ranges(merkle.inclusion_ranges(index, size), nodes)
    assert proof == path(index, leaves)
    assert (
        merkle.root_from_inclusion(index, size, merkle.leaf_hash(leaves[index]), proof)
        == tree.root()
    )
    old = data.draw(st.integers(1, size))
    cproof = merkle.hash_ranges(merkle.consistency_ranges(old, size), nodes) if old != size else []
    assert cproof == (subproof(old, leaves, True) if old != size else [])
    assert merkle.check_consistency(old, size, mth(leaves[:old]), tree.root(), cproof)
    # A different old tree (one leaf rewritten) does not pass as the prefix.
    forged = [*leaves[: old - 1], b"forged"]
    assert not merkle.check_consistency(old, size, mth(forged), tree.root(), cproof)
    # Nor does a wrong leaf pass as included.
    assert (
        merkle.root_from_inclusion(index, size, merkle.leaf_hash(b"forged"), proof) != tree.root()
    )


def test_a_compact_range_round_trips_and_appends_like_a_rebuild() -> None:
    leaves = [bytes([i]) for i in range(37)]
    tree, _ = built(leaves[:21])
    again = merkle.CompactRange.from_bytes(21, tree.to_bytes())
    for data in leaves[21:]:
        again.append(merkle.leaf_hash(data))
    assert again.root() == mth(leaves)
    with pytest.raises(ValueError):
        merkle.CompactRange.from_bytes(23, tree.to_bytes())
