"""A run's visit stream (``anonymizer.shards._stream_visits``) on COPY text, without a server.

The shard sends each visit as one line of COPY's text format; the run splits the lines (they
arrive in pieces of any size), decodes the coded fields (escaped by COPY) and checks them. The
e2e tests hold whole runs to the reference (``deidentify.visit``) on real shards; these pin the
parsing: escapes, SQL NULL, rows cut across reads, the counts, and the idle guard.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonymizer import deidentify, shards, visitlines
from anonymizer.deidentify import StudyKeys

KEY = b"test-master-key-of-some-length-0123456789"
HEAD = b'","year":2024,"type":"inpatient","durationMinutes":35'
# Free text with every character COPY escapes, a quote, a backslash and COPY's NULL marker.
NASTY = 'Jane "JD" Doe\tC:\\notes\\N\nline\r2 \b\f\v 555-0100 \\N'
# The participants, by userName (one that COPY escapes: no such userName passes the API, the
# lookup of the line's start holds for any text), and their pids; visit i is USERS[i % 2]'s.
PIDS = {"jane.doe": "0123456789abcdef0123456789abcdef", NASTY: "fedcba9876543210fedcba9876543210"}
USERS = list(PIDS)


def copy_field(text: str | None) -> bytes:
    """``text`` as PostgreSQL's COPY TO writes a text field (CopyAttributeOutText)."""
    if text is None:
        return b"\\N"
    escapes = {"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v"}  # fmt: skip
    return "".join(escapes.get(c, c) for c in text).encode()


def jsonb_text(value: Any) -> str | None:
    """Like PostgreSQL's jsonb output: JSON text (strings escaped), None for SQL NULL."""
    return None if value is None else orjson.dumps(value).decode()


VISITS: list[tuple[str, bool, Any, Any, Any]] = [
    # visit id, type in its set, diagnoses, vitals, medications
    ("0b9f2c1e-0000-4000-8000-000000000001", True,
     [{"system": "ICD-10", "code": "E11.9", "display": NASTY}, {"system": "ICD-10", "code": NASTY}],
     {"heartRate": 61, "note": NASTY},
     [{"name": NASTY, "dose": NASTY}, {"name": NASTY, "system": "RxNorm", "code": "860975"}]),
    ("0b9f2c1e-0000-4000-8000-000000000002", False, None, None, None),
    ("0b9f2c1e-0000-4000-8000-000000000003", True,
     [{"system": "SNOMED-CT", "code": "44054006", "display": "\\N"}], {"systolic": 120},
     [{"system": "ATC", "code": "A10BA02", "name": "\\N"}]),
    # The same values again: remembered, counted once per use.
    ("0b9f2c1e-0000-4000-8000-000000000004", True,
     [{"system": "ICD-10", "code": "E11.9", "display": NASTY}, {"system": "ICD-10", "code": NASTY}],
     {"heartRate": 61, "note": NASTY},
     [{"name": NASTY, "dose": NASTY}, {"name": NASTY, "system": "RxNorm", "code": "860975"}]),
]  # fmt: skip


def copy_stream() -> bytes:
    """The visits as the shard's COPY sends them (the columns of shards._VISITS_ALL)."""
    lines = []
    for i, (visit_id, type_ok, diagnoses, vitals, medications) in enumerate(VISITS):
        fields = [HEAD, copy_field(USERS[i % 2]), visit_id.encode(), b"t" if type_ok else b"f"]
        fields += [copy_field(jsonb_text(v)) for v in (diagnoses, vitals, medications)]
        lines.append(b"\t".join(fields) + b"\n")
    return b"".join(lines)


