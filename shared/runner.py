"""Serve an aiohttp application on uvloop with the project's logging."""

from __future__ import annotations

import logging

import uvloop
from aiohttp import web

log = logging.getLogger("medsvc.runner")


def run_app(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, on uvloop, without aiohttp's own access log."""
    log.info("listening", extra={"action": "process.listening", "host": host, "port": port})
    web.run_app(
        app, host=host, port=port, access_log=None, print=None, loop=uvloop.new_event_loop(),
        handle_signals=True, shutdown_timeout=5,
    )
