"""The shard database's bucket of a userName is the gateway's, for every text; its triggers set it.

``medsvc_bucket`` (user_service/migrations/010) reads a name's UTF-8 bytes through
``decode(replace(u, '\\', '\\\\'), 'escape')``, so that PostgreSQL can inline it: a text
that escape decoding would read differently (backslashes, octal-looking runs, non-ASCII,
look-alike characters) must still hash to :func:`shared.shardmap.bucket_of`'s bucket, or the
database would refuse (421) a user the gateway routes to it. And the bucket triggers
(migration 009) must still overwrite whatever bucket an application write carries.
"""

from __future__ import annotations

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.ownership import seed_ownership
from shared.shardmap import bucket_of

from .conftest import one_shard_map

# Any text PostgreSQL can store (no NUL, no lone surrogate), with the characters that escape
# decoding treats specially drawn often.
_TEXTS = st.text(
    alphabet=st.one_of(
        st.sampled_from("\\0123456789xX'\"%_.-"),
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    ),
    max_size=80,
)
_HOSTILE = [
    "\\",
    "\\\\",
    "a\\000b",
    "\\101\\102",
    "\\x41",
    "back\\slash.name",
    "ｊａｎｅ．ｄｏｅ",  # full-width
    "jаne.doe",  # Cyrillic а
    "名前.テスト",
    "emoji.😀.user",
    "",
]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(names=st.lists(_TEXTS, min_size=1, max_size=25))
async def test_the_databases_bucket_is_the_gateways_for_any_text(
    shard_db: str, names: list[str]
) -> None:
    conn = await asyncpg.connect(shard_db)
    try:
        probe = [*_HOSTILE, *names]
        got = await conn.fetch("SELECT u, medsvc_bucket(u) AS b FROM unnest($1::text[]) u", probe)
    finally:
        await conn.close()
    assert [(r["u"], r["b"]) for r in got] == [(u, bucket_of(u)) for u in probe]


@pytest.mark.parametrize("role", ["origin", "replica"])
async def test_a_write_cannot_choose_its_bucket(shard_db: str, role: str) -> None:
    """Whatever bucket an insert or an update sends, the stored one is the name's: for every
    application write (origin role); under the replica role (a move's apply, a bulk load) a
    row arriving without one gets it computed, and a changed userName gets it recomputed."""
    conn = await asyncpg.connect(shard_db)
    try:
        await seed_ownership(conn, 0, one_shard_map(shard_db))
        name, renamed = "back\\slash.user", "renamed.user"
        wrong = (bucket_of(name) + 1) % 1024
        async with conn.transaction():
            await conn.execute(f"SET LOCAL session_replication_role = {role}")
            await conn.execute("SELECT set_config('medsvc.actor', 'test', true)")
            sent = wrong if role == "origin" else None
            await conn.execute(
                "INSERT INTO users (user_name, role, given_name, family_name, birth_date, bucket)"
                " VALUES ($1, 'patient', 'G', 'F', '1980-01-01', $2)",
                name,
                sent,
            )
        assert await conn.fetchval("SELECT bucket FROM users WHERE user_name = $1", name) == (
            bucket_of(name)
        )
        async with conn.transaction():
            await conn.execute(f"SET LOCAL session_replication_role = {role}")
            await conn.execute("SELECT set_config('medsvc.actor', 'test', true)")
            await conn.execute(
                "UPDATE users SET user_name = $2 WHERE user_name = $1", name, renamed
            )
        assert await conn.fetchval("SELECT bucket FROM users WHERE user_name = $1", renamed) == (
            bucket_of(renamed)
        )
        if role == "origin":
            async with conn.transaction():
                await conn.execute("SELECT set_config('medsvc.actor', 'test', true)")
                await conn.execute(
                    "UPDATE users SET bucket = $2 WHERE user_name = $1",
                    renamed,
                    (bucket_of(renamed) + 1) % 1024,
                )
            assert await conn.fetchval(
                "SELECT bucket FROM users WHERE user_name = $1", renamed
            ) == bucket_of(renamed)
    finally:
        await conn.close()
