"""The door, tried from outside as a curious user would: only the API gets through.

Requests are written with a raw client (tests/e2e/edge.py) that sends ``..``, ``%2e`` and
``//`` exactly as given. Every path that is not the API or its reference page, or that is
not a plain path, gets nginx's own 404 problem, and no process behind nginx ever sees it;
the gateways, asked directly, refuse the same paths. Then the production edge: plain HTTP
redirects, HTTPS carries HSTS and refuses old protocols and weak ciphers, the real rate limit
answers 429, and the request id follows one rule at every hop.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid

import aiohttp
import orjson
import pytest

from deploy.localstack import Stack
from deploy.localstack.nginx import DEFAULT_BURST, DEFAULT_RATE
from shared.logs import REQUEST_ID_MAX_LENGTH
from tests.e2e.api import Api, unique
from tests.e2e.edge import RawReply, production_nginx, raw_request, tls_context

pytestmark = pytest.mark.timeout(180)

PROBLEM = "application/problem+json"
NGINX_404 = {
    "type": "about:blank",
    "title": "Not Found",
    "status": 404,
    "detail": "no resource at this path",
}
NGINX_400 = {
    "type": "about:blank",
    "title": "Bad Request",
    "status": 400,
    "detail": "malformed request",
}

# Paths that name something other than the API, or that are not plain paths. Some would
# normalise onto an internal or operations endpoint at some hop.
REFUSED = [
    "/",
    "/metrics",
    "/readyz",
    "/healthz",
    "/internal/events/batch",
    "/v1",
    "/docsx",
    "/docs/",
    "/favicon.ico",
    "/.problem/404x",
    "/v1/../metrics",
    "/v1/./users",
    "/v1/users/..",
    "/v1/users/.",
    "/v1/audit/../../internal/events/batch",
    "/v1/audit/../../readyz",
    "/v1/%2e%2e/metrics",
    "/v1/%2E%2E/readyz",
    "/v1/%2e%2E/healthz",
    "/v1/.%2e/metrics",
    "/v1/%2e./metrics",
    "/v1/audit/%2e%2e/%2e%2e/internal/events/batch",
    "/v1/users/%2e",
    "/%2e%2e/metrics",
    "/v1/users/a%2fb",
    "/v1/users/a%2F..%2Fmetrics",
    "/v1/users/a%5c..%5cmetrics",
    "/v1/users/a\\..\\metrics",
    "//metrics",
    "/v1//users",
    "/v1/users//alice.smith",
    "/v1/users/alice.smith//visits",
    "/docs/../metrics",
    "/docs/assets/../../metrics",
    "/docs/assets/%2e%2e/%2e%2e/metrics",
    "/v1/audit/..?x=1",
    "/v1/%2e%2e?q=/v1/",
]


def rid() -> str:
    return f"edge-{uuid.uuid4().hex}"


def log_lines_with(stack: Stack, ids: set[str]) -> list[str]:
    """Log lines of every process behind nginx that carry one of ``ids``."""
    hits = []
    for path in sorted(stack.logs_dir.glob("*.log")):
        if path.name.startswith(("nginx", "postgres-", "redis-")):
            continue
        for line in path.read_text(errors="replace").splitlines():
            if any(i in line for i in ids):
                hits.append(f"{path.name}: {line}")
    return hits


def assert_nginx_404(reply: RawReply, target: str) -> None:
    """nginx's own 404 problem; or its 400 for a path that climbs above the root, which it
    refuses while parsing the request line, before any configuration applies."""
    assert reply.status in (404, 400), (target, reply.status, reply.body[:300])
    assert (reply.header("content-type") or "").startswith(PROBLEM), (target, reply.headers)
    expected = NGINX_404 if reply.status == 404 else NGINX_400
    assert orjson.loads(reply.body) == expected, (target, reply.body[:300])
    assert b"medsvc_" not in reply.body and b"ready" not in reply.body


async def test_only_the_api_gets_through_the_door(stack: Stack, admin_token: str) -> None:
    sent: set[str] = set()
    auth = {"Authorization": f"Bearer {admin_token}"}
    batch = orjson.dumps({"events": []})
    for target in REFUSED:
        # With an admin token, and without one: neither gets anything but nginx's 404.
        for method, headers, body in (
            ("GET", {}, b""),
            ("GET", auth, b""),
            ("POST", {**auth, "Content-Type": "application/json"}, batch),
        ):
            request_id = rid()
            sent.add(request_id)
            reply = await raw_request(
                stack.base_url,
                method,
                target,
                body=body,
                headers={**headers, "X-Request-ID": request_id},
            )
            assert_nginx_404(reply, f"{method} {target}")
            if reply.status == 404:  # (a 400 came before nginx read the headers)
                assert reply.header("x-request-id") == request_id
    # The absolute form of a request target names a path too.
    reply = await raw_request(stack.base_url, "GET", "http://localhost/metrics")
    assert_nginx_404(reply, "absolute /metrics")
    # Nothing behind nginx saw any of these requests.
    await asyncio.sleep(0.5)
    assert log_lines_with(stack, sent) == []


async def test_the_api_and_its_reference_page_do_get_through(
    stack: Stack, admin_token: str
) -> None:
    auth = {"Authorization": f"Bearer {admin_token}"}
    page = await raw_request(stack.base_url, "GET", "/docs")
    assert page.status == 200 and b"swagger-ui" in page.body
    css = await raw_request(stack.base_url, "GET", "/docs/assets/swagger-ui.css")
    assert css.status == 200 and (css.header("content-type") or "").startswith("text/css")
    doc = await raw_request(stack.base_url, "GET", "/v1/openapi.json")
    assert doc.status == 200 and json.loads(doc.body)["openapi"].startswith("3.")
    # The API answers for itself: no token is its 401, an unknown /v1 path its 404.
    assert (await raw_request(stack.base_url, "GET", "/v1/users/alice.smith")).status == 401
    unknown = await raw_request(stack.base_url, "GET", "/v1/nothing/here", headers=auth)
    assert unknown.status == 404 and orjson.loads(unknown.body)["detail"] != NGINX_404["detail"]
    # Dots and encoded characters in the query string are not part of the path.
    search = await raw_request(
        stack.base_url, "GET", "/v1/users?familyName=a%2e..%2F", headers=auth
    )
    assert search.status == 200, search.body
    # A userName with dots is a plain path.
    api_user = await raw_request(stack.base_url, "GET", "/v1/users/no.such.user", headers=auth)
    assert api_user.status == 404 and b"does not exist" in api_user.body


async def test_the_gateways_refuse_the_same_paths_and_forward_only_what_they_checked(
    stack: Stack, admin_token: str
) -> None:
    # Asked directly (as a compromised pod inside the cluster could), each gateway refuses
    # every path that is not plain, with a 404 problem, and passes none of them on.
    auth = {"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"}
    sent: set[str] = set()
    not_plain = [t for t in REFUSED if any(s in t for s in ("..", "%2", "%5", "//", "\\", "/."))]
    assert len(not_plain) > 20
    for gateway in stack.gateways:
        for target in not_plain:
            request_id = rid()
            sent.add(request_id)
            reply = await raw_request(
                gateway.url,
                "POST",
                target,
                body=b'{"events": []}',
                headers={**auth, "X-Request-ID": request_id},
            )
            assert reply.status == 404, (gateway.name, target, reply.status, reply.body[:200])
            assert (reply.header("content-type") or "").startswith(PROBLEM)
    await asyncio.sleep(0.5)
    behind = [line for line in log_lines_with(stack, sent) if not line.startswith("gateway-")]
    assert behind == []


async def test_operations_endpoints_answer_only_on_each_process_own_port(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    for path in ("/metrics", "/readyz", "/healthz"):
        assert_nginx_404(await raw_request(stack.base_url, "GET", path), path)
        assert_nginx_404(
            await raw_request(stack.https_url, "GET", path, ssl_context=tls_context(stack)), path
        )
        for proc in [*stack.gateways, *stack.fe[0]]:
            async with http.get(proc.url + path) as resp:
                assert resp.status == 200, (proc.name, path)
    # nginx's own liveness is on its own port, which passes nothing else.
    async with http.get(stack.nginx.ops_url + "/healthz") as resp:
        assert resp.status == 200 and await resp.json(content_type=None) == {"status": "ok"}
    async with http.get(stack.nginx.ops_url + "/v1/users/alice.smith") as resp:
        assert resp.status == 404


# -- X-Request-ID: one rule at every hop -------------------------------------------------


async def test_a_request_id_follows_one_rule_at_every_hop(
    stack: Stack, http: aiohttp.ClientSession, admin_token: str
) -> None:
    api = Api(http, stack.base_url, admin_token)
    name = (await api.create_patient(unique("rid")))["userName"]
    longest = "r" * (REQUEST_ID_MAX_LENGTH - 32) + uuid.uuid4().hex
    assert len(longest) == REQUEST_ID_MAX_LENGTH
    too_long = longest + "x"
    for sent, kept in (
        (longest, True),
        (too_long, False),
        (f"with space {uuid.uuid4().hex}", False),
        (f'quote"{uuid.uuid4().hex}', False),
    ):
        # A write: it crosses nginx, a gateway and an FE server of the user's shard.
        user_name = unique("rid")
        reply = await api.call(
            "POST",
            "/v1/users",
            {
                "userName": user_name,
                "role": "patient",
                "givenName": "R",
                "familyName": "Id",
                "birthDate": "1990-01-01",
            },
            headers={"X-Request-ID": sent},
        )
        assert reply.status == 201, reply.body
        got = reply.headers["X-Request-ID"]
        assert (got == sent) is kept, (sent, got)
        # Whatever id nginx settled on, the gateway and the FE server log the same one.
        deadline = time.monotonic() + 10
        while True:
            hops = {
                line.split(":", 1)[0].rsplit("-", 1)[0]
                for line in log_lines_with(stack, {got})
                if '"http.request"' in line
            }
            if {"gateway", f"fe-shard-{stack.shard_map.shard_id_for(user_name)}"} <= hops:
                break
            assert time.monotonic() < deadline, (got, hops)
            await asyncio.sleep(0.2)
        if not kept:
            assert log_lines_with(stack, {sent}) == []
    # Asked directly, a gateway applies the same rule.
    for gateway in stack.gateways:
        async with http.get(
            f"{gateway.url}/v1/users/{name}",
            headers={"Authorization": f"Bearer {admin_token}", "X-Request-ID": too_long},
        ) as resp:
            assert resp.status == 200
            assert resp.headers["X-Request-ID"] != too_long
            assert len(resp.headers["X-Request-ID"]) <= REQUEST_ID_MAX_LENGTH
        async with http.get(
            f"{gateway.url}/v1/users/{name}",
            headers={"Authorization": f"Bearer {admin_token}", "X-Request-ID": longest},
        ) as resp:
            assert resp.headers["X-Request-ID"] == longest


# -- the production edge -----------------------------------------------------------------


async def test_production_edge_redirects_plain_http_and_sends_hsts(
    stack: Stack, admin_token: str
) -> None:
    async with production_nginx(stack, "nginx-prod-edge") as edge:
        port = edge.config.https_port
        for method in ("GET", "POST"):
            reply = await raw_request(
                edge.base_url,
                method,
                "/v1/users?familyName=x",
                body=b"{}" if method == "POST" else b"",
            )
            assert reply.status == 308, (method, reply.status)
            assert reply.header("location") == f"https://localhost:{port}/v1/users?familyName=x"
            assert reply.header("strict-transport-security") is None
        # Plain HTTP passes nothing at all, not even the API.
        reply = await raw_request(edge.base_url, "GET", "/v1/openapi.json")
        assert reply.status == 308
        ctx = tls_context(stack)
        for target, status in (
            ("/v1/users/alice.smith", 401),
            ("/metrics", 404),
            ("/v1/%2e%2e/metrics", 404),
            ("/v1/openapi.json", 200),
        ):
            reply = await raw_request(edge.https_url, "GET", target, ssl_context=ctx)
            assert reply.status == status, (target, reply.status)
            hsts = reply.header("strict-transport-security") or ""
            assert hsts.startswith("max-age=") and int(hsts.split("=")[1].split(";")[0]) >= 31536000


async def _handshake(url: str, ctx: ssl.SSLContext) -> str:
    host, port = url.removeprefix("https://").split(":")
    _, writer = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="localhost")
    try:
        return writer.get_extra_info("ssl_object").version()
    finally:
        writer.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
async def test_tls_is_1_2_or_later_with_forward_secret_aead_ciphers(stack: Stack) -> None:
    async with production_nginx(stack, "nginx-prod-tls") as edge:
        ctx = tls_context(stack)
        assert await _handshake(edge.https_url, ctx) == "TLSv1.3"
        tls12 = tls_context(stack)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        assert await _handshake(edge.https_url, tls12) == "TLSv1.2"
        # A TLS 1.2 client offering only suites without forward secrecy, or CBC ones.
        for weak in ("AES128-GCM-SHA256", "AES256-SHA256", "ECDHE-RSA-AES128-SHA"):
            ctx = tls_context(stack)
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(weak)
            with pytest.raises(ssl.SSLError):
                await _handshake(edge.https_url, ctx)
        old = tls_context(stack)
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError):
            await _handshake(edge.https_url, old)


async def test_the_real_rate_limit_answers_429(stack: Stack) -> None:
    # `make run` and production limit each client address to DEFAULT_RATE a second with a
    # burst of DEFAULT_BURST; a client sending far more at once gets 429 problems.
    assert (DEFAULT_RATE, DEFAULT_BURST) == (100, 200)
    async with production_nginx(stack, "nginx-prod-rate") as edge:
        connector = aiohttp.TCPConnector(limit=50, ssl=tls_context(stack))
        async with aiohttp.ClientSession(connector=connector) as client:

            async def one() -> tuple[int, str, str | None]:
                async with client.get(f"{edge.https_url}/v1/users/alice.smith") as resp:
                    body = await resp.read()
                    return resp.status, body.decode(), resp.headers.get("Retry-After")

            answers = await asyncio.gather(*(one() for _ in range(3 * DEFAULT_BURST)))
    statuses = [s for s, _, _ in answers]
    limited = [a for a in answers if a[0] == 429]
    assert limited and statuses.count(401) >= DEFAULT_BURST // 2, sorted(set(statuses))
    status, body, retry_after = limited[0]
    assert json.loads(body)["detail"] == "rate limit exceeded" and retry_after == "1"
    assert set(statuses) <= {401, 429}