class FakeCopy:
    """A connection whose COPY sends ``data`` in pieces of ``size`` bytes, then ``then``."""

    def __init__(
        self, data: bytes, size: int, then: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.data, self.size, self.then = data, size, then

    async def copy_from_query(
        self, query: str, *args: Any, output: Callable[[bytearray], Awaitable[None]], timeout: float
    ) -> str:
        for at in range(0, len(self.data), self.size):
            await output(bytearray(self.data[at : at + self.size]))
        if self.then is not None:
            await self.then()
        return "COPY"


async def stream(
    conn: Any, batch_rows: int = 2, idle: float = shards.IDLE_SECONDS, limit: int | None = None,
    scheme: str = deidentify.AES_MMO,
) -> tuple[list[dict[str, Any]], Counter[str], list[int]]:
    keys = StudyKeys(KEY, "study-s", scheme)
    coded = visitlines.CodedFields(keys)
    if limit is not None:
        coded.LIMIT = limit
    out: list[bytes] = []
    sizes: list[int] = []

    async def emit(data: bytes, n: int) -> None:
        assert data.count(b"\n") == n
        out.append(data)
        sizes.append(n)

    lines = visitlines.VisitLines(coded, visitlines.VisitLines.starts(PIDS))
    n = await shards._stream_visits(conn, "q", (), emit, batch_rows, lines, idle)
    left: Counter[str] = Counter()
    coded.count_into(left)
    records = [orjson.loads(line) for line in b"".join(out).splitlines()]
    assert n == len(records)
    return records, left, sizes


def expected(scheme: str = deidentify.AES_MMO) -> tuple[list[dict[str, Any]], Counter[str]]:
    """What deidentify makes of the visits (the head as the shard built it)."""
    keys = StudyKeys(KEY, "study-s", scheme)
    left: Counter[str] = Counter()
    records = []
    for i, (visit_id, type_ok, diagnoses, vitals, medications) in enumerate(VISITS):
        record = deidentify.visit_record(
            keys, PIDS[USERS[i % 2]], visit_id, "inpatient" if type_ok else "x",
            2024, 35 * 60, diagnoses, vitals, medications, left,
        )  # fmt: skip
        records.append(record | {"type": "inpatient"})  # the head says inpatient
    return records, left


@pytest.mark.parametrize("scheme", [deidentify.AES_MMO, deidentify.HMAC_SHA256])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1 << 20])
async def test_rows_cut_anywhere_give_the_reference_records_and_counts(
    size: int, scheme: str
) -> None:
    records, left, sizes = await stream(FakeCopy(copy_stream(), size), scheme=scheme)
    want, want_left = expected(scheme)
    assert records == want
    assert +left == +want_left
    assert left["invalidVisitType"] == 1 and left["invalidDiagnosis"] == 2
    assert left["uncodedMedication"] == 2 and left["invalidVitals"] == 2
    assert sum(sizes) == len(VISITS)
    assert records[0]["vid"] == StudyKeys(KEY, "study-s", scheme).vid(VISITS[0][0])


@pytest.mark.parametrize("limit", [1, 2])
async def test_values_forgotten_past_the_limit_are_still_counted_per_use(limit: int) -> None:
    records, left, _ = await stream(FakeCopy(copy_stream(), 64), limit=limit)
    want, want_left = expected()
    assert records == want
    assert +left == +want_left


