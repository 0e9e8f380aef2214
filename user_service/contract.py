"""The users API and study consents: each endpoint declared once (see shared/contract.py)."""

from __future__ import annotations

from typing import Any

from shared.contract import PATCH_DESCRIPTION, WRITE_ERRORS, Link, Operation, served_by
from user_service.models import Consent, StudiesTaken, User, UserIn, UserPage, UserPatch

SERVICE = "user"

QUERY: dict[str, dict[str, Any]] = {
    "familyName": {
        "description": "Case-insensitive prefix of the family name.",
        "schema": {"type": "string", "maxLength": 100, "pattern": r"^[^\x00]*$"},
    },
}

_USER = "/v1/users/{userName}"
_CONSENT = "/v1/users/{userName}/studies/{studyId}"


def to_user(name: str, operation_id: str) -> Link:
    """A link to an operation on the user the response names."""
    return Link(name, operation_id, {"userName": "$response.body#/userName"})


OPERATIONS: tuple[Operation, ...] = served_by(
    SERVICE,
    (
        Operation(
            "createUser",
            "POST",
            "/v1/users",
            "Create a user",
            "users",
            roles=("admin", "clinician"),
            success=201,
            response=User,
            request=UserIn,
            errors=(*WRITE_ERRORS, 403, 409),
            links=(
                to_user("GetUser", "getUser"),
                to_user("PatchUser", "patchUser"),
                to_user("CreateVisit", "createVisit"),
                to_user("ListVisits", "listVisits"),
            ),
            description="Only an admin may create users with a role other than `patient`.",
        ),
        Operation(
            "searchUsers",
            "GET",
            "/v1/users",
            "Search users by family name",
            "users",
            roles=("admin", "clinician"),
            success=200,
            response=UserPage,
            query=("familyName", "limit", "cursor"),
            errors=(400, 403, 422),
            description="Across all shards, in (familyName, givenName, userName) order.",
        ),
        Operation(
            "getUser",
            "GET",
            _USER,
            "Read a user",
            "users",
            roles=("admin", "clinician", "patient"),
            success=200,
            response=User,
            errors=(403, 404),
            cacheable=True,
        ),
        Operation(
            "patchUser",
            "PATCH",
            _USER,
            "Update a user",
            "users",
            roles=("admin", "clinician", "patient"),
            success=200,
            response=User,
            request=UserPatch,
            errors=(*WRITE_ERRORS, 403, 404, 412),
            description=f"{PATCH_DESCRIPTION} `userName` and `role` cannot change; a patient may "
            "change only their own `email`, `phone` and `address`.",
        ),
        Operation(
            "listConsents",
            "GET",
            "/v1/users/{userName}/studies",
            "The studies a patient takes part in",
            "studies",
            roles=("admin", "clinician", "patient"),
            success=200,
            response=StudiesTaken,
            errors=(403, 404),
            description="The consents in force, in studyId order. A patient only for themself.",
        ),
        Operation(
            "giveConsent",
            "PUT",
            _CONSENT,
            "Take part in a study",
            "studies",
            roles=("admin", "clinician", "patient"),
            success=200,
            response=Consent,
            errors=(403, 404, 422),
            description="The patient consents to the study (idempotent: a consent in force is "
            "answered as it is). No body. For a user whose role is `patient` (422 otherwise); a "
            "patient only for themself.",
        ),
        Operation(
            "withdrawConsent",
            "DELETE",
            _CONSENT,
            "Withdraw from a study",
            "studies",
            roles=("admin", "clinician", "patient"),
            success=204,
            response=None,
            errors=(403, 404, 422),
            description="Idempotent. From then on nothing of the patient's is extracted for the "
            "study, and its next run emits a `withdrawal` record for them.",
        ),
    ),
)
