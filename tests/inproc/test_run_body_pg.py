"""A run's body in the registry, against a real PostgreSQL: written by ``BodyWriter`` in chunks
the anonymizer compresses itself (LZ4 frames), read back by ``store.body_chunks`` as the exact
bytes hashed; chunks written before (stored as they were, codec NULL) read as they are.

(The e2e tests download whole runs through nginx and check the manifest's hash and size.)
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from anonymizer import store
from anonymizer.extract import BodyWriter
from anonymizer.models import StudyIn
from deploy.localstack.postgres import PostgresServer
from shared.db import create_pool
from tests.inproc.conftest import database_from


@pytest_asyncio.fixture(loop_scope="session")
async def registry(pg: PostgresServer, registry_template: str) -> AsyncIterator[asyncpg.Pool]:
    async with database_from(pg, registry_template, "body") as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=2, attempts=1)
        try:
            await store.insert_study(pool, StudyIn(studyId="body-1", title="t"), "rita")
            yield pool
        finally:
            await pool.close()


async def new_run(pool: asyncpg.Pool) -> object:
    async with pool.acquire() as conn:
        row = await store.insert_run(conn, "body-1", "cli", "rita", "policy")
    return row["run_id"]


async def read_body(pool: asyncpg.Pool, run_id: object) -> bytes:
    return b"".join([chunk async for chunk in store.body_chunks(pool, run_id)])


async def test_a_body_is_stored_compressed_and_read_back_byte_for_byte(
    registry: asyncpg.Pool,
) -> None:
    run_id = await new_run(registry)
    pieces = [b'{"kind":"visit","pid":"%032x"}\n' % i for i in range(2000)]
    async with registry.acquire() as conn, conn.transaction():
        body = BodyWriter(conn, run_id)
        body.CHUNK = 4096  # many chunks
        for piece in pieces:
            body.add(piece)
            if body.full:
                await body.flush()
        await body.close()
    want = b"".join(pieces)
    assert (body.size, body.sha256.hexdigest()) == (len(want), hashlib.sha256(want).hexdigest())
    assert await read_body(registry, run_id) == want
    rows = await registry.fetch(
        "SELECT seq, codec, length(data) AS stored FROM run_chunks WHERE run_id = $1 ORDER BY seq",
        run_id,
    )
    assert [r["seq"] for r in rows] == list(range(len(rows))) and len(rows) > 10
    assert {r["codec"] for r in rows} == {store.CODEC}
    assert sum(r["stored"] for r in rows) < len(want) / 3  # NDJSON compresses several times


async def test_chunks_written_before_the_codec_are_read_as_they_are(
    registry: asyncpg.Pool,
) -> None:
    run_id = await new_run(registry)
    old = [b'{"kind":"participant"}\n' * 10, b'{"kind":"visit"}\n' * 20]
    for seq, data in enumerate(old):
        await registry.execute(
            "INSERT INTO run_chunks (run_id, seq, data) VALUES ($1, $2, $3)", run_id, seq, data
        )
    assert await read_body(registry, run_id) == b"".join(old)


async def test_a_chunk_in_another_codec_is_refused(registry: asyncpg.Pool) -> None:
    run_id = await new_run(registry)
    with pytest.raises(asyncpg.CheckViolationError):
        await registry.execute(
            "INSERT INTO run_chunks (run_id, seq, data, codec) VALUES ($1, 0, 'x', 'zstd')",
            run_id,
        )
    with pytest.raises(ValueError, match="unknown codec"):
        store.unpack_chunk(b"x", "zstd")
