"""The closed value sets of API.md: clinical code systems and the form of their codes, US ZIP codes.

One definition, used twice: by the services, which refuse a value without its system's form
(422), and by the anonymizer, which checks again before releasing anything (rows written
before these rules exist). Every expression is ASCII-only (``[0-9]``, never ``\\d``, which
matches any Unicode digit such as ``"０"``) and matched whole (``fullmatch``: ``$`` would also
match before a trailing newline).
"""

from __future__ import annotations

import re
from typing import Any

_A = re.ASCII
_ICD10 = re.compile(r"[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?", _A)
DIAGNOSIS_SYSTEMS: dict[str, re.Pattern[str]] = {
    "ICD-10": _ICD10,
    "ICD-10-CM": _ICD10,
    "SNOMED-CT": re.compile(r"[0-9]{6,18}", _A),
}
MEDICATION_SYSTEMS: dict[str, re.Pattern[str]] = {
    "RxNorm": re.compile(r"[0-9]{1,10}", _A),
    "ATC": re.compile(r"[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}", _A),
}
US_POSTAL_CODE = re.compile(r"([0-9]{3})[0-9]{2}(?:-[0-9]{4})?", _A)
COUNTRY = re.compile(r"[A-Z]{2}", _A)


def valid_code(systems: dict[str, re.Pattern[str]], system: object, code: object) -> bool:
    """True when ``system`` is one of ``systems`` and ``code`` a string of its form."""
    pattern = systems.get(system) if isinstance(system, str) else None
    return pattern is not None and isinstance(code, str) and pattern.fullmatch(code) is not None


def code_problem(systems: dict[str, re.Pattern[str]], system: str, code: str) -> str | None:
    """Why ``code`` is not a code of ``system`` (None when it is); for 422 messages."""
    if system not in systems:
        return f"system must be one of {', '.join(systems)}"
    if systems[system].fullmatch(code) is None:
        return f"is not a {system} code (form {systems[system].pattern})"
    return None


def us_zip3(postal_code: object) -> str | None:
    """The first three digits of a valid US ZIP / ZIP+4 code in ASCII digits, else None."""
    if not isinstance(postal_code, str):
        return None
    m = US_POSTAL_CODE.fullmatch(postal_code)
    return m.group(1) if m else None


def _form(pattern: re.Pattern[str]) -> dict[str, str]:
    return {"type": "string", "pattern": f"^{pattern.pattern}$"}


def coded_schema(systems: dict[str, re.Pattern[str]], *, optional: bool) -> dict[str, Any]:
    """JSON Schema (``anyOf``) of an object whose ``code`` has the form of its ``system``.

    The OpenAPI document says what the validators check, so that a client (or a fuzzer
    generating from the schema) knows which codes are accepted. ``optional``: both may be
    absent or null together (an uncoded medication).
    """
    alternatives: list[dict[str, Any]] = [
        {"required": ["system", "code"],
         "properties": {"system": {"const": system}, "code": _form(pattern)}}
        for system, pattern in systems.items()
    ]  # fmt: skip
    if optional:
        alternatives.append({"properties": {"system": {"type": "null"}, "code": {"type": "null"}}})
    return {"anyOf": alternatives}


# JSON Schema of an address: a US one has a ZIP or ZIP+4 postal code (or none).
US_POSTAL_CODE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"properties": {"country": {"not": {"const": "US"}}}},
        {"properties": {"postalCode": {"anyOf": [{"type": "null"}, _form(US_POSTAL_CODE)]}}},
    ]
}
