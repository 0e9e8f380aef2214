"""Request and response plumbing shared by the services: JSON bodies, ETags, cursors, limits."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import uuid
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from shared.errors import (
    BadRequest,
    FieldError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)

MAX_BODY = 1024 * 1024
JSON_TYPES = ("application/json", "application/merge-patch+json")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object: 415 if not JSON, 413 if over 1 MiB, 400 if malformed."""
    if request.content_type not in JSON_TYPES:
        raise UnsupportedMediaType("the request body must be application/json")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge("the request body is larger than 1 MiB")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge("the request body is larger than 1 MiB") from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise ValidationFailed(errors=[FieldError("body", "must be a JSON object")])
    return data


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response encoded once with orjson."""
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_UTC_Z),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def etag(version: int) -> str:
    return f'"{version}"'


# The forms of If-Match the server takes: "*", or one entity tag as the server issues them
# ("<version>", ASCII digits; W/ is tolerated). The document states it (apidoc/openapi.py).
IF_MATCH_PATTERN = r'^(\*|(W/)?"[0-9]{1,9}")$'
_IF_MATCH = re.compile(IF_MATCH_PATTERN)


def if_match_version(request: web.Request) -> int | None:
    """The version an ``If-Match`` header asks for; None when absent or ``*``.

    Any other form is malformed input, 400 (API.md keeps 412 for a version mismatch): a list
    of tags, a tag without its quotes, digits that are not ASCII ("²") or too many of them.
    """
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    # [0-9] is ASCII only (\d would admit "²", which int() refuses).
    if (found := _IF_MATCH.fullmatch(raw.strip(" \t"))) is None:
        raise BadRequest('If-Match must be * or one entity tag "<version>" (the ETag)')
    tag = found[1]
    return None if tag == "*" else int(tag.removeprefix("W/").strip('"'))


def limit_param(query: MultiMapping[str], default: int = 50, maximum: int = 200) -> int:
    """``?limit=``: an integer in 1..maximum, else 400."""
    raw = query.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"limit must be an integer from 1 to {maximum}")
    return int(raw)


def encode_cursor(key: list[Any]) -> str:
    """An opaque cursor for a keyset position."""
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def decode_cursor(raw: str | None, arity: int) -> list[Any] | None:
    """Decode a cursor made by :func:`encode_cursor` (400 when it is not one)."""
    if raw is None:
        return None
    try:
        key = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise BadRequest("cursor is not valid") from exc
    # A NUL could never have come from a stored key, and PostgreSQL text refuses it.
    if (
        not isinstance(key, list)
        or len(key) != arity
        or not all(isinstance(k, str) and "\x00" not in k for k in key)
    ):
        raise BadRequest("cursor is not valid")
    return key


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7396 JSON merge patch to ``target`` and return the result (no mutation)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# RFC 3339 date-time, offset required (fromisoformat alone also takes "20260101T00", no offset...).
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)
_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)


def parse_instant(raw: str) -> dt.datetime:
    """An RFC 3339 timestamp in UTC (ValueError when it is not one).

    A valid timestamp whose UTC instant Python cannot hold (year 1 at +23:59, year 9999 at
    -23:59) is clamped to the first or last representable instant, where it sorts anyway.
    """
    if not _RFC3339.fullmatch(raw):
        raise ValueError(f"{raw!r} is not an RFC 3339 timestamp")
    value = dt.datetime.fromisoformat(raw.upper())
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        return _EARLIEST if value.year == 1 else _LATEST


def encode_instant_cursor(instant: dt.datetime, key: uuid.UUID) -> str:
    """The cursor of a page ordered by (an instant, an id), e.g. (startedAt, visitId)."""
    return encode_cursor([instant.isoformat(), str(key)])


def decode_instant_cursor(raw: str | None) -> tuple[dt.datetime, uuid.UUID] | None:
    """The (instant in UTC, id) of a cursor :func:`encode_instant_cursor` wrote; 400 otherwise."""
    cursor = decode_cursor(raw, 2)
    if cursor is None:
        return None
    try:
        instant = parse_instant(cursor[0])
        if instant in (_EARLIEST, _LATEST):
            raise ValueError("no cursor this server wrote lies at the end of time")
        return instant, uuid.UUID(cursor[1])
    except ValueError as exc:
        raise BadRequest("cursor is not valid") from exc
