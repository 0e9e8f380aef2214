"""Which paths the door and the gateway act on, and that the gateway forwards them unchanged."""

from __future__ import annotations

import re

import aiohttp
import pytest
from aiohttp import web

from gateway.balancer import Cluster, Member
from gateway.proxy import forward
from shared.logs import REQUEST_ID_MAX_LENGTH, request_id_from
from shared.paths import is_plain_path, is_public_path, public_regex, refused_regex

PLAIN = ["/v1/users/alice.smith", "/v1/users/a.b/visits", "/v1/.well", "/v1/users/...",
         "/v1/users/%C3%B6", "/docs", "/docs/assets/swagger-ui.css", "/metrics",
         "/v1/users?familyName=%2e%2e//x", "/v1/audit/events?cursor=a%2Fb"]
NOT_PLAIN = ["/v1/../metrics", "/v1/audit/../../internal/events/batch", "/v1/./users",
             "/v1/users/.", "/v1/users/..", "/v1/users/..?x=1", "/v1/%2e%2e/x", "/v1/%2E%2E/x",
             "/v1/%2e%2E/x", "/v1/.%2e/x", "/v1/a%2fb", "/v1/a%2Fb", "/v1/a%5cb", "/v1/a\\b",
             "//v1/users", "/v1//users", "v1/users", ""]


@pytest.mark.parametrize("path", PLAIN)
def test_plain_paths(path: str) -> None:
    assert is_plain_path(path)


@pytest.mark.parametrize("path", NOT_PLAIN)
def test_paths_another_parser_could_read_differently_are_refused(path: str) -> None:
    assert not is_plain_path(path)
    assert not is_public_path(path)


def test_the_door_passes_only_the_api_and_its_docs() -> None:
    for path in ("/v1/users/x", "/v1/openapi.json", "/docs", "/docs?x=1",
                 "/docs/assets/init.js"):
        assert is_public_path(path), path
    for path in ("/", "/v1", "/metrics", "/readyz", "/healthz", "/internal/events/batch",
                 "/docsx", "/docs/", "/docs/other", "/v2/users"):
        assert not is_public_path(path), path


def test_nginx_gets_the_same_rules_for_a_request_uri() -> None:
    # nginx matches $request_uri (with its query); the Python check strips the query.
    end = r"\?|$"
    refused = re.compile(r"^[^?]*(?:" + refused_regex(end) + ")")
    public = re.compile(r"^(?:" + public_regex(end) + ")")
    for target in PLAIN + NOT_PLAIN:
        if not target.startswith("/"):
            continue
        nginx_open = not refused.search(target) and bool(public.match(target))
        assert nginx_open == is_public_path(target), target


def test_a_request_id_is_kept_only_when_it_follows_the_rule() -> None:
    assert request_id_from("abc-123_x.y:z") == "abc-123_x.y:z"
    assert request_id_from("a" * REQUEST_ID_MAX_LENGTH) == "a" * REQUEST_ID_MAX_LENGTH
    for bad in ("a" * (REQUEST_ID_MAX_LENGTH + 1), "", None, "has space", 'q"uote', "new\nline",
                "ü"):
        got = request_id_from(bad)
        assert got != bad and re.fullmatch(r"[0-9a-f]{32}", got)


async def test_the_gateway_forwards_exactly_the_path_it_was_given() -> None:
    # A real HTTP server that records the request target it received.
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        def session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession()

        cluster = Cluster(0, "user", [Member(f"http://127.0.0.1:{port}", session)], 5.0)
        targets = ["/v1/users/a%2Eb?x=%2e..", "/v1/audit/x/../y", "/v1/users/%C3%B6/visits"]
        for target in targets:
            up = await forward(cluster, "GET", target, {}, None)
            assert up.status == 200
        await cluster.close()
    finally:
        await runner.cleanup()
    # Not re-normalised by the client: no dot-segment collapsed, no escape decoded.
    assert seen == targets
