"""Study consent on the patient's shard: ``GET /v1/users/{userName}/studies``, and ``PUT`` /
``DELETE /v1/users/{userName}/studies/{studyId}``.

The study registry belongs to the anonymizer, so before it writes, the FE server asks the
anonymizer API whether the study exists (``GET /internal/studies/{studyId}`` with the caller's
token): an unknown study is 404 however the FE server was reached. Studies are never deleted,
so a study once seen is remembered by the process and not asked about again.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from shared import policy
from shared.appkeys import FE_SETTINGS
from shared.contract import Handler
from shared.db import transaction
from shared.errors import FieldError, NotFound, Unavailable, ValidationFailed
from shared.logs import request_id_var
from shared.service import pool, principal, user_request
from shared.shard_users import user_role
from shared.types import USER_NAME_PATTERN
from shared.writes import begin_write
from user_service import consent_store
from user_service.models import Consent, StudiesTaken

log = logging.getLogger("medsvc.consent")
_STUDY_ID = re.compile(USER_NAME_PATTERN)


class StudyDirectory:
    """Answers "does this study exist?" from the anonymizer API, remembering the ones that do."""

    def __init__(self, urls: list[str], session: aiohttp.ClientSession | None) -> None:
        self._urls = [u.rstrip("/") for u in urls]
        self._session = session
        self._known: set[str] = set()
        self._rr = itertools.count()

    async def require(self, study_id: str, authorization: str) -> None:
        """Return when the study exists; NotFound when it does not; Unavailable when unknown."""
        if study_id in self._known:
            return
        if not self._urls or self._session is None:
            raise Unavailable(
                "no study registry is configured (MEDSVC_ANONYMIZER_URLS)", retry_after=30
            )
        start = next(self._rr) % len(self._urls)
        headers = {"Authorization": authorization, "X-Request-ID": request_id_var.get()}
        for url in self._urls[start:] + self._urls[:start]:
            try:
                async with self._session.get(
                    f"{url}/internal/studies/{study_id}", headers=headers
                ) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning(
                    "study registry unreachable",
                    extra={
                        "action": "consent.registry_unreachable",
                        "url": url,
                        "error": type(exc).__name__,
                    },
                )
                continue
            if status == 200:
                self._known.add(study_id)
                return
            if status == 404:
                raise NotFound(f"study {study_id} does not exist")
            log.warning("study registry answered %s", status, extra={
                "action": "consent.registry_error", "url": url, "status": status})  # fmt: skip
        raise Unavailable("the study registry is unavailable; the study cannot be checked")


STUDIES = web.AppKey("study_directory", StudyDirectory)


async def studies_context(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client of the study registry, for the life of the app."""
    urls = [u.strip() for u in app[FE_SETTINGS].anonymizer_urls.split(",") if u.strip()]
    timeout = aiohttp.ClientTimeout(total=5, sock_connect=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[STUDIES] = StudyDirectory(urls, session)
        yield


def _path_study_id(request: web.Request) -> str:
    study_id = request.match_info["studyId"]
    if not _STUDY_ID.fullmatch(study_id):
        raise NotFound(f"study {study_id[:64]} does not exist")
    return study_id


async def _checked(request: web.Request) -> tuple[str, str]:
    """(userName, studyId) of a consent request the caller may make, for an existing study."""
    caller, user_name = await user_request(request)
    study_id = _path_study_id(request)
    if request.body_exists and (await request.read()).strip() not in (b"", b"{}"):
        raise ValidationFailed(errors=[FieldError("body", "a consent takes no body")])
    await request.app[STUDIES].require(study_id, request.headers["Authorization"])
    return user_name, study_id


async def put_consent(request: web.Request) -> Consent:
    """The patient takes part in the study (idempotent): 200 with the consent."""
    user_name, study_id = await _checked(request)
    caller = principal(request)
    async with transaction(pool(request)) as conn:
        await begin_write(conn, request, caller, "user_service")
        role = await user_role(conn, user_name, lock=True)
        policy.may_change_consent(caller, user_name, role)
        if role != "patient":
            raise ValidationFailed(
                errors=[FieldError("userName", "only patients take part in studies")]
            )
        row = await consent_store.give_consent(conn, user_name, study_id)
    return Consent.from_row(row)


async def delete_consent(request: web.Request) -> None:
    """The patient withdraws (idempotent): 204."""
    user_name, study_id = await _checked(request)
    caller = principal(request)
    async with transaction(pool(request)) as conn:
        await begin_write(conn, request, caller, "user_service")
        role = await user_role(conn, user_name, lock=True)
        policy.may_change_consent(caller, user_name, role)
        await consent_store.withdraw_consent(conn, user_name, study_id)


async def list_consents(request: web.Request) -> StudiesTaken:
    """The studies the patient takes part in: 200 with the consents in force."""
    caller, user_name = await user_request(request)
    async with pool(request).acquire() as conn:
        policy.may_read_consents(caller, user_name, await user_role(conn, user_name))
        items = await consent_store.consents_in_force(conn, user_name)
    return StudiesTaken.model_construct(items=items, nextCursor=None)


# The handler of each consent operation of user_service/contract.py, by operation id.
HANDLERS: dict[str, Handler] = {
    "listConsents": list_consents,
    "giveConsent": put_consent,
    "withdrawConsent": delete_consent,
}
