"""Schemathesis hooks for the fuzz run (``SCHEMATHESIS_HOOKS=tests.e2e.fuzz_hooks``).

The OpenAPI document says everything JSON Schema can say; a few rules of the API it cannot:

- ranges of dates relative to today or to another field (``birthDate`` not in the future; a
  visit not before 1900, ``endedAt`` not before ``startedAt``; an audit event's
  ``occurredAt`` representable in UTC);
- each field of a study's ``schedule`` in range (the document states its five-field form);
  an audit event's free-form ``before``/``after`` hold no integer beyond 64 bits (the
  canonical form of the hash chain cannot encode one);
- values only the server issues (a page ``cursor``), and uniqueness (a new ``userName`` or
  ``studyId``);
- refusals that depend on stored state: a visit or a study consent only for a user whose role
  is ``patient``, an ``If-Match`` that names another version (412).

For positive cases (data the schema says is valid) :func:`before_call` adjusts the first two
kinds so that the server should accept them, and :func:`filter_failure` excuses exactly the
third kind and nothing else. Negative cases are never touched.

One more excuse is schemathesis' own: its coverage phase sends some header values that break
the header's documented ``pattern`` (``If-Match: 0``, a type-violating ``0`` read back as a
string) as valid data. A positive case whose ``If-Match`` is not of the documented form,
answered 400 for that header, is not a refusal of valid data.

:func:`other_roles_may_not_read` is an extra check: whatever the admin could read, a role that
may not read it (API.md's role table: a researcher no user, a clinician no study, a patient no
audit event...) gets 403. :func:`records_are_ndjson_records` holds a run's NDJSON download,
line by line, to the ``Record`` model the document publishes for it.

The fuzz test passes bearer tokens for those roles as JSON in ``MEDSVC_FUZZ_TOKENS``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from typing import Any

import requests
import schemathesis
from pydantic import ValidationError

from anonymizer.models import Record
from shared.httpio import IF_MATCH_PATTERN, encode_cursor

TOKENS: dict[str, str] = json.loads(os.environ.get("MEDSVC_FUZZ_TOKENS", "{}"))

USERS = "/v1/users"
USER = "/v1/users/{userName}"
VISITS = "/v1/users/{userName}/visits"
VISIT = "/v1/users/{userName}/visits/{visitId}"
CONSENT = "/v1/users/{userName}/studies/{studyId}"
STUDIES = "/v1/studies"
STUDY = "/v1/studies/{studyId}"
RUNS = "/v1/studies/{studyId}/runs"
RUN = "/v1/studies/{studyId}/runs/{runId}"
RECORDS = "/v1/studies/{studyId}/runs/{runId}/records"
EVENTS = "/v1/audit/events"
EVENT = "/v1/audit/events/{eventId}"
VERIFY = "/v1/audit/verify"
CHECKPOINT = "/v1/audit/checkpoints/latest"
PROOF = "/v1/audit/events/{eventId}/proof"
CONSISTENCY = "/v1/audit/consistency"
# The reads, and the roles that may never make them (API.md's role table). A clinician reads
# the audit events of patients, so only the chain's verification is closed to them.
_NO_USERS = ("researcher", "auditor", "patient")
_NO_STUDIES = ("clinician", "auditor", "patient")
PROTECTED_READS: dict[str, tuple[str, ...]] = {
    USER: _NO_USERS, VISITS: _NO_USERS, VISIT: _NO_USERS,
    STUDIES: _NO_STUDIES, STUDY: _NO_STUDIES, RUNS: _NO_STUDIES, RUN: _NO_STUDIES,
    RECORDS: _NO_STUDIES,
    EVENTS: ("researcher", "patient"), EVENT: ("researcher", "patient"),
    VERIFY: ("researcher", "patient", "clinician"),
    CHECKPOINT: ("researcher", "patient", "clinician"),
    PROOF: ("researcher", "patient", "clinician"),
    CONSISTENCY: ("researcher", "patient", "clinician"),
}  # fmt: skip
ROLES = ("researcher", "auditor", "patient", "clinician")
# A valid schedule that never comes due while the suite runs (once a year, on 1 January).
QUIET_SCHEDULE = "0 0 1 1 *"


def _positive(case: Any) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive


def _op(case: Any) -> tuple[str, str]:
    return case.method.upper(), case.operation.path


# -- positive data: what JSON Schema cannot say ---------------------------------------------


def _date_in_range(raw: Any) -> Any:
    """A ``YYYY-MM-DD`` moved into 1900..1999 (same month and day), else unchanged."""
    try:
        day = dt.date.fromisoformat(raw)
    except (TypeError, ValueError):
        return raw
    if dt.date(1900, 1, 1) <= day <= dt.date.today():
        return raw
    return dt.date(1900 + day.year % 100, day.month, min(day.day, 28)).isoformat()


def _instant(raw: Any) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(raw.upper()) if isinstance(raw, str) else None
    except ValueError:
        return None
    return value if value is not None and value.tzinfo is not None else None


def _timestamp_in_range(raw: Any) -> Any:
    """An RFC 3339 timestamp moved into 2000..2099 when it is before 1901 or in 9999."""
    value = _instant(raw)
    if value is None or 1901 <= value.year < 9999:
        return raw
    return value.replace(year=2000 + value.year % 100, day=min(value.day, 28)).isoformat()


def _visit_times(body: dict[str, Any], patch: bool) -> None:
    for key in ("startedAt", "endedAt"):
        if key in body:
            body[key] = _timestamp_in_range(body[key])
    started, ended = _instant(body.get("startedAt")), _instant(body.get("endedAt"))
    if started is not None and ended is not None and ended < started:
        body["startedAt"], body["endedAt"] = body["endedAt"], body["startedAt"]
    elif patch and ended is not None and "startedAt" not in body:
        body["startedAt"] = body["endedAt"]  # the stored startedAt may be later
    elif patch and started is not None and "endedAt" not in body:
        body["endedAt"] = None  # the stored endedAt may be earlier: remove it


def _valid_cursor(path: str, raw: str) -> str:
    seed = raw.replace("\x00", "")
    if path == USERS:
        return encode_cursor([seed, seed, seed])
    if path == STUDIES:
        return encode_cursor([seed])
    if path == EVENTS:
        return encode_cursor([str(uuid.uuid5(uuid.NAMESPACE_URL, seed).int % 10**9)])
    return encode_cursor(["2026-01-01T00:00:00+00:00", str(uuid.uuid5(uuid.NAMESPACE_URL, seed))])


def _fresh(name: Any) -> Any:
    """A userName or studyId made unique: generators favour a few small ones ("000")."""
    return f"{name[:52]}-{uuid.uuid4().hex[:10]}" if isinstance(name, str) else name


def _int64(value: Any) -> Any:
    """``value`` with every integer clamped into 64 bits, at any depth."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(-(2**63), min(value, 2**63 - 1))
    if isinstance(value, dict):
        return {k: _int64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_int64(v) for v in value]
    return value


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Make positive data satisfy the rules the schema cannot express."""
    if not _positive(case):
        return
    method, path = _op(case)
    body = case.body if isinstance(case.body, dict) else None
    if body is not None and (method, path) == ("POST", USERS) and "userName" in body:
        # A fresh name makes most creates succeed, so that the stateful phase has users (and
        # so visits) to walk to.
        body["userName"] = _fresh(body["userName"])
    if body is not None and (method, path) == ("POST", STUDIES):
        if "studyId" in body:
            body["studyId"] = _fresh(body["studyId"])
        if body.get("schedule") is not None:
            # Any cron expression, even one the generator happened to make valid, is replaced:
            # a study due while the suite runs would race the API's runs and other tests' ticks.
            body["schedule"] = QUIET_SCHEDULE
    if body is not None and (method, path) == ("POST", EVENTS):
        if "occurredAt" in body:
            body["occurredAt"] = _timestamp_in_range(body["occurredAt"])
        for key in ("before", "after"):
            if key in body:
                body[key] = _int64(body[key])
    if body is not None and path in (USERS, USER) and "birthDate" in body:
        body["birthDate"] = _date_in_range(body["birthDate"])
    if body is not None and path in (VISITS, VISIT) and method in ("POST", "PATCH"):
        _visit_times(body, patch=method == "PATCH")
    if (
        method == "GET"
        and isinstance(case.query, dict)
        and isinstance(case.query.get("cursor"), str)
    ):
        case.query["cursor"] = _valid_cursor(path, case.query["cursor"])


# -- refusals that depend on stored state ---------------------------------------------------


def _problem(response: Any) -> dict[str, Any]:
    try:
        body = json.loads(response.content)
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but a positive case's refusal that only stored state explains."""
    if not _positive(case) or getattr(failure, "code", None) != "ST202":
        return True
    method, path = _op(case)
    if response.status_code == 412 and method == "PATCH":
        return False  # If-Match named a version the resource is not at
    if_match = (case.headers or {}).get("If-Match")
    if (
        response.status_code == 400
        and isinstance(if_match, str)
        and not re.fullmatch(IF_MATCH_PATTERN, if_match.strip(" \t"))
        and str(_problem(response).get("detail", "")).startswith("If-Match must be")
    ):
        return False  # not valid data: the header breaks its documented pattern
    errors = _problem(response).get("errors") or []
    not_a_patient = [{"field": "userName", "message": "visits are recorded for patients only"}]
    if (
        response.status_code == 422
        and (method, path) == ("POST", VISITS)
        and errors == not_a_patient
    ):
        return False
    if (
        response.status_code == 400
        and path in (PROOF, CONSISTENCY)
        and "tree size" in str(_problem(response).get("detail"))
    ):
        return False  # a tree size beyond the log's current one (or below the event's seq)
    key_reused = [{"field": "Idempotency-Key", "message": "was used with another request body"}]
    if response.status_code == 422 and method == "POST" and errors == key_reused:
        return False  # the generator sent one Idempotency-Key with two bodies: API.md's 422
    not_a_participant = [{"field": "userName", "message": "only patients take part in studies"}]
    if (
        response.status_code == 422
        and (method, path) == ("PUT", CONSENT)
        and errors == not_a_participant
    ):
        return False
    return True


