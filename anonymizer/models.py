"""Request and response bodies of the studies API, validated strictly."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, field_validator

from shared.entity import Entity, OmitsNone
from shared.types import INTEGRAL, UserName, no_nul

_STRICT = ConfigDict(extra="forbid", strict=True)

# The form of a schedule: five fields of cron characters (digits, names, * / , - ? L W #)
# separated by spaces or tabs. That each field is in range is croniter's to say (check_cron).
CRON_FIELD = r"[0-9A-Za-z*/,?#-]+"
CRON_PATTERN = rf"^[ \t]*{CRON_FIELD}([ \t]+{CRON_FIELD}){{4}}[ \t]*$"


def check_cron(value: str) -> str:
    """A standard five-field cron expression (minute hour day month weekday), else ValueError."""
    fields = value.split()
    if len(fields) != 5 or not croniter.is_valid(" ".join(fields)):
        raise ValueError("must be a five-field cron expression, e.g. '*/15 * * * *'")
    return " ".join(fields)


class StudyIn(BaseModel):
    """A study as a researcher registers it."""

    model_config = _STRICT

    studyId: UserName
    title: Annotated[str, no_nul(200, 1)]
    schedule: Annotated[str, StringConstraints(max_length=100, pattern=CRON_PATTERN)] | None = (
        Field(
            default=None,
            description="A five-field cron expression (minute hour day month weekday, UTC), "
            "e.g. `*/15 * * * *`; none: manual runs only.",
        )
    )
    k: Annotated[int, Field(ge=2, le=1000), INTEGRAL] | None = Field(
        default=None,
        description="k-anonymity threshold: smaller (birthYear, sex, zip3) groups are generalised",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return check_cron(value) if value is not None else None


RunStatus = Literal["running", "succeeded", "failed"]


class Manifest(BaseModel):
    """What a succeeded run released, under which rules, and how to check the download."""

    policyVersion: str = Field(description="the de-identification rules applied")
    keyVersion: str = Field(description="names the pseudonym master key (not the key)")
    watermarks: dict[str, str] = Field(description="shard id → the snapshot the run read it at")
    counts: dict[str, int] = Field(description="records by kind")
    leftOut: dict[str, int] = Field(description="values left out of records, by reason")
    kAnonymity: dict[str, Any] = Field(description="k, group sizes, generalised, suppressed")
    recordsSha256: str = Field(description="SHA-256 (hex) of the records download")
    recordsBytes: int = Field(description="size of the records download")


# The one JSON shape of a run and of a study (shared/entity.py): built from their rows (their
# columns are their fields in snake_case) and encoded once; tests/unit/test_entities.py pins
# the bytes.
class Run(Entity, OmitsNone):
    """One extraction run as the API shows it."""

    AS_TEXT = frozenset({"runId"})
    # Left out of the body, not written as null, while the run has none.
    OMITTED_WHEN_NONE = ("manifest", "error")

    runId: str
    studyId: str
    status: RunStatus
    trigger: Literal["api", "schedule", "cli"]
    requestedBy: str
    startedAt: dt.datetime
    finishedAt: dt.datetime | None
    policyVersion: str
    counts: dict[str, int] | None
    kAnonymity: dict[str, Any] | None
    manifest: Manifest | None = Field(default=None, description="a succeeded run's manifest")
    error: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return super().from_row(row).omitting_none()

    def location(self) -> str:
        """Where the run is polled (the ``Location`` of the 202 that started it)."""
        return f"/v1/studies/{self.studyId}/runs/{self.runId}"


class StudySummary(Entity):
    """A study as the list of studies shows it."""

    studyId: str
    title: str
    schedule: str | None
    k: int | None
    createdBy: str
    createdAt: dt.datetime

    def location(self) -> str:
        return f"/v1/studies/{self.studyId}"


class Study(StudySummary):
    """A study with its participant count (consents in force now) and its last run."""

    participantCount: int
    lastRun: Run | None
    lastSuccessfulRunAt: dt.datetime | None

    @classmethod
    def of(
        cls,
        row: Mapping[str, Any],
        participants: int,
        last: Mapping[str, Any] | None,
        success: dt.datetime | None,
    ) -> Self:
        """The study of its row, its participant count, its last run's row and the finish
        time of its last successful run."""
        return cls.from_row(
            dict(row)
            | {
                "participant_count": participants,
                "last_run": None if last is None else Run.from_row(last),
                "last_successful_run_at": success,
            }
        )


class RunPage(BaseModel):
    items: list[Run]
    nextCursor: str | None


class StudyPage(BaseModel):
    items: list[StudySummary]
    nextCursor: str | None


# -- records (one JSON object a line of a run's NDJSON download; see anonymizer.deidentify) ----

Pseudonym = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
# "<=YYYY": the 90+ group; "YYYY-YYYY": a birth decade (k-anonymity, level 1).
BirthYearGroup = Annotated[str, StringConstraints(pattern=r"^(<=[0-9]{4}|[0-9]{4}-[0-9]{4})$")]


class ParticipantRecord(BaseModel):
    """A participant's de-identified quasi-identifiers (generalised for k-anonymity if need be)."""

    kind: Literal["participant"]
    pid: Pseudonym
    birthYear: int | BirthYearGroup | None = Field(
        description='the year; `"<=YYYY"` for the 90+ group; `"YYYY-YYYY"` a decade (k-anonymity)'
    )
    sex: Literal["female", "male", "other", "unknown"] | None
    zip3: Annotated[str, StringConstraints(pattern=r"^[0-9]{3}$")] | None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None


class VisitDiagnosis(BaseModel):
    """A diagnosis code of its system's form (never its display text)."""

    system: Literal["ICD-10", "ICD-10-CM", "SNOMED-CT"]
    code: str


class VisitMedication(BaseModel):
    """A coded medication (uncoded ones are left out and counted in the manifest)."""

    system: Literal["RxNorm", "ATC"]
    code: str


class VisitRecord(BaseModel):
    """A visit with no date finer than its year, no free text and no clinician."""

    kind: Literal["visit"]
    pid: Pseudonym
    vid: Pseudonym
    year: int | None
    type: Literal["outpatient", "inpatient", "emergency", "telehealth"] | None
    durationMinutes: int | None
    diagnoses: list[VisitDiagnosis]
    vitals: dict[str, float] | None
    medications: list[VisitMedication]


class WithdrawalRecord(BaseModel):
    """The participant withdrew: the consumer drops everything of ``pid``."""

    kind: Literal["withdrawal"]
    pid: Pseudonym


class Record(
    RootModel[
        Annotated[ParticipantRecord | VisitRecord | WithdrawalRecord, Field(discriminator="kind")]
    ]
):
    """One line of a run's records (``application/x-ndjson``)."""
