"""Visit records from the lines a shard's ``COPY`` sends, de-identified in bulk.

A run reads each shard's visits with ``COPY (query) TO STDOUT`` (:mod:`anonymizer.shards`):
one line of tab-separated text per visit, in the columns of ``shards._VISITS_ALL``:

====  ==========================================================================
0     the line's head after the vid: ``","year":…,"type":…,"durationMinutes":…``
1     the userName, which picks the line's start with its pid (:meth:`VisitLines.starts`)
2     the visit id (its vid is computed here: no key material goes to a shard)
3     ``t`` when the type is one of the four, else ``f`` (the head says ``null``)
4-6   diagnoses, vitals, medications: jsonb text, escaped by COPY, checked here
====  ==========================================================================

In bulk, not row by row: a block of lines is split once into its fields, and each column
is handled as a whole — the starts looked up, the vids computed for the whole block
(:meth:`StudyKeys.vids`), each coded column mapped through the values already checked
(:class:`CodedFields`), the invalid types counted — and the records are interleaved from the
columns and joined once. Python's cost
per visit is what bounds a run (the shards send faster than it de-identifies); a loop that
unpacks, looks up and appends field by field costs a third more (measured: 1.6 against
2.1 µs a visit on the bench's rows). The same record as ``deidentify.visit``; the tests
hold the two to each other.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import orjson

from anonymizer import deidentify
from anonymizer.deidentify import StudyKeys

COLUMNS = 7
_HEAD, _USER_NAME, _VISIT_ID, _TYPE_OK, _CODED = 0, 1, 2, 3, 4
# A record's pieces: start, vid, head, the three coded fields, "}\n".
_PIECES = 7

# COPY's text format (what COPY TO writes): a backslash escapes a backslash, the delimiter and
# the control characters below; a field that is just \N is SQL NULL.
_COPY_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_COPY_CONTROL = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_ESCAPES = {b"\\": b"\\\\"} | {v: b"\\" + k for k, v in _COPY_CONTROL.items()}
_UNCONTROL = re.compile(b"[" + re.escape(b"".join(_ESCAPES)) + b"]")


def copy_field(text: str) -> bytes:
    """``text`` as COPY TO writes it in a field (the inverse of :func:`copy_text`)."""
    return _UNCONTROL.sub(lambda m: _ESCAPES[m[0]], text.encode())


def copy_text(field: bytes) -> bytes | None:
    """A field of COPY's text format as its value's text (None: SQL NULL)."""
    if field == b"\\N":
        return None
    if b"\\" not in field:
        return field
    return _COPY_ESCAPE.sub(lambda m: _COPY_CONTROL.get(m[1], m[1]), field)


class CodedFields:
    """The released JSON of each distinct diagnoses / vitals / medications value, remembered.

    Clinical data repeats (the same diagnosis list, the same prescriptions): each distinct
    value is parsed and checked once (:mod:`anonymizer.deidentify`), and what it left out is
    counted once per use. Keyed by the field as ``COPY`` sent it (escaped text: one key per
    value, decoded only when first seen). Bounded: forgotten wholesale past ``LIMIT`` distinct
    values of a field (their counts kept).
    """

    LIMIT = 50_000
    # Up to this many remembered values that left something out, their uses in a block are
    # counted by a pass of the block each (list.count); past it, by one Counter of the block.
    FEW_LEFT = 8
    FIELDS = ("diagnoses", "vitals", "medications")
    CHECKS: dict[str, Callable[[object, deidentify.LeftOut], object]] = {
        "diagnoses": deidentify.coded_diagnoses,
        "vitals": deidentify.bounded_vitals,
        "medications": deidentify.coded_medications,
    }

    def __init__(self, keys: StudyKeys) -> None:
        self.keys = keys
        self.left = Counter[str]()
        # Per field: the value as COPY sent it → its part of the line; → what it left out
        # (values that left something out only); → how many visits used it.
        self._released: list[dict[bytes, bytes]] = [{} for _ in self.FIELDS]
        self._left: list[dict[bytes, Counter[str]]] = [{} for _ in self.FIELDS]
        self._uses: list[Counter[bytes]] = [Counter() for _ in self.FIELDS]

    def released(self, field: int, raws: list[bytes]) -> list[bytes]:
        """The part of the line of each value in ``raws`` (field ``field`` of ``FIELDS``) —
        ``,"diagnoses":[…]`` — checking the values not seen yet; the uses are counted."""
        memo, lefts = self._released[field], self._left[field]
        if len(lefts) <= self.FEW_LEFT:
            # When every value is known (clinical data repeats), one lookup each is all there
            # is to do, and the uses to count are those of the few values that left something
            # out (only theirs are ever read: _settle): one pass of the list each, in C.
            known = list(map(memo.get, raws))
            if None not in known:
                counts = self._uses[field]
                for raw in lefts:
                    if used := raws.count(raw):
                        counts[raw] += used
                return known  # type: ignore[return-value]  # (no None in it)
        uses = Counter(raws)  # (one pass: the distinct values, and how often each is used)
        new = uses.keys() - memo.keys()
        if new and len(memo) + len(new) > self.LIMIT:
            self._settle(field)
            new = set(uses)
        name = self.FIELDS[field]
        check = self.CHECKS[name]
        for raw in new:
            left: Counter[str] = Counter()
            text = copy_text(raw)
            value = check(None if text is None else orjson.loads(text), left)
            memo[raw] = b',"%s":%s' % (name.encode(), orjson.dumps(value))
            if left:
                self._left[field][raw] = left
        self._uses[field].update(uses)
        return list(map(memo.__getitem__, raws))

    def _settle(self, field: int) -> None:
        """Count what the remembered values left out, per use; forget them."""
        uses = self._uses[field]
        for raw, left in self._left[field].items():
            for reason, n in left.items():
                self.left[reason] += n * uses[raw]
        self._released[field].clear()
        self._left[field].clear()
        uses.clear()

    def count_into(self, left: Counter[str]) -> None:
        for field in range(len(self.FIELDS)):
            self._settle(field)
        left.update(self.left)
        self.left.clear()


class VisitLines:
    """Whole COPY lines of visits in, NDJSON visit records out (see the module).

    ``starts``: each participant's userName as COPY sends it → the start of their records
    (:meth:`starts`); a line of anyone else fails the run. Visits whose type is not one of the
    four are counted in ``coded.left``.
    """

    def __init__(self, coded: CodedFields, starts: dict[bytes, bytes]) -> None:
        self.coded = coded
        self._starts = starts

    @staticmethod
    def starts(pids: dict[str, str]) -> dict[bytes, bytes]:
        """userName → pid as :class:`VisitLines` looks them up: the userName as a COPY field,
        the start of the record up to its vid."""
        return {
            copy_field(user_name): b'{"kind":"visit","pid":"%s","vid":"' % pid.encode()
            for user_name, pid in pids.items()
        }

    def records(self, lines: bytes) -> tuple[bytes, int]:
        """The records of ``lines`` (whole lines, each ending with a newline) and their count."""
        fields = lines.replace(b"\n", b"\t").split(b"\t")
        fields.pop()  # the empty string after the last newline
        n, odd = divmod(len(fields), COLUMNS)
        type_ok = fields[_TYPE_OK::COLUMNS]
        bad = type_ok.count(b"f")
        # A line with a column too many or too few shifts every field after it: the type
        # checks would then be other columns (JSON, ids), never all t or f.
        if odd or type_ok.count(b"t") + bad != n:
            raise ValueError(f"a visit line without the {COLUMNS} columns of the run's query")
        try:
            starts = list(map(self._starts.__getitem__, fields[_USER_NAME::COLUMNS]))
        except KeyError:
            raise ValueError("a visit line of someone who is not a participant") from None
        self.coded.left["invalidVisitType"] += bad
        out: list[bytes] = [b"}\n"] * (_PIECES * n)
        out[0::_PIECES] = starts
        out[1::_PIECES] = self.coded.keys.vids(fields[_VISIT_ID::COLUMNS])
        out[2::_PIECES] = fields[_HEAD::COLUMNS]
        for i in range(len(CodedFields.FIELDS)):
            out[3 + i :: _PIECES] = self.coded.released(i, fields[_CODED + i :: COLUMNS])
        return b"".join(out), n
