"""Request validation of users and visits: what a clinic's client gets told, field by field."""

import datetime as dt

import orjson
import pytest
from pydantic import ValidationError

from shared.httpio import decode_cursor, encode_cursor, merge_patch
from shared.problems import field_errors
from user_service.models import UserIn
from visit_service.models import VisitIn

USER = {
    "userName": "alice.smith",
    "role": "patient",
    "givenName": "Alice",
    "familyName": "Smith",
    "birthDate": "1980-04-02",
}
VISIT = {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z"}


def errors_of(model, body) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(orjson.dumps(body))
    return {e.field: e.message for e in field_errors(info.value)}


def test_minimal_user_is_valid_and_sex_defaults_to_unknown() -> None:
    assert UserIn.model_validate_json(orjson.dumps(USER)).sex == "unknown"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"userName": "Alice"}, "userName"),
        ({"userName": "ab"}, "userName"),
        ({"role": "nurse"}, "role"),
        ({"birthDate": "1899-12-31"}, "birthDate"),
        ({"birthDate": (dt.date.today() + dt.timedelta(days=2)).isoformat()}, "birthDate"),
        ({"birthDate": "02/04/1980"}, "birthDate"),
        ({"sex": "f"}, "sex"),
        ({"email": "not-an-email"}, "email"),
        ({"givenName": ""}, "givenName"),
        ({"givenName": "A\x00"}, "givenName"),
        ({"address": {"country": "usa"}}, "address.country"),
        ({"createdAt": "2026-01-01T00:00:00Z"}, "createdAt"),
        ({"version": 3}, "version"),
        ({"nickname": "Al"}, "nickname"),
    ],
)
def test_user_field_errors(change, field) -> None:
    assert field in errors_of(UserIn, USER | change)


def test_missing_required_user_fields_are_each_named() -> None:
    assert {"role", "givenName", "familyName", "birthDate"} <= set(
        errors_of(UserIn, {"userName": "bob.b"})
    )


def test_numbers_are_not_coerced_from_strings() -> None:
    assert "vitals.heartRate" in errors_of(VisitIn, VISIT | {"vitals": {"heartRate": "70"}})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "house-call"}, "type"),
        ({"startedAt": "2026-11-20T09:00:00"}, "startedAt"),  # no UTC offset
        ({"endedAt": "2026-11-20T08:59:59Z"}, "endedAt"),  # before startedAt
        ({"vitals": {"heartRate": 19}}, "vitals.heartRate"),
        ({"vitals": {"temperatureC": 45.1}}, "vitals.temperatureC"),
        ({"vitals": {"pulse": 60}}, "vitals.pulse"),
        ({"diagnoses": [{"system": "ICD-10"}]}, "diagnoses.0.code"),
        ({"medications": [{"dose": "5 mg"}]}, "medications.0.name"),
    ],
)
def test_visit_field_errors(change, field) -> None:
    assert field in errors_of(VisitIn, VISIT | change)


def test_visit_within_bounds_is_valid() -> None:
    visit = VisitIn.model_validate_json(
        orjson.dumps(
            VISIT
            | {
                "endedAt": "2026-11-20T09:30:00Z",
                "vitals": {
                    "heightCm": 168,
                    "weightKg": 72.5,
                    "systolic": 128,
                    "diastolic": 82,
                    "heartRate": 70,
                    "temperatureC": 36.8,
                },
            }
        )
    )
    assert visit.vitals is not None and visit.vitals.heightCm == 168.0


def test_merge_patch_rfc7396_examples() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}


def test_cursor_round_trip_and_garbage() -> None:
    assert decode_cursor(encode_cursor(["Smith", "Alice", "alice.smith"]), 3) == [
        "Smith",
        "Alice",
        "alice.smith",
    ]
    from shared.errors import BadRequest

    for bad in ("!!!", encode_cursor(["only-one"]), encode_cursor([1, 2, 3])):
        with pytest.raises(BadRequest):
            decode_cursor(bad, 3)
