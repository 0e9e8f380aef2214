"""Field types shared by the request models of several services."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

USER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{2,63}$"

UserName = Annotated[str, StringConstraints(pattern=USER_NAME_PATTERN)]


def text(max_length: int, min_length: int = 0) -> type[str]:
    """A string of bounded length with no NUL character (PostgreSQL text cannot hold one)."""
    return Annotated[  # type: ignore[return-value]
        str, StringConstraints(min_length=min_length, max_length=max_length, pattern=r"^[^\x00]*$")
    ]
