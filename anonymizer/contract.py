"""The studies API: each endpoint declared once (see shared/contract.py)."""

from __future__ import annotations

from anonymizer.models import Record, Run, RunPage, Study, StudyIn, StudyPage
from shared.contract import WRITE_ERRORS, Link, Operation, served_by

SERVICE = "anonymizer"
RESEARCH = ("admin", "researcher")
_STUDY, _RUNS = "/v1/studies/{studyId}", "/v1/studies/{studyId}/runs"
_RUN = "/v1/studies/{studyId}/runs/{runId}"


def _to_study(name: str, operation_id: str) -> Link:
    return Link(name, operation_id, {"studyId": "$response.body#/studyId"})


def _to_run(name: str, operation_id: str) -> Link:
    expressions = {"studyId": "$response.body#/studyId", "runId": "$response.body#/runId"}
    return Link(name, operation_id, expressions)


OPERATIONS: tuple[Operation, ...] = served_by(SERVICE, (
    Operation(
        "createStudy", "POST", "/v1/studies", "Register a study", "studies",
        roles=RESEARCH, success=201, response=Study, request=StudyIn,
        errors=(*WRITE_ERRORS, 403, 409),
        links=(
            _to_study("GetStudy", "getStudy"), _to_study("StartRun", "startRun"),
            _to_study("ListRuns", "listRuns"),
        ),
        description="`schedule`: a five-field cron expression (UTC); none means manual runs only.",
    ),
    Operation(
        "listStudies", "GET", "/v1/studies", "List studies", "studies",
        roles=RESEARCH, success=200, response=StudyPage, query=("limit", "cursor"),
        errors=(400, 403, 422), description="In studyId order.",
    ),
    Operation(
        "getStudy", "GET", _STUDY, "Read a study", "studies",
        roles=RESEARCH, success=200, response=Study, errors=(403, 404),
        description="With its participant count (consents in force now) and its last run.",
    ),
    Operation(
        "startRun", "POST", _RUNS, "Start an extraction run", "studies",
        roles=RESEARCH, success=202, response=Run, errors=(403, 404, 409, 422),
        links=(_to_run("GetRun", "getRun"), _to_run("GetRunRecords", "getRunRecords")),
        description="No body. The run goes on in the background: poll its `Location` until "
        "`status` is `succeeded` or `failed`. 409 while a run of the study is in progress.",
    ),
    Operation(
        "listRuns", "GET", _RUNS, "List a study's runs", "studies",
        roles=RESEARCH, success=200, response=RunPage, query=("limit", "cursor"),
        errors=(400, 403, 404, 422), description="Newest first.",
    ),
    Operation(
        "getRun", "GET", _RUN, "Read a run", "studies",
        roles=RESEARCH, success=200, response=Run, errors=(403, 404),
    ),
    Operation(
        "getRunRecords", "GET", f"{_RUN}/records", "Download a run's records", "studies",
        roles=RESEARCH, success=200, response=Record, media_type="application/x-ndjson",
        errors=(403, 404, 409),
        description="NDJSON: one de-identified record (the schema) a line. 409 until the run "
        "has succeeded. Streamed, of any size: every download is the same bytes, whose SHA-256 "
        "and size are the run manifest's `recordsSha256` and `recordsBytes` (also sent as "
        "`ETag` and `Content-Length`).",
    ),
))  # fmt: skip
