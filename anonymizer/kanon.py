"""k-anonymity over the quasi-identifiers (birthYear, sex, zip3) of a study's participants.

The rule (README "k-anonymity"): the population is every participant of the study as of the
run. A participant whose exact (birthYear, sex, zip3) group has fewer than k members is
released at level 1: birth decade (``"1980-1989"``) and zip3 ``"000"``. Level-1 participants
are grouped again by their level-1 values; one in a group still smaller than k is released at
level 2: birthYear, sex and zip3 all ``null``. Without k (or k ≤ 1) nothing is generalised.

A participant whose released values change (a group shrank or grew, a birth year entered the
90+ group) gets a new participant record, so the consumer always holds the current release.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

QUASI_IDENTIFIERS = ("birthYear", "sex", "zip3")
Key = tuple[Any, ...]


def key_of(record: Mapping[str, Any]) -> Key:
    """The quasi-identifier tuple of a participant record."""
    return tuple(record.get(f) for f in QUASI_IDENTIFIERS)


def decade(birth_year: int | str | None) -> int | str | None:
    """``1983`` → ``"1980-1989"``; the 90+ group and null stay as they are."""
    if isinstance(birth_year, int):
        start = birth_year - birth_year % 10
        return f"{start}-{start + 9}"
    return birth_year


def generalise(record: Mapping[str, Any], level: int) -> dict[str, Any]:
    """The record with its quasi-identifiers generalised to ``level`` (0, 1 or 2)."""
    out = dict(record)
    if level >= 1:
        out["birthYear"] = decade(out.get("birthYear"))
        out["zip3"] = "000" if out.get("zip3") is not None else None
    if level >= 2:
        out["birthYear"] = out["sex"] = out["zip3"] = None
    return out


def release(
    records: Mapping[str, Mapping[str, Any]], k: int | None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Generalise ``records`` (pid → participant record) for ``k``; return (released, report).

    The report: ``k``, ``smallestGroup`` (before generalisation), ``smallestReleasedGroup``
    (after), ``generalised`` (how many records were), ``participants``.
    """
    exact = Counter(key_of(r) for r in records.values())
    levels = dict.fromkeys(records, 0)
    if k is not None and k > 1:
        for pid, r in records.items():
            if exact[key_of(r)] < k:
                levels[pid] = 1
        coarse = Counter(key_of(generalise(records[p], 1)) for p, lv in levels.items() if lv == 1)
        for pid, lv in levels.items():
            if lv == 1 and coarse[key_of(generalise(records[pid], 1))] < k:
                levels[pid] = 2
    released = {pid: generalise(r, levels[pid]) for pid, r in records.items()}
    # Groups are counted on the released values: records that look alike once released are
    # one group, whatever level brought them there.
    final = Counter(key_of(r) for r in released.values())
    report = {
        "k": k,
        "participants": len(records),
        "smallestGroup": min(exact.values()) if exact else None,
        "smallestReleasedGroup": min(final.values()) if final else None,
        "generalised": sum(1 for lv in levels.values() if lv > 0),
    }
    return released, report
