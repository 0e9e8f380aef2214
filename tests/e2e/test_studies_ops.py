"""Running studies as an operator does: the command line, the scheduler, the metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys

import orjson
import pytest

from anonymizer.app import extractor_scope
from anonymizer.scheduler import tick
from anonymizer.settings import AnonymizerSettings
from deploy.localstack.stack import REPO_ROOT
from shared.shardmap import load_shard_map
from tests.e2e.api import Api
from tests.e2e.studies_client import Researcher, consent, patient_on_shard, study_id


@pytest.fixture
def clinician(http, stack, token) -> Api:
    return Api(http, stack.base_url, token("dr.jones", "clinician"))


@pytest.fixture
def researcher(http, stack, token) -> Researcher:
    return Researcher(Api(http, stack.base_url, token("rita.research", "researcher")))


async def cli(stack, *args: str) -> tuple[int, bytes]:
    env = dict(
        os.environ,
        MEDSVC_CENTRAL_DSN=stack.central_dsn,
        MEDSVC_SHARD_MAP=str(stack.shard_map_path),
        MEDSVC_LOG_LEVEL="WARNING",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "anonymizer", *args, env=env, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out


async def test_python_m_anonymizer_run_runs_a_study_now(
    clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study()
    p = await patient_on_shard(clinician, stack, 1)
    await clinician.create_visit(p["userName"])
    await consent(clinician, p["userName"], study)
    code, out = await cli(stack, "run", study)
    assert code == 0
    run = orjson.loads(out)
    assert run["status"] == "succeeded" and run["trigger"] == "cli"
    assert run["counts"] == {"participant": 1, "visit": 1, "withdrawal": 0}
    _, records = await researcher.records(study, run["runId"])
    assert len(records) == 2
    assert (await cli(stack, "run", "no-such-study"))[0] == 3


async def test_a_scheduled_study_runs_when_its_cron_time_comes(
    clinician: Api, researcher: Researcher, stack
) -> None:
    # Once a year, so that the stack's own scheduler leaves it alone during the test; the test
    # plays the scheduler at a moment past the next 1 January.
    study = await researcher.create_study(schedule="0 0 1 1 *")
    p = await patient_on_shard(clinician, stack, 0)
    await consent(clinician, p["userName"], study)
    settings = AnonymizerSettings(
        central_dsn=stack.central_dsn, shard_map=str(stack.shard_map_path)
    )
    later = dt.datetime(dt.date.today().year + 1, 1, 1, 0, 1, tzinfo=dt.UTC)
    async with extractor_scope(settings, load_shard_map(settings.shard_map)) as ex:
        assert await tick(ex, now=later - dt.timedelta(minutes=2)) == []
        made = await tick(ex, now=later)
    # Other tests' yearly studies (the fuzzer's) come due too: this study's run is the one here.
    runs = (await researcher.api.call("GET", f"/v1/studies/{study}/runs")).body["items"]
    mine = [r["runId"] for r in runs if r["runId"] in made]
    assert len(mine) == 1 and len(runs) == 1
    run = await researcher.wait(f"/v1/studies/{study}/runs/{mine[0]}")
    assert run["status"] == "succeeded" and run["trigger"] == "schedule"
    assert run["counts"]["participant"] == 1


async def test_the_anonymizer_reports_rows_extracted_and_last_success(
    http, clinician: Api, researcher: Researcher, stack
) -> None:
    study = await researcher.create_study()
    p = await patient_on_shard(clinician, stack, 0)
    await consent(clinician, p["userName"], study)
    await researcher.run(study)
    for proc in stack.services["anonymizer"] + stack.services["anonymizer-scheduler"]:
        async with http.get(proc.url + "/healthz") as resp:
            assert resp.status == 200
    async with http.get(stack.services["anonymizer"][0].url + "/metrics") as resp:
        text = await resp.text()
    assert 'medsvc_anonymizer_rows_extracted_total{kind="participant"}' in text
    assert f'medsvc_anonymizer_last_success_timestamp_seconds{{study="{study}"}}' in text
    assert "medsvc_anonymizer_run_duration_seconds_count" in text


async def test_studies_are_listed_in_id_order(researcher: Researcher) -> None:
    ids = sorted([await researcher.create_study(studyId=study_id("list")) for _ in range(3)])
    seen, cursor = [], None
    while True:
        page = await researcher.api.call(
            "GET", "/v1/studies", params={"limit": "2"} | ({"cursor": cursor} if cursor else {})
        )
        assert page.status == 200
        seen += [s["studyId"] for s in page.body["items"]]
        cursor = page.body["nextCursor"]
        if not cursor:
            break
    assert [s for s in seen if s in ids] == ids and seen == sorted(seen)
