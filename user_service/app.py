"""The users service as an FE server mounts it: its routes and its migrations."""

from __future__ import annotations

from pathlib import Path

from shared.fe_app import HostedService
from user_service.routes import setup_routes

SERVICE = HostedService(
    name="user",
    migrations=Path(__file__).parent / "migrations",
    setup_routes=setup_routes,
    requires=(),
)
