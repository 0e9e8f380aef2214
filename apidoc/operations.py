"""Every public operation of the API, gathered from the services' contracts.

Each service declares its endpoints once, in its ``contract.py`` (the rows are
:class:`shared.contract.Operation`); this module only gathers them, with the one operation the
gateway itself serves (the document), for :func:`apidoc.openapi.build_document`.
"""

from __future__ import annotations

from typing import Any

from anonymizer import contract as anonymizer
from audit_service import contract as audit
from shared.contract import COMMON_QUERY, PATH_PARAMS, Link, Operation
from user_service import contract as users
from visit_service import contract as visits

__all__ = ["OPERATIONS", "PATH_PARAMS", "QUERY", "Link", "Operation"]

DOCUMENT = Operation(
    "getOpenApiDocument", "GET", "/v1/openapi.json", "This document", "meta",
    roles=(), success=200, response=None, public=True, service="gateway",
    response_schema={"type": "object", "required": ["openapi", "info", "paths"]},
    description="Served without a token; a browsable reference is at `/docs`.",
)  # fmt: skip

OPERATIONS: tuple[Operation, ...] = (
    *users.OPERATIONS,
    *visits.OPERATIONS,
    *anonymizer.OPERATIONS,
    *audit.OPERATIONS,
    DOCUMENT,
)

QUERY: dict[str, dict[str, Any]] = {**COMMON_QUERY, **users.QUERY, **audit.QUERY}
