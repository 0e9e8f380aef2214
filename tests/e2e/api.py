"""A small client of the public API, as a clinic's integrator would write it from API.md."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

_seq = itertools.count()


def unique(prefix: str) -> str:
    """A userName no other test uses."""
    return f"{prefix}.{next(_seq)}.{id(_seq) % 10_000}"


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any

    @property
    def problem(self) -> bool:
        return self.headers.get("Content-Type", "").startswith("application/problem+json")


class Api:
    """Calls through the load balancer with one bearer token."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str | None) -> None:
        self.http, self.base_url, self.token = http, base_url, token

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict | None = None,
        raw: bytes | None = None,
        params: dict | None = None,
    ) -> Reply:
        hdrs = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = raw
        if body is not None:
            data = orjson.dumps(body)
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        async with self.http.request(
            method, self.base_url + path, data=data, headers=hdrs, params=params
        ) as resp:
            payload = await resp.read()
            parsed = (
                orjson.loads(payload)
                if payload and "json" in resp.headers.get("Content-Type", "")
                else payload
            )
            return Reply(resp.status, resp.headers, parsed)

    async def create_patient(self, user_name: str | None = None, **fields: Any) -> dict:
        body = {
            "userName": user_name or unique("pat"),
            "role": "patient",
            "givenName": "Pat",
            "familyName": "Ient",
            "birthDate": "1980-04-02",
        } | fields
        reply = await self.call("POST", "/v1/users", body)
        assert reply.status == 201, reply.body
        return reply.body

    async def create_visit(self, user_name: str, **fields: Any) -> dict:
        body = {"type": "outpatient", "startedAt": "2026-11-20T09:00:00Z"} | fields
        reply = await self.call("POST", f"/v1/users/{user_name}/visits", body)
        assert reply.status == 201, reply.body
        return reply.body
