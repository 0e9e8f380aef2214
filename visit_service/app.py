"""The visits service as an FE server mounts it: its routes and its migrations."""

from __future__ import annotations

from pathlib import Path

from shared.hosting import HostedService
from visit_service.routes import setup_routes

SERVICE = HostedService(
    name="visit",
    migrations=Path(__file__).parent / "migrations",
    setup_routes=setup_routes,
    # visits reference users: the users schema must exist even on a visit-only FE server.
    requires=("user",),
)
