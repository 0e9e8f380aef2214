"""The baseline: a plain aiohttp hello-world on uvloop, one process.

``python -m bench.hello --port 9000``. Every GET path answers ``200 Hello, World!`` so that
the benchmark can drive it with the very same wrk script (random paths, bearer header) as
the real API: the load generator then spends the same work per request on both sides.
Nothing else is added (no middleware, no logging, no metrics): this is the ceiling one
Python process reaches on this machine, and every API figure is quoted as a ratio to it.
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

_BODY = b"Hello, World!"


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="text/plain")


def create_app() -> web.Application:
    """The hello-world application: one catch-all GET route."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", hello, allow_head=False)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hello", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
