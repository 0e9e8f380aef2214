"""The users service as an FE server mounts it: its routes and its migrations."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from shared.hosting import HostedService
from user_service.consent_routes import setup_consent_routes
from user_service.routes import setup_routes


def setup_all_routes(app: web.Application) -> None:
    """The users API and the study consents of users."""
    setup_routes(app)
    setup_consent_routes(app)


SERVICE = HostedService(
    name="user",
    migrations=Path(__file__).parent / "migrations",
    setup_routes=setup_all_routes,
    requires=(),
)
