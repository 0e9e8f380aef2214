"""The published contract: ``GET /v1/openapi.json`` and a browsable reference at ``GET /docs``.

Neither needs a token. The reference page is Swagger UI, whose scripts and styles come from
the ``swagger-ui-bundle-v2`` package and are served by the gateway itself under
``/docs/assets/``, so the page works with no network beyond the stack.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import swagger_ui_bundle
from aiohttp import web

from shared.errors import NotFound
from shared.openapi import build_document

DOCUMENT_PATH = "/v1/openapi.json"
ASSETS_PREFIX = "/docs/assets"
DOCUMENT = web.AppKey("openapi_document", bytes)

# The files of the Swagger UI distribution the page uses, and their media types.
_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

# Our own initializer, served as a file rather than inline so a strict CSP can forbid inline script.
_INIT_JS = f"""window.onload = function () {{
  window.ui = SwaggerUIBundle({{
    url: "{DOCUMENT_PATH}",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    validatorUrl: null
  }});
}};
""".encode()

_PAGE = f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>MedicalService API</title>
    <link rel="stylesheet" type="text/css" href="{ASSETS_PREFIX}/swagger-ui.css">
    <link rel="icon" type="image/png" href="{ASSETS_PREFIX}/favicon-32x32.png" sizes="32x32">
    <style>body {{ margin: 0; background: #fafafa; }}</style>
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="{ASSETS_PREFIX}/swagger-ui-bundle.js" charset="utf-8"></script>
    <script src="{ASSETS_PREFIX}/swagger-ui-standalone-preset.js" charset="utf-8"></script>
    <script src="{ASSETS_PREFIX}/init.js" charset="utf-8"></script>
  </body>
</html>
""".encode()

# The assets never change within one installed version: let browsers keep them for a day.
_CACHE = {"Cache-Control": "public, max-age=86400"}


def assets_dir() -> Path:
    """Where the installed Swagger UI distribution keeps its files."""
    return Path(str(swagger_ui_bundle.swagger_ui_path))


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT], content_type="application/json")


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(body=_PAGE, content_type="text/html", charset="utf-8")


async def docs_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name == "init.js":
        return web.Response(body=_INIT_JS, content_type="text/javascript", headers=_CACHE)
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no resource at {request.path}")
    return web.FileResponse(assets_dir() / name, headers={**_CACHE, "Content-Type": media_type})


def only(*methods: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler answering 405 with ``Allow: methods``.

    Added as a resource's last route (method ``*``), it keeps a later catch-all route from
    answering a method the resource does not support with 404.
    """

    async def method_not_allowed(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, methods)

    return method_not_allowed


def setup_docs(app: web.Application) -> None:
    """Mount the document and the reference page (before any catch-all ``/v1`` route)."""
    app[DOCUMENT] = orjson.dumps(build_document())
    app.router.add_get(DOCUMENT_PATH, openapi_json, allow_head=False)
    app.router.add_route("*", DOCUMENT_PATH, only("GET"))
    app.router.add_get("/docs", docs_page, allow_head=False)
    app.router.add_get(ASSETS_PREFIX + "/{name}", docs_asset, allow_head=False)
