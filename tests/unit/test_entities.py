"""The wire form of each entity, pinned byte for byte: the encoder of shared/entity.py writes
what the hand-built dicts before it wrote (cached bytes and stored Idempotency-Key answers
made by older processes are served as they are, so the form must not drift)."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg.pgproto.pgproto as pgproto
import orjson

from anonymizer.models import Run, RunPage, Study, StudyPage, StudySummary
from audit_service.chain import Verdict
from audit_service.checkpoints import Checkpoint
from audit_service.models import ConsistencyProof, InclusionProof
from shared.entity import column_of, encode, reply
from user_service.models import (
    IMMUTABLE_FIELDS as USER_IMMUTABLE,
)
from user_service.models import (
    Consent,
    StudiesTaken,
    StudyTaken,
    User,
    UserIn,
    UserPage,
)
from visit_service.models import IMMUTABLE_FIELDS, MUTABLE_FIELDS, Visit, VisitIn, VisitPage

AT = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
LATER = dt.datetime(2026, 11, 21, 10, 30, 0, 250_000, tzinfo=dt.UTC)
USER_ROW = {
    "user_name": "alice.smith", "role": "patient", "given_name": "Alice",
    "family_name": "Smith", "birth_date": dt.date(1980, 4, 2), "sex": "female", "email": None,
    "phone": "+1-555-0100",
    # jsonb comes back in PostgreSQL's key order (shorter keys first): kept as it is.
    "address": {"city": "Springfield", "country": "US", "postalCode": "62701"},
    "created_at": AT, "updated_at": LATER, "version": 2,
}  # fmt: skip
USER_JSON = (
    b'{"userName":"alice.smith","role":"patient","givenName":"Alice","familyName":"Smith",'
    b'"birthDate":"1980-04-02","sex":"female","email":null,"phone":"+1-555-0100",'
    b'"address":{"city":"Springfield","country":"US","postalCode":"62701"},'
    b'"createdAt":"2026-11-20T09:00:00Z","updatedAt":"2026-11-21T10:30:00.250000Z","version":2}'
)
VISIT_ID = "9b2e7c4e-51b7-4c1e-9a7e-2f0d6a1c3b5d"
VISIT_ROW = {
    # asyncpg's own UUID class, as the driver returns a uuid column.
    "visit_id": pgproto.UUID(VISIT_ID), "user_name": "alice.smith", "clinician": "dr.jones",
    "type": "outpatient", "started_at": AT, "ended_at": None, "reason": None,
    "diagnoses": [{"code": "E11.9", "system": "ICD-10"}], "vitals": {"heartRate": 70},
    "medications": [], "notes": "n", "created_at": AT, "updated_at": AT, "version": 1,
}  # fmt: skip
VISIT_JSON = (
    b'{"visitId":"' + VISIT_ID.encode() + b'","userName":"alice.smith","clinician":"dr.jones",'
    b'"type":"outpatient","startedAt":"2026-11-20T09:00:00Z","endedAt":null,"reason":null,'
    b'"diagnoses":[{"code":"E11.9","system":"ICD-10"}],"vitals":{"heartRate":70},'
    b'"medications":[],"notes":"n","createdAt":"2026-11-20T09:00:00Z",'
    b'"updatedAt":"2026-11-20T09:00:00Z","version":1}'
)


def test_a_user_row_encodes_to_the_pinned_bytes() -> None:
    assert encode(User.from_row(USER_ROW)) == USER_JSON
    page = UserPage.model_construct(items=[User.from_row(USER_ROW)], nextCursor="abc")
    assert encode(page) == b'{"items":[' + USER_JSON + b'],"nextCursor":"abc"}'


def test_a_visit_row_encodes_to_the_pinned_bytes() -> None:
    assert encode(Visit.from_row(VISIT_ROW)) == VISIT_JSON
    page = VisitPage.model_construct(items=[Visit.from_row(VISIT_ROW)], nextCursor=None)
    assert encode(page) == b'{"items":[' + VISIT_JSON + b'],"nextCursor":null}'


def test_consents_encode_with_their_derived_status() -> None:
    row = {"user_name": "alice.smith", "study_id": "asthma-2026", "consented_at": AT,
           "withdrawn_at": None, "version": 1}  # fmt: skip
    assert encode(Consent.from_row(row)) == (
        b'{"userName":"alice.smith","studyId":"asthma-2026","status":"consented",'
        b'"consentedAt":"2026-11-20T09:00:00Z","withdrawnAt":null,"version":1}'
    )
    gone = Consent.from_row(row | {"withdrawn_at": LATER, "version": 2})
    assert orjson.loads(encode(gone))["status"] == "withdrawn"
    taken = StudiesTaken.model_construct(
        items=[StudyTaken.from_row({"study_id": "asthma-2026", "consented_at": AT})],
        nextCursor=None,
    )
    assert encode(taken) == (
        b'{"items":[{"studyId":"asthma-2026","consentedAt":"2026-11-20T09:00:00Z"}],'
        b'"nextCursor":null}'
    )


def test_from_row_builds_what_model_construct_builds() -> None:
    # from_row skips model_construct's loop; the model must be the same (pydantic upgrades).
    values = {f: USER_ROW[column_of(f)] for f in User.model_fields}
    built = User.from_row(USER_ROW)
    assert built == User.model_construct(**values)
    assert built.model_fields_set == set(User.model_fields)
    assert built.userName == "alice.smith" and built.model_extra is None


def test_the_select_list_is_the_fields_in_snake_case() -> None:
    assert User.select_list() == (
        "user_name, role, given_name, family_name, birth_date, sex, email, phone, address,"
        " created_at, updated_at, version"
    )
    assert Consent.select_list() == "user_name, study_id, consented_at, withdrawn_at, version"


def test_a_reply_carries_the_etag_and_for_a_creation_the_location() -> None:
    visit = Visit.from_row(VISIT_ROW)
    created = reply(visit, 201)
    assert (created.status, created.body) == (201, VISIT_JSON)
    assert created.headers["ETag"] == '"1"'
    assert created.headers["Location"] == f"/v1/users/alice.smith/visits/{VISIT_ID}"
    assert created.content_type == "application/json"
    assert "Location" not in reply(visit).headers
    assert "ETag" not in reply(StudyTaken.from_row({"study_id": "s", "consented_at": AT})).headers


def test_the_patch_field_lists_come_from_the_models() -> None:
    assert USER_IMMUTABLE == {"userName", "role", "createdAt", "updatedAt", "version"}
    assert IMMUTABLE_FIELDS == {"visitId", "userName", "createdAt", "updatedAt", "version"}
    assert MUTABLE_FIELDS == {"clinician", "type", "startedAt", "endedAt", "reason", "diagnoses",
                              "vitals", "medications", "notes"}  # fmt: skip


def test_the_client_state_is_what_a_client_would_send() -> None:
    state = User.from_row(USER_ROW).client_state(UserIn)
    assert state == {
        "userName": "alice.smith", "role": "patient", "givenName": "Alice",
        "familyName": "Smith", "birthDate": "1980-04-02", "sex": "female",
        "phone": "+1-555-0100",
        "address": {"city": "Springfield", "country": "US", "postalCode": "62701"},
    }  # fmt: skip
    UserIn.model_validate_json(orjson.dumps(state))
    visit_state = Visit.from_row(VISIT_ROW).client_state(VisitIn)
    assert visit_state["startedAt"] == "2026-11-20T09:00:00Z" and "visitId" not in visit_state
    VisitIn.model_validate_json(orjson.dumps(visit_state))
    assert uuid.UUID(orjson.loads(VISIT_JSON)["visitId"]) == VISIT_ROW["visit_id"]


# -- the studies API (anonymizer): a run and a study, as the hand-built dicts wrote them ------

RUN_ID = "5f0c7a2e-8d3b-4c1e-9b7a-1e2d3c4b5a69"
RUNNING_ROW = {
    "run_id": pgproto.UUID(RUN_ID), "study_id": "asthma-2026", "status": "running",
    "trigger": "api", "requested_by": "rita", "started_at": AT, "finished_at": None,
    "policy_version": "deid-1", "counts": None, "k_anonymity": None, "error": None,
    "manifest": None,
}  # fmt: skip
# A manifest is jsonb: written as PostgreSQL returned it, in its key order.
MANIFEST = {
    "counts": {"visit": 7}, "leftOut": {}, "keyVersion": "hmac-sha256:0123",
    "watermarks": {"0": "10:12:11"}, "kAnonymity": {"k": 5}, "recordsBytes": 1234,
    "policyVersion": "deid-1", "recordsSha256": "ab" * 32,
}  # fmt: skip
SUCCEEDED_ROW = RUNNING_ROW | {
    "status": "succeeded", "finished_at": LATER, "counts": {"visit": 7},
    "k_anonymity": {"k": 5}, "manifest": MANIFEST,
}  # fmt: skip
RUN_HEAD = b'{"runId":"' + RUN_ID.encode() + b'","studyId":"asthma-2026",'
# A run has no "manifest" nor "error" key (not null) until it has one.
RUNNING_JSON = RUN_HEAD + (
    b'"status":"running","trigger":"api","requestedBy":"rita",'
    b'"startedAt":"2026-11-20T09:00:00Z","finishedAt":null,"policyVersion":"deid-1",'
    b'"counts":null,"kAnonymity":null}'
)
FAILED_JSON = RUN_HEAD + (
    b'"status":"failed","trigger":"api","requestedBy":"rita",'
    b'"startedAt":"2026-11-20T09:00:00Z","finishedAt":"2026-11-21T10:30:00.250000Z",'
    b'"policyVersion":"deid-1","counts":null,"kAnonymity":null,'
    b'"error":"the run failed (OSError)"}'
)
SUCCEEDED_JSON = RUN_HEAD + (
    b'"status":"succeeded","trigger":"api","requestedBy":"rita",'
    b'"startedAt":"2026-11-20T09:00:00Z","finishedAt":"2026-11-21T10:30:00.250000Z",'
    b'"policyVersion":"deid-1","counts":{"visit":7},"kAnonymity":{"k":5},'
    b'"manifest":{"counts":{"visit":7},"leftOut":{},"keyVersion":"hmac-sha256:0123",'
    b'"watermarks":{"0":"10:12:11"},"kAnonymity":{"k":5},"recordsBytes":1234,'
    b'"policyVersion":"deid-1","recordsSha256":"' + b"ab" * 32 + b'"}}'
)
STUDY_ROW = {
    "study_id": "asthma-2026", "title": "Asthma", "schedule": "*/15 * * * *", "k": None,
    "created_by": "rita", "created_at": AT,
}  # fmt: skip
STUDY_SUMMARY_JSON = (
    b'{"studyId":"asthma-2026","title":"Asthma","schedule":"*/15 * * * *","k":null,'
    b'"createdBy":"rita","createdAt":"2026-11-20T09:00:00Z"'
)


def test_a_run_row_encodes_to_the_pinned_bytes() -> None:
    assert encode(Run.from_row(RUNNING_ROW)) == RUNNING_JSON
    failed = RUNNING_ROW | {"status": "failed", "finished_at": LATER,
                            "error": "the run failed (OSError)"}  # fmt: skip
    assert encode(Run.from_row(failed)) == FAILED_JSON
    assert encode(Run.from_row(SUCCEEDED_ROW)) == SUCCEEDED_JSON
    page = RunPage.model_construct(
        items=[Run.from_row(SUCCEEDED_ROW), Run.from_row(RUNNING_ROW)], nextCursor="abc"
    )
    assert encode(page) == (
        b'{"items":[' + SUCCEEDED_JSON + b"," + RUNNING_JSON + b'],"nextCursor":"abc"}'
    )
    running = Run.from_row(RUNNING_ROW)
    assert (running.manifest, running.error) == (None, None)  # absent keys, read as None
    # What a client reads back is the documented model, the manifest's fields included.
    done = Run.model_validate_json(encode(Run.from_row(SUCCEEDED_ROW)))
    assert done.manifest is not None and done.manifest.recordsBytes == 1234


def test_a_study_row_encodes_to_the_pinned_bytes() -> None:
    assert encode(Study.of(STUDY_ROW, 0, None, None)) == STUDY_SUMMARY_JSON + (
        b',"participantCount":0,"lastRun":null,"lastSuccessfulRunAt":null}'
    )
    assert encode(Study.of(STUDY_ROW, 3, SUCCEEDED_ROW, LATER)) == STUDY_SUMMARY_JSON + (
        b',"participantCount":3,"lastRun":' + SUCCEEDED_JSON
        + b',"lastSuccessfulRunAt":"2026-11-21T10:30:00.250000Z"}'
    )  # fmt: skip
    page = StudyPage.model_construct(items=[StudySummary.from_row(STUDY_ROW)], nextCursor=None)
    assert encode(page) == b'{"items":[' + STUDY_SUMMARY_JSON + b'}],"nextCursor":null}'


def test_a_started_run_and_a_new_study_carry_their_location() -> None:
    run = reply(Run.from_row(RUNNING_ROW), status=202)
    assert "Location" not in run.headers  # the handler adds a 202's (anonymizer/routes.py)
    assert Run.from_row(RUNNING_ROW).location() == f"/v1/studies/asthma-2026/runs/{RUN_ID}"
    study = reply(Study.of(STUDY_ROW, 0, None, None), status=201)
    assert study.headers["Location"] == "/v1/studies/asthma-2026"
    assert "ETag" not in study.headers


# -- the audit API's proofs, checkpoints and verdicts (the events are their stored bytes) -----


def test_audit_replies_encode_to_the_pinned_bytes() -> None:
    cp = Checkpoint(1400, "ab" * 32, "2026-11-20T09:00:00Z", "0123456789abcdef", "c2ln",
                    ["cd" * 32], ["ef" * 32])  # fmt: skip
    public = (
        b'{"treeSize":1400,"rootHash":"' + b"ab" * 32 + b'","signedAt":"2026-11-20T09:00:00Z",'
        b'"keyId":"0123456789abcdef","signature":"c2ln"'
    )
    assert encode(cp.public()) == public + b"}"
    # The checkpoint log's line (a file older processes wrote too): the same fields first.
    assert cp.line() == (
        public + b',"compactRange":["' + b"cd" * 32 + b'"],"consistency":["' + b"ef" * 32
        + b'"]}\n'
    )  # fmt: skip
    assert Checkpoint.parse(cp.line()) == cp
    assert encode(Verdict(ok=True, checked=5, last_seq=5).model()) == (
        b'{"ok":true,"checked":5,"lastSeq":5}'
    )
    bad = Verdict(ok=False, checked=3, first_bad_seq=4, reason="altered", last_seq=3).model()
    assert encode(bad) == b'{"ok":false,"checked":3,"lastSeq":3,"firstBadSeq":4,"reason":"altered"}'
    assert Verdict(ok=True, checked=0).model().firstBadSeq is None
    path = InclusionProof.model_construct(leafIndex=6, treeSize=9, auditPath=["cd" * 32])
    assert encode(path) == b'{"leafIndex":6,"treeSize":9,"auditPath":["' + b"cd" * 32 + b'"]}'
    proof = ConsistencyProof.model_construct(**{"from": 3, "to": 9, "proof": ["ef" * 32]})
    assert encode(proof) == b'{"from":3,"to":9,"proof":["' + b"ef" * 32 + b'"]}'
    assert ConsistencyProof.model_validate_json(encode(proof)).model_dump(by_alias=True) == {
        "from": 3, "to": 9, "proof": ["ef" * 32],
    }  # fmt: skip
