"""Defects the fuzzer found, each pinned where it was fixed (see tests/e2e/test_fuzz.py)."""

from __future__ import annotations

import datetime as dt
import re

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import MultiDict
from pydantic import TypeAdapter, ValidationError

from anonymizer.models import StudyIn
from audit_service.routes import after_seq
from shared.cachekeys import visit_list_field
from shared.errors import BadRequest
from shared.httpio import (
    IF_MATCH_PATTERN,
    decode_cursor,
    decode_instant_cursor,
    encode_cursor,
    if_match_version,
    limit_param,
    parse_instant,
)
from user_service.models import Email, UserIn, UserPatch
from visit_service.models import VisitIn, VisitPatch, Vitals


@pytest.mark.parametrize("raw", ["²", "١٢", "0", "201", "-1", "1.0", ""])
def test_a_limit_that_is_not_1_to_200_in_ascii_digits_is_400_not_500(raw: str) -> None:
    with pytest.raises(BadRequest):
        limit_param(MultiDict(limit=raw))


@pytest.mark.parametrize(
    ("header", "version"), [('"7"', 7), ('W/"3"', 3), (' "12" ', 12), ("*", None)]
)
def test_an_if_match_names_a_version_or_any(header: str, version: int | None) -> None:
    assert (
        if_match_version(make_mocked_request("PATCH", "/", headers={"If-Match": header})) == version
    )


@pytest.mark.parametrize(
    "header", ['"²"', "7", '"7', '"1", "2"', '"1234567890"', '""', "W/7", "**", '"-1"']
)
def test_a_malformed_if_match_is_400_not_a_mismatch(header: str) -> None:
    # API.md keeps 412 for a version mismatch; a header in no form the document states is bad
    # input (schemathesis' negative_data_rejection holds the server to it).
    assert not re.fullmatch(IF_MATCH_PATTERN, header.strip())
    with pytest.raises(BadRequest):
        if_match_version(make_mocked_request("PATCH", "/", headers={"If-Match": header}))


def test_a_cursor_holding_a_nul_is_400_before_it_reaches_postgresql() -> None:
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor(["\x00", "a", "b"]), 3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-20T09:00:00Z", dt.datetime(2026, 11, 20, 9, tzinfo=dt.UTC)),
        ("2026-11-20t10:00:00.5+01:00", dt.datetime(2026, 11, 20, 9, 0, 0, 500000, tzinfo=dt.UTC)),
        # Valid RFC 3339 whose UTC instant Python cannot hold: clamped, not a 500.
        ("0001-01-01T00:00:00+23:59", dt.datetime.min.replace(tzinfo=dt.UTC)),
        ("9999-12-31T23:59:59-23:59", dt.datetime.max.replace(tzinfo=dt.UTC)),
    ],
)
def test_visit_query_timestamps_are_rfc_3339_in_utc(raw: str, expected: dt.datetime) -> None:
    assert parse_instant(raw) == expected


@pytest.mark.parametrize(
    "raw", ["20260101T000000Z", "2026-01-01", "2026-01-01T00:00:00", "2026-01-01 00:00:00Z"]
)
def test_what_is_not_rfc_3339_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_instant(raw)


def test_a_visit_time_past_what_can_be_stored_is_422_not_500() -> None:
    body = {"type": "outpatient", "startedAt": "9999-12-31T23:59:59-23:59"}
    with pytest.raises(ValidationError):
        VisitIn.model_validate_json(orjson.dumps(body))


def test_an_integral_json_number_is_an_integer_vital_but_a_string_is_not() -> None:
    assert Vitals.model_validate_json(b'{"heartRate": 70.0}').heartRate == 70
    for bad in (b'{"heartRate": 70.5}', b'{"heartRate": "70"}', b'{"heartRate": true}'):
        with pytest.raises(ValidationError):
            Vitals.model_validate_json(bad)


@pytest.mark.parametrize("char", ["\x85", "\ufeff", "\u3000", "\xa0", "\x1c", " "])
def test_an_email_with_whitespace_of_any_regex_engine_is_refused(char: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Email).validate_python(f"a{char}b@example.org")


def test_patch_bodies_are_typed_as_deeply_as_what_is_stored() -> None:
    with pytest.raises(ValidationError):
        UserPatch.model_validate_json(b'{"address": {"planet": "Mars"}}')
    with pytest.raises(ValidationError):
        VisitPatch.model_validate_json(b'{"vitals": {"heartRate": 1000}}')


