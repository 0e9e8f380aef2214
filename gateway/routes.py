"""The gateway's routes: authenticate, apply the path-level role checks, pick the cluster."""

from __future__ import annotations

import asyncio
import re

import orjson
from aiohttp import web

from gateway.api import api_table
from gateway.appkeys import CLUSTERS, MOVE_HOLD, ROUTING
from gateway.central import audit
from gateway.docs import only, setup_docs
from gateway.fastpath import cached_response
from gateway.proxy import Upstream, forward
from gateway.routing import Routing
from gateway.state import cluster_for
from gateway.studies import studies
from shared import policy
from shared.appkeys import REQUEST_SHARD, VERIFIER
from shared.auth import Principal
from shared.errors import NotFound, Unavailable
from shared.httpio import encode_cursor, json_response, limit_param
from shared.paths import is_plain_path
from shared.problems import Handler
from shared.types import USER_NAME_PATTERN

_USER_NAME = re.compile(USER_NAME_PATTERN)
# Sub-resources of a user and the service that owns each, from the services' contracts.
_SUBRESOURCE_SERVICE = api_table().user_subresources()


@web.middleware
async def plain_path_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """404 for a path with dot-segments, encoded dots or slashes, or empty segments.

    The gateway forwards the raw path it matched its routes against; a path another parser
    could read differently (aiohttp's router sees ``/v1/audit/../..`` as an audit path, an
    HTTP client collapses it to something else) is refused before any route sees it. nginx
    refuses the same paths with the same rule (shared/paths.py); this is the second line.
    """
    if not is_plain_path(request.raw_path):
        raise NotFound("no resource at this path")
    return await handler(request)


def caller(request: web.Request) -> Principal:
    return request.app[VERIFIER].from_request(request)


async def _body(request: web.Request) -> bytes | None:
    if not request.body_exists:
        return None
    return await request.read()


async def forward_to_owner(
    request: web.Request, user_name: str | None, service: str, body: bytes | None
) -> Upstream:
    """Send the request to the shard owning ``user_name`` by the current map; on 421 (the
    shard's database does not own the bucket: this map is stale, or a move is fencing it),
    hold the request and send it again once the map says where the user lives now.

    The 421 comes from a check made before, or inside and rolled back with, the shard's
    transaction: nothing was written, so a POST is as safe to send again as a GET.
    """
    routing: Routing = request.app[ROUTING]  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + request.app[MOVE_HOLD]
    hint: int | None = None
    while True:
        shard_map = routing.map
        shard_id = shard_map.shard_id_for(user_name) if user_name else shard_map.shards[0].id
        if hint is not None:
            shard_id, hint = hint, None
        request[REQUEST_SHARD] = shard_id
        cluster = cluster_for(request.app, shard_id, service)
        up = await forward(
            cluster, request.method, request.raw_path, request.headers, body, keyed_posts=True
        )
        if up.status != 421:
            return up
        routing.watcher.reload()
        if routing.map.version != shard_map.version:
            continue
        if loop.time() >= deadline:
            raise Unavailable(
                f"the shard of {user_name} is being moved; retry shortly", retry_after=1
            )
        # The map normally follows a flip within a second (the resharder publishes it right
        # after). Where its distribution lags (a Kubernetes ConfigMap refresh takes up to a
        # minute), follow the owner the refusing database names, once the move is surely
        # past its switch (caches invalidated): that database's owner check decides again.
        if loop.time() - started >= OWNER_HINT_AFTER:
            hint = _owner_hint(up.body, routing)
        await asyncio.sleep(0.05)


# Seconds of holding before a 421's owner hint is followed rather than waiting for the map.
OWNER_HINT_AFTER = 3.0


def _owner_hint(body: bytes, routing: Routing) -> int | None:
    try:
        owner = orjson.loads(body).get("owner")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    known = {s.id for s in routing.map.shards}
    return owner if isinstance(owner, int) and owner in known else None


