"""The gateway application: authentication, routing by userName, balancing over FE clusters."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.appkeys import CACHES, CENTRAL, CLUSTERS, MOVE_HOLD, ROUTING
from gateway.central import central_clusters
from gateway.routes import plain_path_middleware, setup_routes
from gateway.routing import Routing
from shared.admission import OPERATIONS_PATHS, Limiter, admission_middleware
from shared.appkeys import SHARD_MAP, VERIFIER
from shared.auth import TokenVerifier
from shared.httpio import MAX_BODY
from shared.ops import setup_ops
from shared.problems import error_middleware, observe_middleware
from shared.settings import GatewaySettings, redis_credentials
from shared.shardmap import MapWatcher, ShardMap
from shared.tasks import background

CACHED_READ, OTHER = "cached-read", "request"


def request_class(request: web.Request) -> str | None:
    """The admission class: GETs of one user's resources may be cache hits (shed last)."""
    if request.path in OPERATIONS_PATHS:
        return None
    if request.method == "GET" and request.path.startswith("/v1/users/"):
        return CACHED_READ
    return OTHER


def create_app(settings: GatewaySettings, shard_map: ShardMap) -> web.Application:
    """Build the gateway for ``shard_map``; connection pools open in a cleanup context."""
    # Admission first: a request past the bound is refused before any other work.
    limiter = Limiter({
        OTHER: settings.max_in_flight,
        CACHED_READ: max(settings.max_in_flight, settings.max_in_flight_cached),
    })  # fmt: skip
    app = web.Application(
        middlewares=[admission_middleware(limiter, request_class), observe_middleware,
                     error_middleware, plain_path_middleware],
        client_max_size=MAX_BODY,
    )  # fmt: skip
    app[SHARD_MAP] = shard_map  # the map at start; routing uses app[ROUTING].map
    app[MOVE_HOLD] = settings.move_hold
    app[VERIFIER] = TokenVerifier(settings.jwt_secret.get_secret_value())
    timeout = aiohttp.ClientTimeout(total=settings.upstream_timeout, sock_connect=2)

    def new_session() -> aiohttp.ClientSession:
        # Keep-alive to every member; no cookies, no auto decompression of bodies we pass on.
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30, ttl_dns_cache=None)
        return aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def clusters_context(app: web.Application) -> AsyncIterator[None]:
        # The shard map is watched: a new version (a new shard, moved buckets) is used at once.
        watcher = MapWatcher(settings.shard_map, shard_map)
        routing = Routing(
            watcher, new_session, settings.member_cooldown, settings.cache,
            redis_credentials(settings),
        )
        app[ROUTING] = routing
        app[CLUSTERS] = routing.clusters
        app[CACHES] = routing.caches
        central = central_clusters(
            {"audit": settings.audit_urls, "anonymizer": settings.anonymizer_urls},
            new_session, settings.member_cooldown,
        )
        app[CENTRAL] = central
        try:
            async with background(watcher.run(), "shard-map-watch"):
                yield
        finally:
            await routing.close()
            for cluster in central.values():
                await cluster.close()

    app.cleanup_ctx.append(clusters_context)
    setup_ops(app, [])
    setup_routes(app)
    return app
