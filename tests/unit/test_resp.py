"""The read cache's Redis connection (shared/resp.py): pipelined replies in order, Redis's
errors as redis-py's classes, a lost connection and a silent server told apart."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis.exceptions import AuthenticationError, NoScriptError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from deploy.localstack.ports import free_port
from deploy.localstack.redis_server import ACL_USER, RedisServer
from shared.resp import RespConnection, connect, pack

PASSWORD = "resp-test-password"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def redis_url() -> AsyncIterator[str]:
    base = Path(tempfile.mkdtemp(prefix="medsvc-resp-"))
    server = RedisServer("redis-resp", base, free_port(), base / "redis.log", password=PASSWORD)
    try:
        await server.start()
        yield server.url.replace("/0", "/3")
    finally:
        await server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def test_pipelined_commands_are_answered_in_order(redis_url: str) -> None:
    conn = await connect(redis_url, timeout=2, username=ACL_USER, password=PASSWORD)
    try:
        replies = conn.send([
            ("DEL", "{g}"), ("HSET", "{g}", "f", b"v\x00\r\n" * 3), ("HGET", "{g}", "f"),
            ("HGET", "{g}", "none"), ("EVAL", "return {1, 'x'}", 0), ("PEXPIRE", "{g}", 1500),
            ("EVALSHA", "0" * 40, 0), ("HGET", "{g}", "f"),
        ])  # fmt: skip
        done = await asyncio.gather(*replies, return_exceptions=True)
        assert done[:6] == [0, 1, b"v\x00\r\n" * 3, None, [1, b"x"], 1]
        assert isinstance(done[6], NoScriptError)
        assert done[7] == b"v\x00\r\n" * 3  # an error reply leaves the stream in step
        db = await conn.send([("CLIENT", "INFO")])[0]
        assert b" db=3 " in db  # the URL's database
        with pytest.raises(TypeError):  # not an argument Redis takes: nothing is sent
            conn.send([("HGET", "{g}", "f"), ("HGET", "{g}", True)])
        in_step = await asyncio.wait_for(conn.send([("HGET", "{g}", "f")])[0], 2)
        assert in_step == b"v\x00\r\n" * 3
    finally:
        conn.close()


async def test_credentials_are_required_and_checked(redis_url: str) -> None:
    with pytest.raises(AuthenticationError):
        await connect(redis_url, timeout=2, username=ACL_USER, password="wrong")
    with pytest.raises(AuthenticationError):  # no AUTH: the SELECT of the URL's db is refused
        await connect(redis_url, timeout=2)


async def test_a_lost_connection_fails_what_waits_and_a_silent_one_times_out() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)
        writer.write(b"$5\r\nhel")  # half a reply, then gone
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    for handler in (cut, silent):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            if handler is silent:
                with pytest.raises(RedisTimeoutError):
                    await connect(f"redis://127.0.0.1:{port}/0", timeout=0.2, password="x")
                continue
            conn = await connect(f"redis://127.0.0.1:{port}/0", timeout=1)
            with pytest.raises(RedisConnectionError):
                await conn.send([("HGET", "{g}", "f")])[0]
            assert conn.closed
            with pytest.raises(RedisConnectionError):
                conn.send([("HGET", "{g}", "f")])
        finally:
            server.close()
    with pytest.raises(RedisConnectionError):
        await connect(f"redis://127.0.0.1:{free_port()}/0", timeout=1)


def test_replies_split_anywhere_are_put_together() -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = RespConnection()
        futures = [loop.create_future() for _ in range(3)]
        conn._waiting.extend(futures)
        stream = b"*2\r\n:1\r\n$3\r\nabc\r\n$-1\r\n-NOSCRIPT No matching script\r\n"
        for i in range(len(stream)):
            conn.data_received(stream[i : i + 1])
        assert futures[0].result() == [1, b"abc"] and futures[1].result() is None
        assert isinstance(futures[2].exception(), NoScriptError)
    finally:
        loop.close()
    assert pack([("HGET", "k", b"f"), ("EVAL", "s", 2, 1.5)]) == (
        b"*3\r\n$4\r\nHGET\r\n$1\r\nk\r\n$1\r\nf\r\n"
        b"*4\r\n$4\r\nEVAL\r\n$1\r\ns\r\n$1\r\n2\r\n$3\r\n1.5\r\n"
    )


@pytest.mark.parametrize(
    "stream",
    [b"?what\r\n", b"$abc\r\n", b":1\r\n:2\r\n"],
    ids=["unknown-type", "bad-length", "unasked-reply"],
)
def test_a_stream_that_is_not_the_replies_fails_what_waits_and_closes(stream: bytes) -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = RespConnection()
        futures = [loop.create_future(), loop.create_future()]
        conn._waiting.append(futures[0])
        conn.data_received(stream)
        conn._waiting.append(futures[1])  # sent after the failure: never answered by it
        conn.data_received(b":3\r\n")
        assert conn.closed
        if stream.startswith(b":1"):
            assert futures[0].result() == 1
        else:
            assert isinstance(futures[0].exception(), RedisConnectionError)
        assert not futures[1].done()
    finally:
        loop.close()
