"""Field types shared by the request models of several services."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, StringConstraints

USER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{2,63}$"

UserName = Annotated[str, StringConstraints(pattern=USER_NAME_PATTERN)]


def no_nul(max_length: int, min_length: int = 0) -> StringConstraints:
    """A bounded length and no NUL character (PostgreSQL text cannot hold one).

    Used as ``Annotated[str, no_nul(200)]``: a call in the metadata, so that type checkers see
    a plain ``str``.
    """
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=r"^[^\x00]*$")


def _integral(value: object) -> object:
    # JSON has one number type: 70.0 is the integer 70 (as JSON Schema's "integer" says), while
    # strict mode would refuse it; 70.5 and "70" stay refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer that may arrive as an integral JSON number such as ``70.0``; used as
# ``Annotated[int, Field(ge=20, le=300), INTEGRAL]``.
INTEGRAL = BeforeValidator(_integral)
