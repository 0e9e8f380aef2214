"""Request and response bodies of the studies API, validated strictly."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.types import UserName, text

_STRICT = ConfigDict(extra="forbid", strict=True)


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
    title: text(200, 1)
    schedule: text(100) | None = Field(
        default=None, description="cron expression (UTC); none: manual runs only"
    )
    k: int | None = Field(
        default=None, ge=2, le=1000,
        description="k-anonymity threshold: smaller (birthYear, sex, zip3) groups are generalised",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return check_cron(value) if value is not None else None


RunStatus = Literal["running", "succeeded", "failed"]


class Run(BaseModel):
    """One extraction run as the API shows it."""

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
    error: str | None = None


class Study(BaseModel):
    """A study with its participant count (consents in force now) and its last run."""

    studyId: str
    title: str
    schedule: str | None
    k: int | None
    createdBy: str
    createdAt: dt.datetime
    participantCount: int
    lastRun: Run | None
    lastSuccessfulRunAt: dt.datetime | None


class RunPage(BaseModel):
    items: list[Run]
    nextCursor: str | None
