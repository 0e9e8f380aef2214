"""One Redis connection carrying pipelined commands: the read cache's batches (shared/cache.py).

Why: every cached read the gateway answers costs one Redis command, and every write two
scripts; redis-py's asyncio client spends more CPU on each than the exchange itself (pool
checkout and release, a retry wrapper, a timeout scope per reply, its reply callbacks).
Measured with ``ReadCache.peek`` on a local Redis: 35 µs of CPU per HGET one at a time and
11.5 µs eight at a time through redis-py, 12 µs and 5.3 µs as one write of the commands
and a parse of the replies on one connection.

This is the RESP2 protocol for that one use: commands written back to back on one
connection, each answered by the next reply in order. Neither the encoding nor the parse is
written here: hiredis (the C library redis-py itself uses when installed) packs the commands
and reads the replies; this module only pairs each reply with its command. Errors come out
as redis-py's exception classes, so the cache's handling (the breaker, a write's retries) is
unchanged: ``ConnectionError`` when the connection cannot be made or is lost (or sends what
is not RESP), ``TimeoutError`` when the server does not answer in time, the reply's own
error class (``NoScriptError``, ...) for an error reply.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from hiredis import pack_command
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[Any]
# What the reader's gets() returns while a reply has not fully arrived.
_INCOMPLETE = object()


def pack(commands: Sequence[Command]) -> bytes:
    """The RESP2 encoding of ``commands`` (each a sequence of str, bytes, int or float),
    by hiredis's packer (redis-py's with hiredis installed); anything else is a TypeError."""
    return b"".join([pack_command(tuple(command)) for command in commands])


def _reader() -> hiredis.Reader:
    """hiredis's RESP parser: replies as bytes, ints, lists and None; an error reply as the
    redis-py exception its prefix names (NOSCRIPT: NoScriptError, ...), as redis-py's own
    hiredis parser builds it; a stream that is not RESP as a lost connection."""
    return hiredis.Reader(
        protocolError=RedisConnectionError,
        replyError=BaseParser.parse_error,
        notEnoughData=_INCOMPLETE,
    )


class RespConnection(asyncio.Protocol):
    """One connection; each reply answers the oldest command still waiting."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._reader = _reader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError(f"the connection to Redis was lost ({exc!r})"))

    def data_received(self, data: bytes) -> None:
        if self.closed:  # failed on a stream that was not RESP: nothing more is read
            return
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not _INCOMPLETE:
                if not self._waiting:
                    raise RedisConnectionError("Redis sent a reply nothing asked for")
                future = self._waiting.popleft()
                if future.done():  # its caller gave up (a timeout): the reply is dropped
                    continue
                if isinstance(reply, RedisError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except RedisError as exc:  # the reader's protocol error included
            self._fail(exc)
            self.close()

    def send(self, commands: Sequence[Command]) -> list[asyncio.Future[Any]]:
        """Write ``commands`` at once; one future per command for its reply."""
        if self.closed or self.transport is None:
            raise RedisConnectionError("the connection to Redis is closed")
        data = pack(commands)  # first: a command that cannot be sent leaves nothing waiting
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._waiting.extend(futures)
        self.transport.write(data)
        return futures

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: RedisError) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)


async def connect(
    url: str, *, timeout: float, username: str | None = None, password: str | None = None
) -> RespConnection:
    """A connection to the Redis of ``redis://[user:password@]host:port[/db]``, logged in
    (``username``/``password`` over the URL's) and on its database."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"only redis:// URLs are supported, not {parts.scheme}://")
    username = username or (unquote(parts.username) if parts.username else None)
    password = password or (unquote(parts.password) if parts.password else None)
    db = int(parts.path.lstrip("/") or 0)
    setup: list[Command] = []
    if password is not None:
        setup.append(("AUTH", username, password) if username else ("AUTH", password))
    if db:
        setup.append(("SELECT", db))
    where = f"{parts.hostname}:{parts.port}"  # never the URL: it may hold a password
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(
                RespConnection, parts.hostname or "127.0.0.1", parts.port or 6379
            )
            try:
                answers = await asyncio.gather(*conn.send(setup), return_exceptions=True)
                if failed := next((a for a in answers if isinstance(a, BaseException)), None):
                    raise failed
            except BaseException:
                conn.close()
                raise
    except TimeoutError as exc:
        raise RedisTimeoutError(f"Timeout connecting to Redis at {where}") from exc
    except OSError as exc:
        raise RedisConnectionError(f"Error connecting to Redis at {where}: {exc}") from exc
    return conn