async def user_scoped(request: web.Request) -> web.Response:
    """``/v1/users/{userName}[/...]``: the owning shard's cluster for that service."""
    principal = caller(request)
    user_name = request.match_info["userName"]
    tail = request.match_info.get("tail", "")
    service = "user" if not tail else _SUBRESOURCE_SERVICE.get(tail.split("/", 1)[0])
    if service is None:
        raise NotFound(f"no resource at {request.path}")
    policy.may_use_users_api(principal, user_name)
    if not _USER_NAME.fullmatch(user_name):
        raise NotFound(f"user {user_name[:64]} does not exist")
    shard_id = request.app[ROUTING].map.shard_id_for(user_name)  # type: ignore[attr-defined]
    request[REQUEST_SHARD] = shard_id
    if request.method == "GET":
        cached = await cached_response(request, principal, shard_id, user_name, tail)
        if cached is not None:
            return cached
    up = await forward_to_owner(request, user_name, service, await _body(request))
    return up.response()


async def create_user(request: web.Request) -> web.Response:
    """POST /v1/users: the shard is chosen by the body's userName.

    A body that names no valid userName goes to any shard, whose validation answers for it,
    so that there is one validation path.
    """
    principal = caller(request)
    if not principal.has("admin", "clinician"):
        policy.may_create_user(principal, "patient")
    body = await _body(request)
    user_name = None
    if body:
        try:
            parsed = orjson.loads(body)
            candidate = parsed.get("userName") if isinstance(parsed, dict) else None
            if isinstance(candidate, str) and _USER_NAME.fullmatch(candidate):
                user_name = candidate
        except orjson.JSONDecodeError:
            pass
    up = await forward_to_owner(request, user_name, "user", body)
    return up.response()


async def search_users(request: web.Request) -> web.Response:
    """GET /v1/users: every shard's page, merged in (familyName, givenName, userName) order.

    A shard that cannot answer makes the whole search 503: a silently partial list of
    patients is worse than none.
    """
    policy.may_search_users(caller(request))
    limit = limit_param(request.query)
    clusters = [c for (shard, svc), c in request.app[CLUSTERS].items() if svc == "user"]
    headers = request.headers

    async def one(cluster):  # type: ignore[no-untyped-def]
        try:
            return await forward(cluster, "GET", request.raw_path, headers, None)
        except Unavailable as exc:
            return exc

    answers = await asyncio.gather(*(one(c) for c in clusters))
    pages = []
    for cluster, answer in zip(clusters, answers, strict=True):
        if isinstance(answer, Unavailable):
            raise Unavailable(
                f"shard {cluster.shard_id} is unavailable; the search cannot be complete"
            )
        assert isinstance(answer, Upstream)
        if answer.status != 200:
            return answer.response()
        pages.append(orjson.loads(answer.body))
    # Each shard lists only the buckets its database owns; during the instant of a move's
    # flip both may, with the same rows: each user is listed once.
    unique = {item["userName"]: item for page in pages for item in page["items"]}
    items = sorted(unique.values(), key=lambda u: (u["familyName"], u["givenName"], u["userName"]))
    more = len(items) > limit or any(page["nextCursor"] for page in pages)
    items = items[:limit]
    next_cursor = None
    if more and items:
        last = items[-1]
        next_cursor = encode_cursor([last["familyName"], last["givenName"], last["userName"]])
    return json_response({"items": items, "nextCursor": next_cursor})


async def not_found(request: web.Request) -> web.Response:
    caller(request)
    raise NotFound(f"no resource at {request.path}")


def setup_routes(app: web.Application) -> None:
    # The contract and its reference page: no token, and before the /v1 catch-all.
    setup_docs(app)
    app.router.add_post("/v1/users", create_user)
    app.router.add_get("/v1/users", search_users, allow_head=False)
    app.router.add_route("*", "/v1/users", only("GET", "POST"))
    app.router.add_route("*", "/v1/users/{userName}", user_scoped)
    app.router.add_route("*", "/v1/users/{userName}/{tail:.+}", user_scoped)
    app.router.add_route("*", "/v1/audit/{tail:.*}", audit)
    app.router.add_route("*", "/v1/studies", studies)
    app.router.add_route("*", "/v1/studies/{tail:.+}", studies)
    app.router.add_route("*", "/v1/{tail:.*}", not_found)
