"""The users service as an FE server mounts it: its routes and its migrations."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from shared.contract import register_routes
from shared.hosting import HostedService
from user_service import consent_routes, routes
from user_service.contract import OPERATIONS


def setup_all_routes(app: web.Application) -> None:
    """The users API and the study consents of users, as the contract declares them."""
    # The study registry client the consent handlers ask whether a study exists.
    app.cleanup_ctx.append(consent_routes.studies_context)
    register_routes(app, OPERATIONS, {**routes.HANDLERS, **consent_routes.HANDLERS})


SERVICE = HostedService(
    name="user",
    migrations=Path(__file__).parent / "migrations",
    setup_routes=setup_all_routes,
    requires=(),
)
