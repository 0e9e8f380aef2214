"""Request bodies of the users API, validated strictly (JSON types as sent, no coercion)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from shared.codes import US_POSTAL_CODE_SCHEMA, us_zip3
from shared.entity import Entity
from shared.types import UserName, no_nul

Role = Literal["admin", "clinician", "patient", "researcher", "auditor"]
Sex = Literal["female", "male", "other", "unknown"]

# No "\s": Python's re, pydantic-core's Rust regex and the ECMA-262 regexes of JSON Schema
# clients each call a different set whitespace (U+0085, U+FEFF...). Spelled out instead: no
# control character, no space of any kind, no "@" within a part.
_EMAIL_PART = r"[^@\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+"
Email = Annotated[
    str, StringConstraints(max_length=254, pattern=rf"^{_EMAIL_PART}@{_EMAIL_PART}\.{_EMAIL_PART}$")
]
Phone = Annotated[
    str, StringConstraints(min_length=3, max_length=32, pattern=r"^\+?[0-9][0-9 ().-]*$")
]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]

EARLIEST_BIRTH = dt.date(1900, 1, 1)
# The birthDate range as far as a schema can state it: the year 1900 or later ("not in the
# future" moves every day; the validator checks it).
BIRTH_DATE = Field(
    description="Not before 1900-01-01 and not in the future (today in UTC).",
    json_schema_extra={"pattern": r"^(19[0-9]{2}|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}$"},
)

_STRICT = ConfigDict(extra="forbid", strict=True, populate_by_name=False)


class Address(BaseModel):
    """A postal address; ``country`` is an ISO 3166-1 alpha-2 code.

    A US ``postalCode`` is a ZIP or ZIP+4 code in ASCII digits (``"０３６１２"`` in full-width
    digits is not): the anonymizer derives its released ``zip3`` from it. ``country`` is
    declared first so that the postal code's check sees it.
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, populate_by_name=False, json_schema_extra=US_POSTAL_CODE_SCHEMA
    )

    line: Annotated[str, no_nul(200)] | None = None
    city: Annotated[str, no_nul(100)] | None = None
    region: Annotated[str, no_nul(100)] | None = None
    country: Country | None = None
    postalCode: Annotated[str, no_nul(20)] | None = Field(
        default=None, description="for country US: ^[0-9]{5}(-[0-9]{4})?$ in ASCII digits"
    )

    @field_validator("postalCode")
    @classmethod
    def _us_postal_code(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("country") == "US" and us_zip3(value) is None:
            raise ValueError("a US postal code is 12345 or 12345-6789 in ASCII digits")
        return value


class UserIn(BaseModel):
    """A user as a client creates it (POST) or as it stands after a merge patch (PATCH)."""

    model_config = _STRICT

    userName: UserName
    role: Role
    givenName: Annotated[str, no_nul(100, 1)]
    familyName: Annotated[str, no_nul(100, 1)]
    birthDate: Annotated[dt.date, BIRTH_DATE]
    sex: Sex = "unknown"
    email: Email | None = None
    phone: Phone | None = None
    address: Address | None = None

    @field_validator("birthDate")
    @classmethod
    def _birth_date_in_range(cls, value: dt.date) -> dt.date:
        if value < EARLIEST_BIRTH:
            raise ValueError("must not be before 1900-01-01")
        if value > dt.datetime.now(dt.UTC).date():
            raise ValueError("must not be in the future")
        return value


class UserPatch(BaseModel):
    """The shape of a PATCH body (RFC 7396): any mutable field, ``null`` to remove an optional one.

    Fields a user must have cannot be removed, so their schema admits no ``null``.
    """

    model_config = _STRICT

    givenName: Annotated[str, no_nul(100, 1)] | SkipJsonSchema[None] = None
    familyName: Annotated[str, no_nul(100, 1)] | SkipJsonSchema[None] = None
    birthDate: Annotated[dt.date, BIRTH_DATE] | SkipJsonSchema[None] = None
    sex: Sex | None = None
    email: Email | None = None
    phone: Phone | None = None
    address: Address | None = Field(default=None, description="merged into the stored address")


# The one JSON shape of a user (shared/entity.py): its columns are its fields in snake_case,
# and the audit trigger's audit_user_api (user_service/migrations) builds the same object, which
# tests/inproc/test_entities.py keeps so.
class User(UserIn, Entity):
    """A user as the API returns it."""

    VERSIONED = True

    createdAt: dt.datetime
    updatedAt: dt.datetime
    version: int

    def location(self) -> str:
        return f"/v1/users/{self.userName}"


# What a merge patch may change (UserPatch's fields), and what it may not (the rest of User).
MUTABLE_FIELDS = frozenset(UserPatch.model_fields)
IMMUTABLE_FIELDS = frozenset(User.model_fields) - MUTABLE_FIELDS


class UserPage(BaseModel):
    """One page of a user search."""

    items: list[User]
    nextCursor: str | None


class Consent(Entity):
    """A patient's consent to take part in a study, as ``PUT .../studies/{studyId}`` returns it."""

    # No column: a consent is withdrawn when it has a withdrawn_at.
    DERIVED = frozenset({"status"})

    userName: UserName
    studyId: UserName
    status: Literal["consented", "withdrawn"]
    consentedAt: dt.datetime
    withdrawnAt: dt.datetime | None
    version: int

    @classmethod
    def derive(cls, row: Mapping[str, Any]) -> dict[str, Any]:
        return {"status": "consented" if row["withdrawn_at"] is None else "withdrawn"}


class StudyTaken(Entity):
    """A study the patient takes part in (a consent in force)."""

    studyId: UserName
    consentedAt: dt.datetime


class StudiesTaken(BaseModel):
    """The studies a patient takes part in, as ``GET /v1/users/{userName}/studies`` lists them."""

    items: list[StudyTaken]
    nextCursor: None