def test_a_study_k_may_arrive_as_an_integral_json_number() -> None:
    base = {"studyId": "diabetes-2026", "title": "t"}
    assert StudyIn.model_validate_json(orjson.dumps(base | {"k": 1000.0})).k == 1000
    for bad in (2.5, "3", True, 1.0):
        with pytest.raises(ValidationError):
            StudyIn.model_validate_json(orjson.dumps(base | {"k": bad}))


@pytest.mark.parametrize("seq", ["²", "9" * 19, "-1", ""])
def test_an_audit_cursor_that_is_no_bigint_seq_is_400_not_500(seq: str) -> None:
    with pytest.raises(BadRequest):
        after_seq(encode_cursor([seq]))


def test_an_audit_cursor_names_its_seq() -> None:
    assert after_seq(encode_cursor(["42"])) == 42
    assert after_seq(None) is None


RUN_ID = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    "started",
    ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2026-01-01T00:00:00", "nope"],
)
def test_a_runs_cursor_the_server_never_wrote_is_400_not_500(started: str) -> None:
    with pytest.raises(BadRequest):
        decode_instant_cursor(encode_cursor([started, RUN_ID]))


def test_a_runs_cursor_is_an_instant_in_utc_and_a_run_id() -> None:
    after = decode_instant_cursor(encode_cursor(["2026-01-01T02:00:00+02:00", RUN_ID]))
    assert after is not None
    started, run_id = after
    assert started == dt.datetime(2026, 1, 1, tzinfo=dt.UTC) and started.tzinfo == dt.UTC
    assert str(run_id) == RUN_ID


def test_no_two_visit_list_queries_share_a_cached_page() -> None:
    # The gateway answers a cached page without validating the query: `?since=&until=` was
    # served the unfiltered page, and a `since` holding the old separator another query's.
    queries = [
        {}, {"since": "", "until": ""}, {"since": ""},
        {"since": "2026-01-01T00:00:00Z", "until": "2026-02-01T00:00:00Z"},
        {"since": "2026-01-01T00:00:00Z|2026-02-01T00:00:00Z"},
    ]  # fmt: skip
    fields = [visit_list_field(MultiDict(q)) for q in queries]
    assert None not in fields and len(set(fields)) == len(fields)
    assert visit_list_field(MultiDict([("limit", "1"), ("limit", "2")])) is None
    assert visit_list_field(MultiDict(colour="red")) is None


def _study(schedule: str) -> StudyIn:
    return StudyIn.model_validate_json(
        orjson.dumps({"studyId": "diabetes-2026", "title": "t", "schedule": schedule})
    )


@pytest.mark.parametrize(
    "schedule",
    ["0 0 1 1", "0\u20030 1 1 *", "0 0 1 1 *\x00", "@hourly", "0 0 1 1 * *", "é * * * *"],
)
def test_a_schedule_out_of_the_documented_form_is_refused(schedule: str) -> None:
    pattern = StudyIn.model_json_schema()["properties"]["schedule"]["anyOf"][0]["pattern"]
    assert not re.fullmatch(pattern, schedule)
    with pytest.raises(ValidationError):
        _study(schedule)


@pytest.mark.parametrize("schedule", ["*/15 * * * *", " 0  0 1 1 *\t", "0 0 * JAN MON-FRI"])
def test_a_schedule_of_the_documented_form_that_croniter_takes_is_accepted(schedule: str) -> None:
    pattern = StudyIn.model_json_schema()["properties"]["schedule"]["anyOf"][0]["pattern"]
    assert re.fullmatch(pattern, schedule)
    assert _study(schedule).schedule == " ".join(schedule.split())


def test_the_documented_birth_date_range_is_the_servers() -> None:
    schema = UserPatch.model_json_schema()["properties"]["birthDate"]
    for day, documented in (("1899-12-31", False), ("1900-01-01", True), ("0999-05-05", False)):
        assert bool(re.fullmatch(schema["pattern"], day)) is documented
        patch = {"givenName": "A", "familyName": "B", "role": "patient", "userName": "abc",
                 "birthDate": day}  # fmt: skip
        try:
            UserIn.model_validate_json(orjson.dumps(patch))
        except ValidationError:
            assert not documented
        else:
            assert documented
