"""A run's visit stream on a real PostgreSQL COPY: escapes as the server writes them, and a
failure or a cancellation inside the stream leaving the connection usable at once.

(``tests/unit/test_visit_stream.py`` pins the parsing without a server; the e2e tests hold
whole runs to ``deidentify``.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from anonymizer import deidentify, shards, visitlines
from anonymizer.deidentify import StudyKeys
from deploy.localstack.postgres import PostgresServer

KEY = b"test-master-key-of-some-length-0123456789"
PID = "0123456789abcdef0123456789abcdef"
NASTY = 'Jane "JD" Doe\tC:\\notes\\N\nline\r2 \b\f\v \\N é'
DIAGNOSES = [{"system": "ICD-10", "code": "E11.9", "display": NASTY}, {"code": NASTY}]
VITALS = {"heartRate": 61, NASTY: 1}
MEDICATIONS = [{"name": NASTY}, {"name": NASTY, "system": "RxNorm", "code": "860975"}]
# The columns of shards._VISITS_ALL, with the values above ($1: jsonb texts) for n visits ($2),
# all of one participant whose userName COPY escapes (no such userName passes the API: the
# lookup of the line's start holds for any text).
USER_NAME = NASTY
QUERY = """
SELECT '","year":2024,"type":"inpatient","durationMinutes":35', ($1::text[])[4],
       'visit-' || n, n % 2 = 0, ($1::text[])[1]::jsonb, ($1::text[])[2]::jsonb,
       CASE WHEN n % 3 = 0 THEN NULL ELSE ($1::text[])[3]::jsonb END
FROM generate_series(1, $2::int) AS n"""


@pytest_asyncio.fixture(loop_scope="session")
async def conn(pg: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    # A command timeout far above the bound the tests wait: a hang shows as a failed bound.
    c = await asyncpg.connect(pg.dsn, command_timeout=60)
    try:
        yield c
    finally:
        await c.close()


def args(n: int) -> tuple[Any, ...]:
    return ([*(orjson.dumps(v).decode() for v in (DIAGNOSES, VITALS, MEDICATIONS)), USER_NAME], n)


async def stream(
    conn: asyncpg.Connection, n: int, emit: Callable[[bytes, int], Awaitable[None]]
) -> tuple[int, Counter[str]]:
    coded = visitlines.CodedFields(StudyKeys(KEY, "study-s"))
    lines = visitlines.VisitLines(coded, visitlines.VisitLines.starts({USER_NAME: PID}))
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        got = await shards._stream_visits(conn, QUERY, args(n), emit, 2, lines)
    left: Counter[str] = Counter()
    coded.count_into(left)
    return got, left


async def bounded(coro: Awaitable[Any], seconds: float = 15) -> asyncio.Task[Any]:
    """Run ``coro`` to its end, failing the test when it takes longer than ``seconds``."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
    assert task in done, "the stream did not end (the connection hangs)"
    return task


async def test_the_records_from_a_real_copy_are_the_references(
    conn: asyncpg.Connection,
) -> None:
    out: list[bytes] = []

    async def emit(data: bytes, n: int) -> None:
        out.append(data)

    n, left = await stream(conn, 7, emit)
    keys = StudyKeys(KEY, "study-s")
    want_left: Counter[str] = Counter()
    want = [
        deidentify.visit_record(
            keys, PID, f"visit-{i}", "inpatient" if i % 2 == 0 else "x", 2024, 35 * 60,
            DIAGNOSES, VITALS, None if i % 3 == 0 else MEDICATIONS, want_left,
        ) | {"type": "inpatient"}
        for i in range(1, 8)
    ]  # fmt: skip
    assert n == 7
    assert [orjson.loads(line) for line in b"".join(out).splitlines()] == want
    assert +left == +want_left


async def test_a_failure_within_the_stream_is_raised_and_the_connection_stays_usable(
    conn: asyncpg.Connection,
) -> None:
    async def emit(data: bytes, n: int) -> None:
        raise RuntimeError("the writer failed")

    # A few rows: the server has sent them all before the first batch fails.
    task = await bounded(stream(conn, 3, emit))
    with pytest.raises(RuntimeError, match="the writer failed"):
        task.result()
    assert await conn.fetchval("SELECT 1") == 1


async def test_a_cancelled_stream_ends_at_once_and_the_connection_stays_usable(
    conn: asyncpg.Connection,
) -> None:
    entered = asyncio.Event()

    async def emit(data: bytes, n: int) -> None:
        entered.set()
        await asyncio.Event().wait()  # a writer that no longer takes batches

    reader = asyncio.ensure_future(stream(conn, 3, emit))
    await asyncio.wait_for(entered.wait(), 15)
    reader.cancel()
    task = await bounded(reader)
    assert task.cancelled()
    assert await conn.fetchval("SELECT 1") == 1
