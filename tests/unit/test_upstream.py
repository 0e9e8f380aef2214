"""The gateway's lean FE hop (gateway/upstream.py) against real sockets.

An aiohttp server stands in for an FE server (keep-alive, bodies, HEAD, 204); small raw
servers send what aiohttp would not (chunked and close-delimited bodies, a cut answer,
silence, nonsense). Each failure must come out as the kind forward() retries by: refused
(never sent), lost (maybe sent), or a timeout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from deploy.localstack.ports import free_port
from gateway.upstream import ConnectFailed, ExchangeFailed, UpstreamPool


@pytest_asyncio.fixture
async def fe() -> AsyncIterator[tuple[TestServer, list[object]]]:
    seen: list[object] = []  # the client's address of each request

    async def echo(request: web.Request) -> web.Response:
        assert request.transport is not None
        seen.append(request.transport.get_extra_info("peername"))
        body = await request.read()
        return web.json_response(
            {"method": request.method, "path": request.raw_path, "body": body.decode(),
             "auth": request.headers.get("Authorization")},
            headers={"ETag": '"7"'},
        )  # fmt: skip

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/empty", empty)
    app.router.add_route("*", "/{tail:.*}", echo)
    server = TestServer(app)
    await server.start_server()
    try:
        yield server, seen
    finally:
        await server.close()


def pool_for(port: int, total: float = 5.0) -> UpstreamPool:
    return UpstreamPool(f"http://127.0.0.1:{port}", connect_timeout=2, total_timeout=total)


async def test_requests_reuse_one_connection_and_keep_the_path_as_sent(fe) -> None:
    server, seen = fe
    pool = pool_for(server.port)
    for n in range(3):
        status, headers, body = await pool.request(
            "POST", f"/v1/users/a%2Fb/visits?x={n}", [("Authorization", "Bearer t")], b'{"n": 1}'
        )
        assert status == 200 and headers["ETag"] == '"7"' and headers["etag"] == '"7"'
        assert json.loads(body) == {"method": "POST", "path": f"/v1/users/a%2Fb/visits?x={n}",
                                    "body": '{"n": 1}', "auth": "Bearer t"}  # fmt: skip
    assert len(seen) == 3 and len(set(seen)) == 1  # one keep-alive connection for all three
    status, _, body = await pool.request("HEAD", "/v1/x", [], None)
    assert (status, body) == (200, b"")
    status, _, body = await pool.request("DELETE", "/empty", [], None)
    assert (status, body) == (204, b"")
    status, _, body = await pool.request("GET", "/after", [], None)
    assert status == 200 and json.loads(body)["path"] == "/after"  # still in step
    pool.close()


async def test_a_refused_connection_is_refused_not_lost() -> None:
    with pytest.raises(ConnectFailed):
        await pool_for(free_port()).request("POST", "/v1/x", [], b"{}")


async def test_a_header_with_a_line_break_is_not_sent(fe) -> None:
    server, seen = fe
    with pytest.raises(ValueError, match="line break"):
        await pool_for(server.port).request("GET", "/", [("If-Match", '"1"\r\nX-Evil: 1')], None)
    assert seen == []


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | None"]


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[Callable[[bytes | None, bool], asyncio.Future[int]]]:
    """``raw(answer, close)``: a server that reads one request head, writes ``answer`` (None:
    nothing at all) and closes the connection when ``close``; resolves to its port."""
    servers: list[asyncio.Server] = []

    async def start(answer: bytes | None, close: bool) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if answer is None:
                await asyncio.sleep(5)
            else:
                writer.write(answer)
                await writer.drain()
            if close:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield lambda answer, close: asyncio.ensure_future(start(answer, close))
    for server in servers:
        server.close()


async def test_chunked_and_close_delimited_bodies_are_read_whole(raw) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n")  # fmt: skip
    status, _, body = await pool_for(await raw(chunked, False)).request("GET", "/", [], None)
    assert (status, body) == (200, b"hello, world")
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    status, _, body = await pool_for(await raw(until_close, True)).request("GET", "/", [], None)
    assert (status, body) == (200, b"all of it")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nonly5",  # cut short
        b"",  # closed without a word
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc",  # more than it said
    ],
    ids=["cut", "closed", "not-http", "bad-length", "too-long"],
)
async def test_a_broken_answer_is_lost(raw, answer: bytes) -> None:
    with pytest.raises(ExchangeFailed):
        await pool_for(await raw(answer, True)).request("POST", "/", [], b"{}")


async def test_silence_is_a_timeout(raw) -> None:
    pool = pool_for(await raw(None, False), total=0.3)
    with pytest.raises(TimeoutError):
        await pool.request("GET", "/", [], None)
    assert pool._idle == []  # the connection of a timed-out exchange is not reused


@pytest.mark.parametrize(
    "answer",
    [
        # Two framings at once: a front end and a back end that pick different ones disagree
        # on where the answer ends (response smuggling).
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",  # bare line feeds
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",  # a space before the colon
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        # A whole second answer after the first, in the same read.
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * (70 * 1024),  # a head that never ends
    ],
    ids=[
        "cl-and-te",
        "two-lengths",
        "bad-chunk-size",
        "negative-chunk-size",
        "bare-lf",
        "space-before-colon",
        "folded-header",
        "second-answer",
        "interim",
        "upgrade",
        "head-too-large",
    ],  # fmt: skip
)
async def test_a_malformed_answer_is_lost_and_its_connection_not_reused(raw, answer) -> None:
    # The server keeps the connection open: only the client's refusal closes it.
    pool = pool_for(await raw(answer, False))
    with pytest.raises(ExchangeFailed):
        await pool.request("GET", "/", [], None)
    assert pool._idle == []


async def test_a_head_answer_does_not_wait_for_the_body_it_announces(raw) -> None:
    pool = pool_for(await raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", False))
    status, headers, body = await pool.request("HEAD", "/", [], None)
    assert (status, headers["Content-Length"], body) == (200, "5", b"")
    assert len(pool._idle) == 1  # in step: may carry the next request
    # The same answer to a GET is cut short: it waits for its 5 bytes until the deadline.
    pool = pool_for(await raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", False), total=0.3)
    with pytest.raises(TimeoutError):
        await pool.request("GET", "/", [], None)


async def test_header_values_lose_their_surrounding_whitespace_only(raw) -> None:
    answer = b'HTTP/1.1 200 OK\r\nETag:  "a b" \t\r\nContent-Length: 0\r\n\r\n'
    _, headers, _ = await pool_for(await raw(answer, False)).request("GET", "/", [], None)
    assert headers["etag"] == '"a b"'
