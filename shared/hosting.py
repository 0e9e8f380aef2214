"""What a service package gives the FE server that hosts it.

A service declares one :class:`HostedService`; the FE server (``fe_server``) mounts the ones its
settings name. The type lives on the floor so that a service can declare itself without
importing the server that hosts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web


@dataclass(frozen=True)
class HostedService:
    """What a service package gives the FE server: routes, migrations, schema dependencies."""

    name: str
    migrations: Path
    setup_routes: Callable[[web.Application], None]
    requires: tuple[str, ...] = ()
