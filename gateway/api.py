"""The gateway's routing table and coarse role check, read from the committed OpenAPI document.

The services declare their endpoints in their contracts; ``python -m apidoc`` writes them into
``gateway/openapi.json`` with the ``x-service`` (which cluster serves it), ``x-roles`` (who may
call it at all) and ``x-cacheable`` extensions. The gateway reads that file rather than
importing a service, so a new endpoint reaches the gateway's table by regenerating the file.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from gateway.docs import DOCUMENT_FILE

_USER_PREFIX = "/v1/users/{userName}/"


@dataclass(frozen=True)
class Endpoint:
    """One operation as the gateway sees it."""

    method: str
    path: str
    service: str
    roles: tuple[str, ...]
    cacheable: bool


@dataclass(frozen=True)
class ApiTable:
    """Every operation of the document, and what the gateway derives from them."""

    endpoints: tuple[Endpoint, ...]

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ApiTable:
        endpoints = tuple(
            Endpoint(
                method.upper(), path, op["x-service"], tuple(op.get("x-roles", ())),
                bool(op.get("x-cacheable")),
            )
            for path, methods in document["paths"].items()
            for method, op in methods.items()
        )  # fmt: skip
        return cls(endpoints)

    def service_roles(self, service: str) -> tuple[str, ...]:
        """The roles that may call at least one of the service's operations."""
        roles = [r for e in self.endpoints if e.service == service for r in e.roles]
        return tuple(dict.fromkeys(roles))

    def user_subresources(self) -> dict[str, str]:
        """``/v1/users/{userName}/<segment>...`` -> the service owning that sub-resource."""
        owners: dict[str, set[str]] = defaultdict(set)
        for e in self.endpoints:
            if e.path.startswith(_USER_PREFIX):
                owners[e.path[len(_USER_PREFIX):].split("/", 1)[0]].add(e.service)
        for segment, services in owners.items():
            if len(services) != 1:
                raise ValueError(f"/v1/users/{{userName}}/{segment} has two owners: {services}")
        return {segment: services.pop() for segment, services in owners.items()}


@cache
def api_table(path: Path = DOCUMENT_FILE) -> ApiTable:
    """The table of the committed document (read once per process)."""
    return ApiTable.from_document(orjson.loads(path.read_bytes()))
