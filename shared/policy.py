"""The role table of API.md as functions: one place that says who may do what.

The gateway applies the checks that need only the token and the path; the FE servers apply
the ones that need the stored user (a clinician may touch only users with role ``patient``).
"""

from __future__ import annotations

from shared.auth import Principal
from shared.errors import Forbidden

USER_ROLES = ("admin", "clinician", "patient")
PATIENT_MUTABLE = frozenset({"email", "phone", "address"})


def may_use_users_api(p: Principal, target: str | None) -> None:
    """Coarse gate for ``/v1/users...``: never researchers or auditors; patients only themselves."""
    if p.has("admin", "clinician"):
        return
    if p.has("patient") and target is not None and target == p.sub:
        return
    raise Forbidden("your role may not access this user")


def may_search_users(p: Principal) -> None:
    if not p.has("admin", "clinician"):
        raise Forbidden("only admins and clinicians may search users")


def may_create_user(p: Principal, new_role: str) -> None:
    if p.has("admin"):
        return
    if p.has("clinician") and new_role == "patient":
        return
    raise Forbidden("only an admin may create users with a role other than patient")


def _cares_for(p: Principal, role: str) -> bool:
    """Admins care for everyone; clinicians for users with role ``patient``."""
    return p.has("admin") or p.has("clinician") and role == "patient"


def _is_patient_self(p: Principal, user_name: str) -> bool:
    return p.has("patient") and p.sub == user_name


def may_read_user(p: Principal, user_name: str, role: str) -> None:
    if _cares_for(p, role) or p.sub == user_name and p.has(*USER_ROLES):
        return
    raise Forbidden("your role may not read this user")


def may_update_user(p: Principal, user_name: str, role: str, fields: set[str]) -> None:
    if _cares_for(p, role):
        return
    if _is_patient_self(p, user_name):
        extra = fields - PATIENT_MUTABLE
        if not extra:
            return
        raise Forbidden(f"a patient may change only email, phone and address, not {sorted(extra)}")
    raise Forbidden("your role may not update this user")


def may_read_visits(p: Principal, user_name: str, role: str) -> None:
    if _cares_for(p, role) or _is_patient_self(p, user_name):
        return
    raise Forbidden("your role may not read this patient's visits")


def may_write_visits(p: Principal, role: str) -> None:
    if not _cares_for(p, role):
        raise Forbidden("only admins and clinicians may record or change visits")


def may_change_consent(p: Principal, user_name: str, role: str) -> None:
    """Study consent: the patient themself, a clinician for a patient, an admin."""
    if not (_cares_for(p, role) or _is_patient_self(p, user_name)):
        raise Forbidden("your role may not change this patient's study consent")


def may_read_consents(p: Principal, user_name: str, role: str) -> None:
    """The studies a patient takes part in: the patient themself, their clinicians, admins."""
    if not (_cares_for(p, role) or _is_patient_self(p, user_name)):
        raise Forbidden("your role may not read this patient's study consents")


def may_use_studies_api(p: Principal) -> None:
    """``/v1/studies...``: researchers and admins."""
    if not p.has("admin", "researcher"):
        raise Forbidden("only researchers and admins may use the studies API")


def _plural(roles: tuple[str, ...]) -> str:
    names = [f"{r}s" for r in roles]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def may_use_service(p: Principal, roles: tuple[str, ...], what: str) -> None:
    """Coarse gate for a whole service: the caller has one of the roles its contract names."""
    if not p.has(*roles):
        raise Forbidden(f"only {_plural(roles)} may use {what}")


def audit_patients_only(p: Principal) -> bool:
    """Whether the caller may read audit events, and if so whether only those about patients.

    Admins and auditors read every event; a clinician only those about patients.
    """
    if p.has("admin", "auditor"):
        return False
    if p.has("clinician"):
        return True
    raise Forbidden("only admins, auditors and clinicians may read audit events")


def may_prove_audit(p: Principal) -> None:
    """Verifying the chain, checkpoints and proofs: admins and auditors."""
    if not p.has("admin", "auditor"):
        raise Forbidden("only admins and auditors may verify the audit chain")


def may_record_audit(p: Principal) -> None:
    """Recording audit events (and signing checkpoints): admins and internal services."""
    if not p.has("admin"):
        raise Forbidden("only admins and internal services may record audit events")
