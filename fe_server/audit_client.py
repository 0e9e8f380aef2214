"""A client of audit_service's internal ingest endpoint, balancing over its processes.

The outbox relay (:mod:`fe_server.outbox`) is its user: one batch of events per call, failing
over to the next audit_service process when one cannot be reached or answers 5xx. The
caller authenticates with a short-lived admin token signed with the shared JWT secret.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp

from shared.auth import make_token

BATCH_PATH = "/internal/events/batch"
_TOKEN_TTL = 3600
_TOKEN_REFRESH = 600  # mint a new token when the current one has less than this left


class AuditError(Exception):
    """A batch was not stored; the caller keeps it and tries again later."""


class AuditUnavailable(AuditError):
    """No audit_service process could be reached, or each answered 5xx."""


class AuditRejected(AuditError):
    """audit_service refused the batch (4xx): a bug or a misconfiguration (e.g. the secret)."""

    # Refusals that say nothing about the batch itself: the relay's credentials, a timeout,
    # a rate limit. Any other 4xx refuses the batch's content, and will again.
    TRANSIENT = frozenset({401, 403, 408, 429})

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def for_good(self) -> bool:
        """Would the same batch be refused again?"""
        return self.status not in self.TRANSIENT


class AuditClient:
    """POSTs event batches to one of ``urls`` (round-robin, failing over on errors)."""

    def __init__(
        self, urls: list[str], session: aiohttp.ClientSession, secret: str, sub: str
    ) -> None:
        if not urls:
            raise ValueError("at least one audit_service URL is needed")
        self._urls = [u.rstrip("/") for u in urls]
        self._session = session
        self._secret = secret
        self._sub = sub
        self._rr = itertools.count()
        self._token, self._token_exp = "", 0.0

    def _bearer(self) -> str:
        now = time.time()
        if self._token_exp - now < _TOKEN_REFRESH:
            self._token = make_token(self._secret, self._sub, ["admin"], _TOKEN_TTL)
            self._token_exp = now + _TOKEN_TTL
        return self._token

    async def post_batch(self, body: bytes, request_id: str) -> None:
        """Store one batch (a JSON ``{"events": [...]}``); return only once it is stored."""
        start = next(self._rr) % len(self._urls)
        failures: list[str] = []
        for url in self._urls[start:] + self._urls[:start]:
            headers = {
                "Authorization": f"Bearer {self._bearer()}",
                "Content-Type": "application/json",
                "X-Request-ID": request_id,
            }
            try:
                async with self._session.post(url + BATCH_PATH, data=body, headers=headers) as resp:
                    detail = await resp.read()
                    if resp.status < 300:
                        return
                    if resp.status < 500:
                        raise AuditRejected(
                            resp.status, f"{url} answered {resp.status}: {detail[:500]!r}"
                        )
                    failures.append(f"{url}: {resp.status}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                failures.append(f"{url}: {type(exc).__name__}")
        raise AuditUnavailable("; ".join(failures))
