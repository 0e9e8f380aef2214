"""Serve an aiohttp application on uvloop with the project's logging."""

from __future__ import annotations

import logging
from pathlib import Path

import uvloop
from aiohttp import web

log = logging.getLogger("medsvc.runner")

# Connections the kernel completes and holds for us while the loop is busy. A burst opens
# many at once (nginx up to its max_conns per gateway, a gateway up to 256 per FE server);
# with aiohttp's default of 128 the queue overflows, the kernel drops SYNs, and clients retry
# them only after a second. The kernel caps this at net.core.somaxconn (4096 here and on
# current kernels; logged at start when lower).
LISTEN_BACKLOG = 4096


def somaxconn() -> int | None:
    """The kernel's cap on listen backlogs, or None where it cannot be read."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return None


def run_app(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, on uvloop, without aiohttp's own access log."""
    cap = somaxconn()
    log.info(
        "listening",
        extra={"action": "process.listening", "host": host, "port": port,
               "backlog": min(LISTEN_BACKLOG, cap) if cap else LISTEN_BACKLOG},
    )  # fmt: skip
    if cap is not None and cap < LISTEN_BACKLOG:
        log.warning(
            "net.core.somaxconn caps the listen backlog",
            extra={"action": "process.backlog_capped", "somaxconn": cap, "wanted": LISTEN_BACKLOG},
        )
    web.run_app(
        app, host=host, port=port, access_log=None, print=None, loop=uvloop.new_event_loop(),
        handle_signals=True, shutdown_timeout=5, backlog=LISTEN_BACKLOG,
    )
