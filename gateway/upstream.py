"""Keep-alive HTTP/1.1 exchanges with one FE server: the gateway's hop, without a general client.

Why: the gateway passes every request it does not answer from the cache to an FE server and
reads the whole answer back. aiohttp's client spends about three times the CPU of the
exchange itself on each request (request and response objects, tracing hooks, cookie and
redirect handling, timers): measured with ``forward`` against a hello-world, 75-80 µs of
CPU per request against 17-20 µs for one write of the request and a parse of the answer on
a pooled connection. This module is that write and that parse, for the one kind of
exchange the hop makes: a request with its body in memory, an answer read whole. The parse
is not written here: llhttp (Node.js's parser, the one aiohttp's and uvicorn's servers use)
does it through ``httptools``, so what a proxy must refuse (two framings, a bad chunk, bare
line feeds) is refused by a parser that is maintained and fuzzed for that.

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

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import CIMultiDict

# The largest response head accepted (aiohttp's client allows lines of 8190 bytes).
MAX_HEAD = 64 * 1024
# Idle connections kept per FE server; more in flight at once are closed when done.
MAX_IDLE = 64
_NO_BODY_STATUS = frozenset({204, 304})
_FRAMING = frozenset({"content-length", "transfer-encoding"})


class ConnectFailed(Exception):
    """No connection could be made: the request was not sent."""


class ExchangeFailed(Exception):
    """The connection failed or answered nonsense after the request may have been sent."""


class _Exchange(asyncio.Protocol):
    """One connection; at most one request on it at a time.

    The answer is parsed by llhttp (Node.js's HTTP parser, through ``httptools``), which
    frames it (Content-Length, chunked, or until close) and refuses what a smuggling attempt
    or a broken server would send (both Content-Length and Transfer-Encoding, two lengths, a
    bad chunk size, bare line feeds, folded headers). Its callbacks gather the answer; the
    exchange ends only after a whole ``feed_data`` call went through, so bytes after the
    answer in the same read fail it rather than wait for a next request.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._waiter: asyncio.Future[tuple[int, CIMultiDict[str], bytes]] | None = None
        self._reusable = True

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            # An answer without a length ends with the connection. llhttp would say so in
            # llhttp_finish(), which httptools does not expose: its rule, for the answers
            # it let through (no Content-Length, no Transfer-Encoding, a status with a body).
            if self._head_done and not self._framed and not self._no_body:
                self._waiter.set_result((self._status, self._headers, b"".join(self._body)))
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
        try:
            self._parser.feed_data(data)
            if not self._head_done:
                self._head_size += len(data)
                if self._head_size > MAX_HEAD:
                    raise ExchangeFailed("the answer's head is too large")
            if self._extra:
                raise ExchangeFailed("the server sent more than its answer")
        except (HttpParserError, HttpParserUpgrade, ExchangeFailed) as exc:
            self._reusable = False
            self._waiter.set_exception(_failure(exc))
            self.close()
            return
        if self._complete:
            self._waiter.set_result((self._status, self._headers, b"".join(self._body)))

    # -- httptools' callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer (or bytes that are none) after the first
            self._extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("utf-8", "surrogateescape")
        # llhttp drops the whitespace before a value, not the one after it.
        self._headers.add(key, value.decode("utf-8", "surrogateescape").rstrip(" \t"))
        if key.lower() in _FRAMING:
            self._framed = True

    def on_headers_complete(self) -> None:
        status = self._status = self._parser.get_status_code()
        if status < 200:
            raise ExchangeFailed(f"an interim answer ({status}) was not expected")
        self._head_done = True
        # False for HTTP/1.0 without keep-alive, Connection: close, or a body that ends
        # with the connection.
        self._reusable = self._reusable and self._parser.should_keep_alive()
        self._no_body = self._head_only or status in _NO_BODY_STATUS
        if self._head_only:
            # llhttp cannot be told the request was a HEAD (httptools does not pass its
            # "skip the body" answer on), so it would wait for the body a Content-Length
            # announces: the answer ends here, and this parser is not used again.
            self._complete = True

    def on_body(self, body: bytes) -> None:
        if self._complete:  # a body after the head of a HEAD's answer
            self._extra = True
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # -- one exchange -------------------------------------------------------------------------

    def send(
        self, request: bytes, head_only: bool
    ) -> asyncio.Future[tuple[int, CIMultiDict[str], bytes]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        # A parser per exchange (a third of a µs): each answer starts from a clean state,
        # whatever the last one left (a HEAD's answer ends before llhttp thinks it does).
        self._parser = HttpResponseParser(self)
        self._head_only = head_only
        self._status = 0
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._body: list[bytes] = []
        self._head_size = 0
        self._head_done = False
        self._framed = False  # a Content-Length or a Transfer-Encoding: not until close
        self._no_body = False
        self._complete = False
        self._extra = False
        self.transport.write(request)
        return self._waiter

    def done(self) -> bool:
        """True when this connection may carry another request."""
        return self._reusable and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _failure(exc: Exception) -> ExchangeFailed:
    """The ExchangeFailed for an answer the parser (or a callback of ours) refused."""
    if isinstance(exc, ExchangeFailed):
        return exc
    if isinstance(exc.__context__, ExchangeFailed):  # raised in a callback
        return exc.__context__
    if isinstance(exc, HttpParserUpgrade):
        return ExchangeFailed("the server switched protocols, which was not asked for")
    return ExchangeFailed(f"not a valid HTTP answer: {exc}")


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
