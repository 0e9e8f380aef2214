"""Field types shared by the request models of several services."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, StringConstraints

USER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{2,63}$"

UserName = Annotated[str, StringConstraints(pattern=USER_NAME_PATTERN)]


def text(max_length: int, min_length: int = 0) -> type[str]:
    """A string of bounded length with no NUL character (PostgreSQL text cannot hold one)."""
    return Annotated[  # type: ignore[return-value]
        str, StringConstraints(min_length=min_length, max_length=max_length, pattern=r"^[^\x00]*$")
    ]


def _integral(value: object) -> object:
    # JSON has one number type: 70.0 is the integer 70 (as JSON Schema's "integer" says), while
    # strict mode would refuse it; 70.5 and "70" stay refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def json_int(ge: int, le: int) -> type[int]:
    """An integer in ``ge..le`` that may arrive as an integral JSON number such as ``70.0``."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral)]  # type: ignore[return-value]
