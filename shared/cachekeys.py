"""Names of the read cache's groups and fields, shared by the FE servers (which fill and
invalidate) and the gateway (which serves hits without a second hop)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

# The query parameters of a visit list; a list page is cached per combination of their values.
VISIT_LIST_PARAMS = ("since", "until", "cursor", "limit")
USER_FIELD = "u"


def user_group(user_name: str) -> str:
    """The group a user write invalidates."""
    return f"u:{user_name}"


def visits_group(user_name: str) -> str:
    """The group a visit write invalidates: all of the patient's visits and list pages."""
    return f"v:{user_name}"


def visit_field(visit_id: str) -> str:
    return f"v:{visit_id}"


def visit_list_field(query: Mapping[str, str]) -> str | None:
    """The field of a visit-list page, or None when the query is not one a page is cached for.

    One query, one field: the gateway answers a hit without validating the query, so no other
    query (an empty ``since=`` for none, a ``since`` holding the separator) may share it.
    """
    if not set(query) <= set(VISIT_LIST_PARAMS) or len(query) != len(set(query)):
        return None
    return "l:" + orjson.dumps([query.get(k) for k in VISIT_LIST_PARAMS]).decode()
