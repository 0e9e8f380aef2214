"""The visits API: each endpoint declared once (see shared/contract.py)."""

from __future__ import annotations

from shared.contract import PATCH_DESCRIPTION, WRITE_ERRORS, Link, Operation, served_by
from visit_service.models import Visit, VisitIn, VisitPage, VisitPatch

SERVICE = "visit"
_VISITS = "/v1/users/{userName}/visits"
_VISIT = "/v1/users/{userName}/visits/{visitId}"


def _to_visit(name: str, operation_id: str) -> Link:
    expressions = {"userName": "$response.body#/userName", "visitId": "$response.body#/visitId"}
    return Link(name, operation_id, expressions)


OPERATIONS: tuple[Operation, ...] = served_by(SERVICE, (
    Operation(
        "createVisit", "POST", _VISITS, "Record a visit", "visits",
        roles=("admin", "clinician"), success=201, response=Visit, request=VisitIn,
        errors=(*WRITE_ERRORS, 403, 404),
        links=(_to_visit("GetVisit", "getVisit"), _to_visit("PatchVisit", "patchVisit")),
        description="For a user whose role is `patient` (422 otherwise); `clinician` defaults to "
        "the caller.",
    ),
    Operation(
        "listVisits", "GET", _VISITS, "List a patient's visits", "visits",
        roles=("admin", "clinician", "patient"), success=200, response=VisitPage,
        query=("since", "until", "limit", "cursor"), errors=(400, 403, 404, 422),
        description="Newest `startedAt` first.", cacheable=True,
    ),
    Operation(
        "getVisit", "GET", _VISIT, "Read a visit", "visits",
        roles=("admin", "clinician", "patient"), success=200, response=Visit, errors=(403, 404),
        cacheable=True,
    ),
    Operation(
        "patchVisit", "PATCH", _VISIT, "Update a visit", "visits",
        roles=("admin", "clinician"), success=200, response=Visit, request=VisitPatch,
        errors=(*WRITE_ERRORS, 403, 404, 412), description=PATCH_DESCRIPTION,
    ),
))  # fmt: skip
