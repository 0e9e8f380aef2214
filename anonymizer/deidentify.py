"""De-identification: the HIPAA Safe Harbor policy applied to one participant or one visit.

Everything here is pure (no I/O) so that the policy can be read, and tested, in one place.
The shard queries (:mod:`anonymizer.shards`) fetch only the columns this module uses: the
extractor never reads names, contact data, notes, reasons or clinicians in the first place.

Pseudonyms. A study's key is ``HMAC-SHA-256(master, "study:" + studyId)``; ``pid`` is
``HMAC-SHA-256(study key, "pid:" + userName)`` and ``vid`` is ``HMAC-SHA-256(study key,
"vid:" + visitId)``, each the first 128 bits in hex. The master key lives only in the
environment (``MEDSVC_PSEUDONYM_KEY``), never beside the output: without it a pseudonym cannot
be recomputed from an identity, and two studies' pseudonyms of one patient cannot be linked.

Safe Harbor (45 CFR 164.514(b)(2)) as applied here:

* birth date → birth year; an age of 90 or more is one group, ``"<=YYYY"`` (YYYY = the run's
  year − 90: whoever was born then or before may be 90, so is reported in the group);
* postal code → its first three digits (US 5-digit or ZIP+4 codes only), ``"000"`` for the 17
  three-digit areas of 20,000 people or fewer; any other code is dropped (``null``);
* visit timestamps → the start year and a duration in minutes;
* diagnoses → system and code (no display text); medications → names only; vitals kept;
* dropped: names, userName, email, phone, street line, city, region, exact dates, visitId,
  clinician, reason, notes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any

# Bump whenever a rule below changes what a record contains; every run records the version.
POLICY_VERSION = "safe-harbor-2026.1"

# The three-digit ZIP areas with 20,000 or fewer people (Census 2000), listed by HHS guidance.
RESTRICTED_ZIP3 = frozenset({
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831",
    "878", "879", "884", "890", "893",
})  # fmt: skip
_US_ZIP = re.compile(r"^(\d{3})\d{2}(?:-?\d{4})?$")
VITAL_KEYS = ("heightCm", "weightKg", "systolic", "diastolic", "heartRate", "temperatureC")
_PSEUDONYM_HEX = 32  # 128 bits


class StudyKeys:
    """The per-study pseudonym functions, derived from the master key."""

    def __init__(self, master_key: bytes, study_id: str) -> None:
        study_key = hmac.new(master_key, b"study:" + study_id.encode(), hashlib.sha256).digest()
        # A keyed hash object, copied per pseudonym: the key schedule is computed once. OpenSSL's
        # HMAC object when hmac has one (the same hash without the pure-Python wrapper per call).
        keyed = hmac.new(study_key, digestmod=hashlib.sha256)
        self._base: Any = getattr(keyed, "_hmac", None) or keyed

    def _pseudonym(self, prefix: bytes, value: str) -> str:
        h = self._base.copy()
        h.update(prefix + value.encode())
        return h.hexdigest()[:_PSEUDONYM_HEX]

    def pid(self, user_name: str) -> str:
        """The participant pseudonym of ``user_name`` in this study."""
        return self._pseudonym(b"pid:", user_name)

    def vid(self, visit_id: str) -> str:
        """The visit pseudonym of ``visit_id`` in this study."""
        return self._pseudonym(b"vid:", visit_id)


def ninety_plus_cutoff(today: dt.date) -> int:
    """The latest birth year reported only as the 90-or-older group on ``today``."""
    return today.year - 90


def birth_year(birth_date: dt.date, cutoff: int) -> int | str:
    """The birth year, or ``"<=cutoff"`` for the 90-or-older group."""
    return f"<={cutoff}" if birth_date.year <= cutoff else birth_date.year


def regroup_birth_year(value: int | str | None, cutoff: int) -> int | str | None:
    """Apply a later run's 90+ cutoff to a birth year de-identified earlier."""
    if isinstance(value, int) and value <= cutoff:
        return f"<={cutoff}"
    return value


def zip3(postal_code: str | None, country: str | None) -> str | None:
    """The three-digit ZIP area, ``"000"`` when restricted; None for a non-US or absent code."""
    if not postal_code or country not in (None, "US"):
        return None
    m = _US_ZIP.match(postal_code.strip())
    if m is None:
        return None
    area = m.group(1)
    return "000" if area in RESTRICTED_ZIP3 else area


def participant(
    keys: StudyKeys, user_name: str, birth_date: dt.date, sex: str,
    address: Mapping[str, Any] | None, cutoff: int,
) -> dict[str, Any]:
    """The participant record of a user row (before any k-anonymity generalisation)."""
    address = address or {}
    country = address.get("country")
    return {
        "kind": "participant",
        "pid": keys.pid(user_name),
        "birthYear": birth_year(birth_date, cutoff),
        "sex": sex,
        "zip3": zip3(address.get("postalCode"), country),
        "country": country,
    }


def duration_minutes(started: dt.datetime, ended: dt.datetime | None) -> int | None:
    """Whole minutes from start to end (rounded), None when the visit has no end."""
    if ended is None:
        return None
    return round((ended - started).total_seconds() / 60)


def visit(
    keys: StudyKeys, pid: str, visit_id: str, visit_type: str, started: dt.datetime,
    ended: dt.datetime | None, diagnoses: Sequence[Mapping[str, Any]] | None,
    vitals: Mapping[str, Any] | None, medications: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """The visit record of a visit row."""
    seconds = None if ended is None else (ended - started).total_seconds()
    return visit_record(
        keys, pid, visit_id, visit_type, started.astimezone(dt.UTC).year, seconds,
        diagnoses, vitals, medications,
    )  # fmt: skip


def visit_record(
    keys: StudyKeys, pid: str, visit_id: str, visit_type: str, year: int,
    duration_seconds: float | None, diagnoses: Sequence[Mapping[str, Any]] | None,
    vitals: Mapping[str, Any] | None, medications: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """The visit record, from the start's UTC year and the visit's length in seconds (None: open).

    What a run uses: the shard query computes the year and the length (``extract``), so the
    timestamps themselves are never fetched. Same record as :func:`visit`.
    """
    return {
        "kind": "visit",
        "pid": pid,
        "vid": keys.vid(visit_id),
        "year": year,
        "type": visit_type,
        "durationMinutes": None if duration_seconds is None else round(duration_seconds / 60),
        "diagnoses": [{"system": d["system"], "code": d["code"]} for d in diagnoses or ()],
        "vitals": {k: vitals[k] for k in VITAL_KEYS if vitals.get(k) is not None} if vitals else None,
        "medications": [m["name"] for m in medications or ()],
    }


def withdrawal(pid: str) -> dict[str, Any]:
    """The record telling the consumer to drop everything of ``pid``."""
    return {"kind": "withdrawal", "pid": pid}
