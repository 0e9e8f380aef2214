"""Keep-alive HTTP/1.1 exchanges with one FE server: the gateway's hop, without a general client.

Why: the gateway passes every request it does not answer from the cache to an FE server and
reads the whole answer back. aiohttp's client spends about three times the CPU of the
exchange itself on each request (request and response objects, tracing hooks, cookie and
redirect handling, timers): measured with ``forward`` against a hello-world, 75-80 µs of
CPU per request against 17-20 µs for one write of the request and a parse of the answer on
a pooled connection. This module is that write and that parse, for the one kind of
exchange the hop makes: a request with its body in memory, an answer read whole.

Failures keep the two kinds :func:`gateway.proxy.forward` tells apart: :class:`ConnectFailed`
(the connection was refused: the request never reached a server, any method may go
elsewhere) and :class:`ExchangeFailed` (lost after it may have been sent, or an answer that
is not HTTP: retried only where that is safe). A timeout is ``TimeoutError``, as a lost one
(the connection timeout included, as aiohttp's client classes it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import cast

from multidict import CIMultiDict

# The largest response head accepted (aiohttp's client allows lines of 8190 bytes).
MAX_HEAD = 64 * 1024
# Idle connections kept per FE server; more in flight at once are closed when done.
MAX_IDLE = 64
_NO_BODY_STATUS = frozenset({204, 304})


class ConnectFailed(Exception):
    """No connection could be made: the request was not sent."""


class ExchangeFailed(Exception):
    """The connection failed or answered nonsense after the request may have been sent."""


class _Exchange(asyncio.Protocol):
    """One connection; at most one request on it at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, CIMultiDict[str], bytes]] | None = None
        self._head_only = False
        self._reusable = True

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            # An answer without a length ends with the connection.
            if self._until_close():
                return
            self._waiter.set_exception(ExchangeFailed(
                f"the connection was lost before the answer was complete ({exc!r})"
            ))  # fmt: skip

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for: this connection cannot be trusted for another request.
            self._reusable = False
            self.close()
            return
        self._buf += data
        try:
            self._parse()
        except ExchangeFailed as exc:
            self._reusable = False
            self._waiter.set_exception(exc)
            self.close()

    # -- one exchange -------------------------------------------------------------------------

    def send(
        self, request: bytes, head_only: bool
    ) -> asyncio.Future[tuple[int, CIMultiDict[str], bytes]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._buf.clear()
        self._head_only = head_only
        self._status = 0
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._body_start = -1  # where the body starts in the buffer, once the head is parsed
        self._length: int | None = None  # the body's length, when the head gave one
        self._chunked = False
        self.transport.write(request)
        return self._waiter

    def done(self) -> bool:
        """True when this connection may carry another request."""
        return self._reusable and not self.closed and not self._buf

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> None:
        if self._body_start < 0 and not self._parse_head():
            return
        assert self._waiter is not None
        buf, start = self._buf, self._body_start
        if self._chunked:
            body = self._dechunk()
            if body is None:
                return
        elif self._length is not None:
            if len(buf) - start < self._length:
                return
            if len(buf) - start > self._length:
                raise ExchangeFailed("the server sent more than its answer's Content-Length")
            body = bytes(buf[start:])
        else:
            return  # read until the connection closes (connection_lost)
        self._buf.clear()
        self._waiter.set_result((self._status, self._headers, body))

    def _parse_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise ExchangeFailed("the answer's head is too large")
            return False
        lines = bytes(self._buf[:end]).decode("utf-8", "surrogateescape").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit():
            raise ExchangeFailed(f"not an HTTP answer: {lines[0][:40]!r}")
        self._status = int(code)
        headers = self._headers
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ExchangeFailed("a malformed header line in the answer")
            headers.add(name, value.strip())
        if version == "HTTP/1.0" or headers.get("Connection", "").lower() == "close":
            self._reusable = False
        self._body_start = end + 4
        if self._head_only or self._status in _NO_BODY_STATUS or self._status < 200:
            if self._status < 200:
                raise ExchangeFailed(f"an interim answer ({self._status}) was not expected")
            self._length = 0
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._chunked = True
        elif (length := headers.get("Content-Length")) is not None:
            if not length.isdigit():
                raise ExchangeFailed("the answer's Content-Length is not a number")
            self._length = int(length)
        else:
            self._reusable = False  # the body ends when the connection does
        return True

    def _dechunk(self) -> bytes | None:
        """The whole chunked body once it has arrived, else None."""
        buf, pos = self._buf, self._body_start
        parts: list[bytes] = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise ExchangeFailed("a malformed chunk size in the answer") from exc
            if size == 0:
                # The last chunk, then trailers (ignored) up to an empty line.
                end = buf.find(b"\r\n\r\n", eol)
                if end < 0:
                    return None
                if len(buf) > end + 4:
                    raise ExchangeFailed("the server sent more than its chunked answer")
                return b"".join(parts)
            start = eol + 2
            if len(buf) < start + size + 2:
                return None
            parts.append(bytes(buf[start:start + size]))
            pos = start + size + 2

    def _until_close(self) -> bool:
        """Complete an answer whose body ends with the connection; True if there was one."""
        if self._body_start < 0 or self._chunked or self._length is not None:
            return False
        assert self._waiter is not None
        self._waiter.set_result((self._status, self._headers, bytes(self._buf[self._body_start:])))
        return True


class UpstreamPool:
    """Keep-alive connections to one FE server (``http://host:port``)."""

    def __init__(self, url: str, *, connect_timeout: float | None, total_timeout: float | None):
        scheme, _, authority = url.partition("://")
        if scheme != "http" or not authority or "/" in authority:
            raise ValueError(f"an FE server's URL is http://host:port, not {url!r}")
        host, _, port = authority.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self._host_line = f"Host: {authority}\r\n"
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self._idle: list[_Exchange] = []
        self._closed = False

    async def request(
        self, method: str, path_qs: str, headers: Iterable[tuple[str, str]], body: bytes | None
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """Send one request and read its whole answer: (status, headers, body)."""
        async with asyncio.timeout(self.total_timeout):
            conn = await self._connection()
            try:
                status, answer_headers, payload = await conn.send(
                    self._encode(method, path_qs, headers, body), method == "HEAD"
                )
            except BaseException:
                conn.close()
                raise
        if conn.done() and not self._closed and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()
        return status, answer_headers, payload

    def close(self) -> None:
        """Close the idle connections; the ones in use close when their exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _connection(self) -> _Exchange:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Exchange, self.host, self.port)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    def _encode(
        self, method: str, path_qs: str, headers: Iterable[tuple[str, str]], body: bytes | None
    ) -> bytes:
        lines = [f"{method} {path_qs} HTTP/1.1\r\n", self._host_line]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\0" in value:
                # aiohttp's parser never yields one; refuse rather than split the request.
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}\r\n")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape") + (body or b"")
