"""k-anonymity over the released participant fields (birthYear, sex, zip3, country).

What must hold (API.md): after every run, over what the study's consumer holds — the latest
participant record of every pid, withdrawn pids removed — every combination of released
values is shared by at least k pids. The consumer holds exactly the ``released`` record of
every participant as of the run (a run emits a participant record whenever its released
values change, and a withdrawal for everyone who left), so the rule is applied at every run
to the whole population, and its outcome is what the consumer holds.

The generalisation hierarchy (README "k-anonymity"), one level per participant:

====== =============== ======== ======== ========
level  birthYear       sex      zip3     country
====== =============== ======== ======== ========
0      year / "<=YYYY" kept     kept     kept
1      decade          kept     "000"    kept
2      null            kept     null     kept
3      null            null     null     null
====== =============== ======== ======== ========

The smallest group (participants sharing all four released values) below k is taken first.
If groups at lower levels look the same once generalised to its level, members are pulled up
to it until it has k — just the missing ones from a group that keeps k without them, else
whole groups, the smallest first (e.g. one 1975 patient and two 1971 patients
of one sex and country all become "1970-1979", zip3 "000"); otherwise the group moves up one
level. At level 3 every other group looks the same, so the everything-null group always
reaches k when the study has k participants; only a study with fewer than k participants in
all ends with a group below k, and the report says so (``satisfied`` false). Levels only rise
within a run, so it ends; a later run starts again from level 0, so values are released as
precisely as the population allows, and a group shrunk by a withdrawal is generalised again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

QUASI_IDENTIFIERS = ("birthYear", "sex", "zip3", "country")
TOP = 3
_NOTHING = (None,) * len(QUASI_IDENTIFIERS)
Key = tuple[Any, ...]


def key_of(record: Mapping[str, Any]) -> Key:
    """The released-values tuple of a participant record."""
    return tuple(record.get(f) for f in QUASI_IDENTIFIERS)


def decade(birth_year: int | str | None) -> int | str | None:
    """``1983`` → ``"1980-1989"``; the 90+ group and null stay as they are."""
    if isinstance(birth_year, int):
        start = birth_year - birth_year % 10
        return f"{start}-{start + 9}"
    return birth_year


def generalise(record: Mapping[str, Any], level: int) -> dict[str, Any]:
    """The record with its released fields generalised to ``level`` (0..3)."""
    out = dict(record)
    if level >= 1:
        out["birthYear"] = decade(out.get("birthYear"))
        out["zip3"] = "000" if out.get("zip3") is not None else None
    if level >= 2:
        out["birthYear"] = out["zip3"] = None
    if level >= TOP:
        out["sex"] = out["country"] = None
    return out


def _levels(records: Mapping[str, Mapping[str, Any]], k: int) -> dict[str, int]:
    levels = dict.fromkeys(records, 0)
    keys = {pid: key_of(r) for pid, r in records.items()}

    def at(pid: str, level: int) -> Key:
        return key_of(generalise(records[pid], level))

    while True:
        groups: dict[Key, list[str]] = {}
        for pid, key in keys.items():
            groups.setdefault(key, []).append(pid)
        small = sorted(
            (kv for kv in groups.items() if len(kv[1]) < k),
            key=lambda kv: (len(kv[1]), repr(kv[0])),
        )
        if not small:
            break
        key, members = small[0]
        level = max(levels[p] for p in members)
        # Whole groups, all below this level, that look the same at this level: pulling in the
        # smallest of them first completes the group at the least loss of detail.
        donors = sorted(
            (m for g, m in groups.items() if g != key
             and all(levels[p] < level and at(p, level) == key for p in m)),
            key=lambda m: (len(m), repr(keys[m[0]])),
        )  # fmt: skip
        need = k - len(members)
        # A group that can spare the members missing and keep k itself gives just those;
        # otherwise whole groups join, the smallest first.
        spare = next((d for d in donors if len(d) - need >= k), None)
        if spare is not None:
            pulled, size = sorted(spare)[:need], k
        else:
            size, pulled = len(members), []
            for donor in donors:
                if size >= k:
                    break
                pulled += donor
                size += len(donor)
        if size >= k:
            moved, target = pulled, level
        elif level < TOP:
            moved, target = members, level + 1
        else:
            break  # the everything-null group, and nobody left to join it: fewer than k in all
        for pid in moved:
            levels[pid] = target
            keys[pid] = at(pid, target)
    return levels


def release(
    records: Mapping[str, Mapping[str, Any]], k: int | None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Generalise ``records`` (pid → participant record) for ``k``; return (released, report).

    The report: ``k``, ``participants``, ``smallestGroup`` (before generalisation),
    ``smallestReleasedGroup`` (after), ``generalised`` (records at level 1 or 2),
    ``suppressed`` (level 3: every released field null), ``levels`` (participants per level),
    ``satisfied`` (every released group has at least k members).
    """
    exact = Counter(key_of(r) for r in records.values())
    levels = _levels(records, k) if k is not None and k > 1 else dict.fromkeys(records, 0)
    released = {pid: generalise(r, levels[pid]) for pid, r in records.items()}
    final = Counter(key_of(r) for r in released.values())
    per_level = Counter(levels.values())
    smallest = min(final.values()) if final else None
    report = {
        "k": k,
        "participants": len(records),
        "smallestGroup": min(exact.values()) if exact else None,
        "smallestReleasedGroup": smallest,
        "generalised": per_level[1] + per_level[2],
        "suppressed": per_level[TOP],
        "levels": {str(lv): per_level[lv] for lv in range(TOP + 1)},
        "satisfied": k is None or smallest is None or smallest >= k,
    }
    return released, report