# -- roles -----------------------------------------------------------------------------------


@schemathesis.check
def other_roles_may_not_read(ctx: Any, response: Any, case: Any) -> bool | None:
    """What the admin just read, no outsider role may read (403)."""
    method, path = _op(case)
    if method != "GET" or path not in PROTECTED_READS or response.status_code != 200 or not TOKENS:
        return None
    url = response.request.url
    target = (case.path_parameters or {}).get("userName")
    outsiders = list(PROTECTED_READS[path])
    if path == USER and _problem(response).get("role") != "patient":
        outsiders.append("clinician")  # a clinician reads patients only
    for role in outsiders:
        # A patient may read their own records; the token's sub is never a fuzzed userName.
        sub = f"fuzz-outsider-{role}"
        if target == sub:
            continue
        reply = requests.get(url, headers={"Authorization": f"Bearer {TOKENS[role]}"}, timeout=10)
        if reply.status_code != 403:
            raise AssertionError(
                f"a {role} ({sub}) read {method} {url} with {reply.status_code}, expected 403"
            )
    return None


@schemathesis.check
def records_are_ndjson_records(ctx: Any, response: Any, case: Any) -> bool | None:
    """A run's download: ``application/x-ndjson``, each line one ``Record``."""
    if _op(case) != ("GET", RECORDS) or response.status_code != 200:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]  # names in lowercase
    if content_type.split(";")[0].strip() != "application/x-ndjson":
        raise AssertionError(f"records answered as {content_type!r}, not application/x-ndjson")
    text = response.content.decode()
    if text and not text.endswith("\n"):
        raise AssertionError("the last NDJSON line is not terminated")
    for number, line in enumerate(text.splitlines(), 1):
        try:
            Record.model_validate_json(line)
        except ValidationError as exc:
            raise AssertionError(f"line {number} is not a Record: {exc}") from exc
    return None
