"""One Redis connection carrying pipelined commands: the read cache's batches (shared/cache.py).

Why: every cached read the gateway answers costs one Redis command, and every write two
scripts; redis-py's asyncio client spends more CPU on each than the exchange itself (pool
checkout and release, a retry wrapper, a timeout scope per reply, its reply callbacks).
Measured with ``ReadCache.peek`` on a local Redis: 35 µs of CPU per HGET one at a time and
11.5 µs eight at a time through redis-py, 12 µs and 5.3 µs as one write of the commands
and a parse of the replies on one connection.

This is the RESP2 protocol for that one use: commands written back to back on one
connection, each answered by the next reply in order. Errors come out as redis-py's
exception classes, so the cache's handling (the breaker, a write's retries) is unchanged:
``ConnectionError`` when the connection cannot be made or is lost, ``TimeoutError`` when the
server does not answer in time, the reply's own error class (``NoScriptError``, ...) for an
error reply.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[Any]
# What _parse returns for a reply that has not fully arrived yet.
_INCOMPLETE = object()


def pack(commands: Sequence[Command]) -> bytes:
    """The RESP2 encoding of ``commands`` (each a sequence of str, bytes, int or float)."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, int | float) and not isinstance(arg, bool):
                data = repr(arg).encode()
            else:
                raise TypeError(f"a Redis argument must be str, bytes or a number, not {arg!r}")
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """(the reply starting at ``pos``, the position after it), or (_INCOMPLETE, pos)."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return _INCOMPLETE, pos
    kind, line = buf[pos], bytes(buf[pos + 1:eol])
    after = eol + 2
    if kind == 0x2B:  # +simple string
        return line, after
    if kind == 0x2D:  # -error
        error = BaseParser.parse_error(line.decode("utf-8", "replace"))  # type: ignore[no-untyped-call]
        return error, after
    if kind == 0x3A:  # :integer
        return int(line), after
    if kind == 0x24:  # $bulk string
        size = int(line)
        if size < 0:
            return None, after
        if len(buf) < after + size + 2:
            return _INCOMPLETE, pos
        return bytes(buf[after:after + size]), after + size + 2
    if kind == 0x2A:  # *array
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = _parse(buf, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, after
    raise RedisConnectionError(f"not a Redis reply: {bytes(buf[pos:pos + 20])!r}")


class RespConnection(asyncio.Protocol):
    """One connection; each reply answers the oldest command still waiting."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError(f"the connection to Redis was lost ({exc!r})"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        pos = 0
        try:
            while pos < len(self._buf):
                reply, pos = _parse(self._buf, pos)
                if reply is _INCOMPLETE:
                    break
                if not self._waiting:
                    raise RedisConnectionError("Redis sent a reply nothing asked for")
                future = self._waiting.popleft()
                if future.done():  # its caller gave up (a timeout): the reply is dropped
                    continue
                if isinstance(reply, RedisError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (RedisError, ValueError) as exc:
            self._fail(exc if isinstance(exc, RedisError) else RedisConnectionError(str(exc)))
            self.close()
            return
        del self._buf[:pos]

    def send(self, commands: Sequence[Command]) -> list[asyncio.Future[Any]]:
        """Write ``commands`` at once; one future per command for its reply."""
        if self.closed or self.transport is None:
            raise RedisConnectionError("the connection to Redis is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._waiting.extend(futures)
        self.transport.write(pack(commands))
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
