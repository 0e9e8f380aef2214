"""The RFC 6962 Merkle tree over the audit events, in ``seq`` order (leaf index = seq - 1).

Hashing (RFC 6962 section 2.1, SHA-256)
    leaf  ``SHA-256(0x00 ‖ body)`` where ``body`` is the event's canonical JSON
    (:func:`audit_service.chain.canonical`, the bytes stored in ``audit_events.body``);
    node  ``SHA-256(0x01 ‖ left ‖ right)``; the empty tree's root is ``SHA-256("")``.

Why a tree and not only the hash chain: a signed root over a tree lets anyone who holds an
older signed root check, with a handful of hashes (a consistency proof), that the newer tree
still contains exactly the old one, and check one event against a root (an inclusion proof)
without reading the log. A chain can only be re-hashed from the start.

Storage
    Appending leaf ``i`` completes the perfect subtrees ("nodes") ``(level, i >> level)`` for
    ``level = 0 .. t`` where ``t`` is the number of trailing one bits of ``i``. Those hashes
    are stored with the event (column ``tree_nodes``, 32 bytes a level, leaf hash first), so
    node ``(level, k)`` lives in the row of seq ``(k + 1) << level``. A proof needs
    O(log n) nodes, read by primary key in one query.

    The *compact range* of a tree of size ``n`` is its list of perfect-subtree roots ("peaks"),
    one per set bit of ``n``, largest first. It is all that is needed to append the next leaf
    and to compute the root; the chain head row persists it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[
    int, int
]  # (level, index): the perfect subtree of leaves [index << level, (index + 1) << level)


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 ‖ data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 ‖ left ‖ right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def fold_peaks(peaks: Sequence[bytes]) -> bytes:
    """The root of a tree (or subtree) given its peaks, largest first (RFC 6962's MTH)."""
    if not peaks:
        return EMPTY_ROOT
    root = peaks[-1]
    for peak in reversed(peaks[:-1]):
        root = node_hash(peak, root)
    return root


@dataclass
class CompactRange:
    """The peaks of the tree of ``size`` leaves: enough to append and to compute the root."""

    size: int = 0
    peaks: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> list[bytes]:
        """Add one leaf hash; return the nodes it completes, leaf first (levels 0, 1, ...)."""
        completed = [leaf]
        node, index = leaf, self.size
        while index & 1:
            node = node_hash(self.peaks.pop(), node)
            completed.append(node)
            index >>= 1
        self.peaks.append(node)
        self.size += 1
        return completed

    def root(self) -> bytes:
        return fold_peaks(self.peaks)

    def copy(self) -> CompactRange:
        return CompactRange(self.size, list(self.peaks))

    def to_bytes(self) -> bytes:
        return b"".join(self.peaks)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        """The range of ``size`` stored as its concatenated peaks; ValueError if they do not fit."""
        if len(data) != HASH_SIZE * size.bit_count():
            raise ValueError(f"a compact range of size {size} has {size.bit_count()} peaks")
        return cls(size, [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)])

    def peak_nodes(self) -> list[Node]:
        """The (level, index) of each peak, largest first."""
        return range_nodes(0, self.size)


def range_nodes(start: int, end: int) -> list[Node]:
    """The perfect subtrees that exactly cover leaves ``[start, end)``, left to right, each as
    large as alignment allows. For the ranges RFC 6962's recursion visits, folding their hashes
    (:func:`fold_peaks`) gives that range's MTH."""
    out: list[Node] = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while start + (1 << level) > end:
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """RFC 6962 PATH(index, D[size]) as the leaf ranges whose MTHs make up the path, leaf first."""
    if not 0 <= index < size:
        raise ValueError("index must be within the tree")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    return out[::-1]


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """RFC 6962 PROOF(old, D[new]) as leaf ranges, in the order the proof lists them."""
    if not 0 < old <= new:
        raise ValueError("need 0 < old <= new")
    out: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new, old, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            m -= k
            lo += k
            complete = False
    if not complete:
        out.append((lo, hi))
    return out[::-1]


def nodes_for(ranges: Iterable[tuple[int, int]]) -> set[Node]:
    """Every stored node the MTHs of ``ranges`` are folded from."""
    return {n for a, b in ranges for n in range_nodes(a, b)}


def hash_ranges(ranges: Iterable[tuple[int, int]], nodes: Mapping[Node, bytes]) -> list[bytes]:
    """The MTH of each range, folded from ``nodes`` (KeyError when one is missing)."""
    return [fold_peaks([nodes[n] for n in range_nodes(a, b)]) for a, b in ranges]


def node_row(node: Node) -> tuple[int, int]:
    """Where node ``(level, k)`` is stored: (seq of its row, its level within ``tree_nodes``)."""
    level, k = node
    return (k + 1) << level, level


def nodes_from_rows(
    wanted: Iterable[Node], rows: Callable[[int], bytes | None]
) -> dict[Node, bytes]:
    """Pick ``wanted`` nodes out of ``tree_nodes`` values (``rows(seq)``); missing ones skipped."""
    out: dict[Node, bytes] = {}
    for node in wanted:
        seq, level = node_row(node)
        data = rows(seq)
        if data is not None and len(data) >= HASH_SIZE * (level + 1):
            out[node] = data[HASH_SIZE * level : HASH_SIZE * (level + 1)]
    return out


# -- verification (what a client does with a proof) -------------------------------------------


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 section 2.1.3.2); ValueError if malformed."""
    if not 0 <= index < size:
        raise ValueError("leaf index outside the tree")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ValueError("the proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("the proof is too short")
    return r


def check_consistency(old: int, new: int, old_root: bytes, new_root: bytes,
                      proof: Sequence[bytes]) -> bool:  # fmt: skip
    """Whether ``proof`` shows the tree of ``new`` leaves extends the one of ``old`` (RFC 9162
    section 2.1.4.2)."""
    if old == new:
        return not proof and old_root == new_root
    if not 0 < old < new or not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
