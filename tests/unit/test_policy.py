"""The role table of API.md."""

import pytest

from shared import policy
from shared.auth import Principal
from shared.errors import Forbidden


def who(sub: str, *roles: str) -> Principal:
    return Principal(sub, frozenset(roles), 0)


def allowed(fn, *args) -> bool:
    try:
        fn(*args)
    except Forbidden:
        return False
    return True


def test_only_admin_creates_non_patients() -> None:
    assert allowed(policy.may_create_user, who("root", "admin"), "clinician")
    assert allowed(policy.may_create_user, who("dr.j", "clinician"), "patient")
    assert not allowed(policy.may_create_user, who("dr.j", "clinician"), "clinician")
    assert not allowed(policy.may_create_user, who("pat", "patient"), "patient")


@pytest.mark.parametrize("role", ["researcher", "auditor"])
def test_researchers_and_auditors_have_no_users_api(role) -> None:
    assert not allowed(policy.may_use_users_api, who("x", role), "x")
    assert not allowed(policy.may_use_users_api, who("x", role), None)


def test_patient_reads_only_self_and_updates_only_contact_fields() -> None:
    pat = who("pat.one", "patient")
    assert allowed(policy.may_use_users_api, pat, "pat.one")
    assert not allowed(policy.may_use_users_api, pat, "pat.two")
    assert allowed(policy.may_update_user, pat, "pat.one", "patient", {"email", "address"})
    assert not allowed(policy.may_update_user, pat, "pat.one", "patient", {"familyName"})
    assert not allowed(policy.may_write_visits, pat, "patient")
    assert allowed(policy.may_read_visits, pat, "pat.one", "patient")


def test_clinician_touches_patients_and_reads_self() -> None:
    doc = who("dr.j", "clinician")
    assert allowed(policy.may_read_user, doc, "p1", "patient")
    assert allowed(policy.may_read_user, doc, "dr.j", "clinician")
    assert not allowed(policy.may_read_user, doc, "dr.k", "clinician")
    assert not allowed(policy.may_update_user, doc, "root", "admin", {"email"})
    assert allowed(policy.may_write_visits, doc, "patient")
    assert allowed(policy.may_search_users, doc)
    assert not allowed(policy.may_search_users, who("p", "patient"))
