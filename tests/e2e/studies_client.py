"""What the studies tests share: a researcher's client, and patients planted with identifiers."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

import orjson

from anonymizer.deidentify import AES_MMO, StudyKeys
from anonymizer.settings import LOCAL_PSEUDONYM_KEY
from tests.e2e.api import Api, Reply, unique

_n = itertools.count()


def study_id(prefix: str = "study") -> str:
    return unique(prefix).replace(".", "-")


def keys(study: str) -> StudyKeys:
    """The study's pseudonym functions under the local stack's master key (a study registered
    now: AES-MMO vids)."""
    return StudyKeys(LOCAL_PSEUDONYM_KEY.encode(), study, AES_MMO)


@dataclass
class Researcher:
    api: Api

    async def create_study(self, **fields: Any) -> str:
        sid = fields.pop("studyId", None) or study_id()
        reply = await self.api.call(
            "POST", "/v1/studies", {"studyId": sid, "title": "A study"} | fields
        )
        assert reply.status == 201, reply.body
        return sid

    async def start(self, study: str) -> Reply:
        return await self.api.call("POST", f"/v1/studies/{study}/runs")

    async def wait(self, location: str, timeout: float = 60) -> dict:
        """Poll the run until it is no longer running."""
        for _ in range(int(timeout / 0.02)):
            reply = await self.api.call("GET", location)
            assert reply.status == 200, reply.body
            if reply.body["status"] != "running":
                return reply.body
            await asyncio.sleep(0.02)
        raise AssertionError(f"run {location} still running after {timeout}s")

    async def records(self, study: str, run_id: str) -> tuple[bytes, list[dict]]:
        """The run's NDJSON download: the raw bytes and the parsed records."""
        url = f"{self.api.base_url}/v1/studies/{study}/runs/{run_id}/records"
        headers = {"Authorization": f"Bearer {self.api.token}"}
        async with self.api.http.get(url, headers=headers) as resp:
            raw = await resp.read()
            assert resp.status == 200, raw
            assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        return raw, [orjson.loads(line) for line in raw.splitlines()]

    async def run(self, study: str) -> tuple[dict, list[dict]]:
        """Start a run, wait for it to succeed, return (run, records)."""
        started = await self.start(study)
        assert started.status == 202, started.body
        assert started.body["status"] == "running"
        run = await self.wait(started.headers["Location"])
        assert run["status"] == "succeeded", run
        _, records = await self.records(study, run["runId"])
        return run, records


async def patient_on_shard(admin: Api, stack: Any, shard_id: int, **fields: Any) -> dict:
    """A new patient whose userName the shard map gives to ``shard_id``."""
    while True:
        name = unique("pat")
        if stack.shard_map.shard_id_for(name) == shard_id:
            return await admin.create_patient(name, **fields)


async def consent(api: Api, user_name: str, study: str) -> None:
    reply = await api.call("PUT", f"/v1/users/{user_name}/studies/{study}")
    assert reply.status == 200, reply.body


async def withdraw(api: Api, user_name: str, study: str) -> None:
    reply = await api.call("DELETE", f"/v1/users/{user_name}/studies/{study}")
    assert reply.status == 204, reply.body


def by_kind(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"participant": [], "visit": [], "withdrawal": []}
    for r in records:
        out[r["kind"]].append(r)
    return out


def tag() -> int:
    """A number no other change in this session uses (to tell versions apart in records)."""
    return next(_n)
