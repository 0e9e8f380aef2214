"""Request bodies of the visits API, validated strictly (JSON types as sent, no coercion)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from shared.codes import DIAGNOSIS_SYSTEMS, MEDICATION_SYSTEMS, code_problem, coded_schema
from shared.entity import Entity
from shared.types import INTEGRAL, UserName, no_nul

VisitType = Literal["outpatient", "inpatient", "emergency", "telehealth"]

# A merge patch may not remove these (``null``): a stored visit always has them.
REQUIRED_FIELDS = frozenset({"clinician", "type", "startedAt"})

_STRICT = ConfigDict(extra="forbid", strict=True)
EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)


DiagnosisSystem = Literal["ICD-10", "ICD-10-CM", "SNOMED-CT"]
MedicationSystem = Literal["RxNorm", "ATC"]


class Diagnosis(BaseModel):
    """A coded diagnosis: ``code`` has its ``system``'s form (shared/codes.py), ASCII only."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=coded_schema(DIAGNOSIS_SYSTEMS, optional=False),
    )

    system: DiagnosisSystem
    code: Annotated[str, no_nul(32, 1)] = Field(
        description="ICD-10/ICD-10-CM: ^[A-Z][0-9][0-9A-Z](\\.[0-9A-Z]{1,4})?$; "
        "SNOMED-CT: 6-18 digits"
    )
    display: Annotated[str, no_nul(200)] | None = None

    @field_validator("code")
    @classmethod
    def _code_of_system(cls, value: str, info: ValidationInfo) -> str:
        system = info.data.get("system")
        if system is not None and (problem := code_problem(DIAGNOSIS_SYSTEMS, system, value)):
            raise ValueError(problem)
        return value


class Vitals(BaseModel):
    """Vital signs, each within physiological bounds."""

    model_config = _STRICT

    heightCm: float | None = Field(default=None, ge=20, le=300)
    weightKg: float | None = Field(default=None, ge=0.2, le=700)
    systolic: Annotated[int, Field(ge=40, le=300), INTEGRAL] | None = None
    diastolic: Annotated[int, Field(ge=20, le=200), INTEGRAL] | None = None
    heartRate: Annotated[int, Field(ge=20, le=300), INTEGRAL] | None = None
    temperatureC: float | None = Field(default=None, ge=25, le=45)


class Medication(BaseModel):
    """A medication: free text (never released) and, optionally, a code (released)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=coded_schema(MEDICATION_SYSTEMS, optional=True),
    )

    name: Annotated[str, no_nul(200, 1)]
    dose: Annotated[str, no_nul(100)] | None = None
    frequency: Annotated[str, no_nul(100)] | None = None
    system: MedicationSystem | None = None
    code: Annotated[str, no_nul(32, 1)] | None = Field(
        default=None, description="RxNorm: 1-10 digits; ATC: ^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$"
    )

    @field_validator("code")
    @classmethod
    def _code_of_system(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        system = info.data.get("system")
        if system is None:
            if "system" in info.data:
                raise ValueError("a code needs its system")
            return value  # the system itself was refused: its error says why
        if problem := code_problem(MEDICATION_SYSTEMS, system, value):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _system_needs_code(self) -> Medication:
        if self.system is not None and self.code is None:
            raise ValueError("a medication system needs its code")
        return self


class VisitIn(BaseModel):
    """A visit as a client records it (POST) or as it stands after a merge patch (PATCH).

    ``clinician`` defaults to the caller.
    """

    model_config = _STRICT

    clinician: UserName | None = None
    type: VisitType
    startedAt: AwareDatetime
    endedAt: AwareDatetime | None = None
    reason: Annotated[str, no_nul(500)] | None = None
    diagnoses: list[Diagnosis] = Field(default_factory=list, max_length=50)
    vitals: Vitals | None = None
    medications: list[Medication] = Field(default_factory=list, max_length=100)
    notes: Annotated[str, no_nul(20000)] | None = None

    @field_validator("startedAt", "endedAt")
    @classmethod
    def _plausible(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value < EARLIEST:
            raise ValueError("must not be before 1900-01-01")
        if value is not None and value.year == 9999:
            # Python cannot hold a UTC instant past 9999-12-31, so the database driver could not
            # store one (9999-12-31T23:00-02:00 is one).
            try:
                value.astimezone(dt.UTC)
            except OverflowError:
                raise ValueError("must not be after 9999-12-31T23:59:59Z") from None
        return value

    @field_validator("endedAt")
    @classmethod
    def _ends_after_start(
        cls, value: dt.datetime | None, info: ValidationInfo
    ) -> dt.datetime | None:
        started = info.data.get("startedAt")
        if value is not None and started is not None and value < started:
            raise ValueError("must not be before startedAt")
        return value


class VisitPatch(BaseModel):
    """The shape of a PATCH body (RFC 7396): any mutable field, ``null`` to remove an optional one.

    ``clinician``, ``type`` and ``startedAt`` cannot be removed, so their schema admits no ``null``.
    """

    model_config = _STRICT

    clinician: UserName | SkipJsonSchema[None] = None
    type: VisitType | SkipJsonSchema[None] = None
    startedAt: AwareDatetime | SkipJsonSchema[None] = None
    endedAt: AwareDatetime | None = None
    reason: Annotated[str, no_nul(500)] | None = None
    diagnoses: list[Diagnosis] | None = None
    vitals: Vitals | None = Field(default=None, description="merged into the stored vitals")
    medications: list[Medication] | None = None
    notes: Annotated[str, no_nul(20000)] | None = None


class VisitKey(BaseModel):
    """What names a visit: its patient and its server-generated id."""

    visitId: Annotated[str, Field(json_schema_extra={"format": "uuid"})]
    userName: UserName


# The one JSON shape of a visit (shared/entity.py): its columns are its fields in snake_case,
# and the audit trigger's audit_visit_api (visit_service/migrations) builds the same object,
# which tests/inproc/test_entities.py keeps so. pydantic puts the fields of the last base
# first: a Visit reads visitId, userName, then what the client recorded, then the server's.
class Visit(VisitIn, VisitKey, Entity):
    """A visit as the API returns it."""

    VERSIONED = True
    AS_TEXT = frozenset({"visitId"})

    createdAt: dt.datetime
    updatedAt: dt.datetime
    version: int

    def location(self) -> str:
        return f"/v1/users/{self.userName}/visits/{self.visitId}"


class VisitPage(BaseModel):
    """One page of a patient's visits."""

    items: list[Visit]
    nextCursor: str | None


# What a merge patch may change (VisitPatch's fields), and what it may not (the rest of Visit).
MUTABLE_FIELDS = frozenset(VisitPatch.model_fields)
IMMUTABLE_FIELDS = frozenset(Visit.model_fields) - MUTABLE_FIELDS