@pytest.mark.parametrize("size", [64, 1 << 20])
async def test_values_that_leave_something_out_counted_when_they_come_after_clean_ones(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = [v for v in VISITS if v[0].endswith(("2", "3"))]
    dirty = [v for v in VISITS if v[0].endswith(("1", "4"))]
    monkeypatch.setattr(f"{__name__}.VISITS", clean * 3 + dirty + clean + dirty)
    records, left, _ = await stream(FakeCopy(copy_stream(), size))
    want, want_left = expected()
    assert records == want
    assert +left == +want_left and left["uncodedMedication"] == 4


async def test_a_line_without_the_seven_columns_fails() -> None:
    broken = copy_stream().replace(b"\tt\t", b"\t", 1)  # the first line loses a column
    with pytest.raises(ValueError, match="columns"):
        await stream(FakeCopy(broken, 1 << 20))


async def test_a_type_check_other_than_t_or_f_fails() -> None:
    broken = copy_stream().replace(b"\tt\t", b"\tx\t", 1)
    with pytest.raises(ValueError, match="columns"):
        await stream(FakeCopy(broken, 1 << 20))


def test_copy_text_decodes_what_copy_escapes() -> None:
    assert visitlines.copy_text(b"\\N") is None
    assert visitlines.copy_text(b"\\\\N") == b"\\N"
    assert visitlines.copy_text(copy_field(NASTY)) == NASTY.encode()
    assert visitlines.copy_text(b"plain") == b"plain"


@given(st.text())
def test_copy_field_writes_a_value_as_copy_does(text: str) -> None:
    assert visitlines.copy_field(text) == copy_field(text)
    assert visitlines.copy_text(visitlines.copy_field(text)) == text.encode()


async def test_a_line_of_someone_who_is_not_a_participant_fails() -> None:
    stranger = copy_stream().replace(b"\tjane.doe\t", b"\tjohn.roe\t", 1)
    with pytest.raises(ValueError, match="not a participant"):
        await stream(FakeCopy(stranger, 1 << 20))


async def test_a_stream_ending_within_a_row_fails() -> None:
    with pytest.raises(ValueError, match="within a row"):
        await stream(FakeCopy(copy_stream()[:-5], 64))


async def test_a_stream_without_data_for_the_idle_time_fails() -> None:
    async def stall() -> None:
        await asyncio.sleep(30)

    task = asyncio.create_task(stream(FakeCopy(copy_stream(), 64, stall), idle=0.2))
    done, _ = await asyncio.wait({task}, timeout=10)  # (not the guard's timeout: a bound)
    if not done:
        task.cancel()
    assert task in done, "the stalled stream was not stopped"
    with pytest.raises(TimeoutError):
        task.result()


async def test_waiting_for_the_writer_is_not_idleness() -> None:
    keys = StudyKeys(KEY, "study-s")
    got: list[int] = []

    async def slow_writer(data: bytes, n: int) -> None:
        await asyncio.sleep(0.3)  # longer than the idle time, for every batch
        got.append(n)

    lines = visitlines.VisitLines(visitlines.CodedFields(keys), visitlines.VisitLines.starts(PIDS))
    n = await shards._stream_visits(
        FakeCopy(copy_stream(), 64), "q", (), slow_writer, 1, lines, 0.1
    )
    assert n == sum(got) == len(VISITS)


# Medications as COPY sends them: clean (coded), and ones that leave something out (uncoded,
# or a code without its system's form), each a distinct value.
_MEDICATIONS = [
    copy_field(jsonb_text(m))
    for m in (
        [{"system": "RxNorm", "code": "860975"}],
        [{"system": "ATC", "code": "A10BA02", "name": NASTY}],
        [{"name": "metformin", "dose": "500 mg"}],
        [{"name": NASTY}, {"system": "RxNorm", "code": "860975"}],
        [{"system": "RxNorm", "code": "86O975"}],
        None,
    )
]


@settings(max_examples=150, deadline=None)
@given(
    blocks=st.lists(st.lists(st.sampled_from(_MEDICATIONS), max_size=12), max_size=8),
    few_left=st.sampled_from([0, 1, 2, 8]),
    limit=st.sampled_from([1, 2, 3, 50_000]),
)
def test_coded_fields_count_every_use_of_what_was_left_out(
    blocks: list[list[bytes]], few_left: int, limit: int
) -> None:
    """However the values are spread over blocks, remembered or forgotten, counted by a pass
    per value or by a Counter: the counts are those of checking every use afresh."""
    coded = visitlines.CodedFields(StudyKeys(KEY, "study-s"))
    coded.FEW_LEFT, coded.LIMIT = few_left, limit
    medications = coded.FIELDS.index("medications")
    want: Counter[str] = Counter()
    for block in blocks:
        got = coded.released(medications, list(block))
        for raw, part in zip(block, got, strict=True):
            text = visitlines.copy_text(raw)
            value = deidentify.coded_medications(None if text is None else orjson.loads(text), want)
            assert part == b',"medications":' + orjson.dumps(value)
    left: Counter[str] = Counter()
    coded.count_into(left)
    assert +left == +want
