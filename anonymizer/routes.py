"""HTTP handlers of the studies API: studies, runs (started in the background), records."""

from __future__ import annotations

import asyncio
import re
import uuid

import asyncpg
import orjson
from aiohttp import web

from anonymizer import shards, store
from anonymizer.contract import OPERATIONS
from anonymizer.extract import Extractor, begin_run, execute
from anonymizer.models import Run, RunPage, Study, StudyIn, StudyPage, StudySummary
from shared import idempotency, policy
from shared.auth import Principal
from shared.contract import Handler, register_routes
from shared.db import transaction
from shared.entity import reply
from shared.errors import Conflict, FieldError, NotFound, ValidationFailed
from shared.httpio import (
    decode_cursor,
    decode_instant_cursor,
    encode_cursor,
    encode_instant_cursor,
    json_response,
    limit_param,
    read_json_object,
)
from shared.logs import request_id_var
from shared.service import principal
from shared.types import USER_NAME_PATTERN

EXTRACTOR = web.AppKey("extractor", Extractor)
RUN_TASKS = web.AppKey("run_tasks", set[asyncio.Task[None]])
NDJSON = "application/x-ndjson"
_STUDY_ID = re.compile(USER_NAME_PATTERN)


def researcher(request: web.Request) -> Principal:
    caller = principal(request)
    policy.may_use_studies_api(caller)
    return caller


def extractor(request: web.Request) -> Extractor:
    return request.app[EXTRACTOR]


def path_study_id(request: web.Request) -> str:
    study_id = request.match_info["studyId"]
    if not _STUDY_ID.fullmatch(study_id):
        raise NotFound(f"study {study_id[:64]} does not exist")
    return study_id


def path_run_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["runId"]
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise NotFound(f"run {raw[:64]} does not exist") from exc


async def create_study(request: web.Request) -> web.Response:
    caller = researcher(request)
    body = await read_json_object(request)
    study = StudyIn.model_validate_json(orjson.dumps(body))
    key = await idempotency.key_of(request, caller)
    async with transaction(extractor(request).registry, store.WHAT) as conn:
        if (replay := await idempotency.claim(conn, key)) is not None:
            return replay
        row = await store.insert_study(conn, study, caller.sub)
        response = reply(Study.of(row, 0, None, None), status=201)
        await idempotency.record(conn, key, response)
    return response


async def list_studies(request: web.Request) -> StudyPage:
    researcher(request)
    unknown = set(request.query) - {"limit", "cursor"}
    if unknown:
        raise ValidationFailed(
            errors=[FieldError(k, "is not a query parameter") for k in sorted(unknown)]
        )
    limit = limit_param(request.query)
    after = decode_cursor(request.query.get("cursor"), 1)
    rows = await store.studies_page(
        extractor(request).registry, after[0] if after else None, limit + 1
    )
    items = [StudySummary.from_row(r) for r in rows[:limit]]
    next_cursor = encode_cursor([items[-1].studyId]) if len(rows) > limit else None
    return StudyPage.model_construct(items=items, nextCursor=next_cursor)


async def get_study(request: web.Request) -> Study:
    researcher(request)
    study_id = path_study_id(request)
    ex = extractor(request)
    row = await store.get_study(ex.registry, study_id)
    if row is None:
        raise NotFound(f"study {study_id} does not exist")
    await store.fail_orphaned_runs(ex.registry, study_id)
    count, (last, success) = await asyncio.gather(
        shards.count_participants(ex.shard_pools, study_id), store.last_runs(ex.registry, study_id)
    )
    return Study.of(row, count, last, success)


async def start_run(request: web.Request) -> web.Response:
    caller = researcher(request)
    study_id = path_study_id(request)
    if request.body_exists and (await request.read()).strip() not in (b"", b"{}"):
        raise ValidationFailed(errors=[FieldError("body", "a run takes no parameters")])
    key = await idempotency.key_of(request, caller)
    # The run row commits on the run's own connection (it must show as running at once), so
    # the key's answer is kept by a transaction that holds the key around the run's start: a
    # crash between the two leaves the key free and the run orphaned (marked failed).
    async with transaction(extractor(request).registry, store.WHAT) as conn:
        if (replay := await idempotency.claim(conn, key)) is not None:
            return replay
        handle = await begin_run(extractor(request), study_id, "api", caller.sub)
        assert handle is not None
        tasks = request.app[RUN_TASKS]
        task = asyncio.create_task(execute(handle), name=f"run-{handle.row['run_id']}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        run = Run.from_row(handle.row)
        response = reply(run, status=202)
        # A 202's Location is where the run is polled (reply adds one to a 201 only).
        response.headers["Location"] = run.location()
        await idempotency.record(conn, key, response)
    return response


async def _existing_study(ex: Extractor, study_id: str) -> None:
    if await store.get_study(ex.registry, study_id) is None:
        raise NotFound(f"study {study_id} does not exist")


async def _path_run(request: web.Request) -> asyncpg.Record:
    """The run the path names, as it stands (an orphaned run shows as failed); 404 if none."""
    researcher(request)
    study_id, run_id = path_study_id(request), path_run_id(request)
    ex = extractor(request)
    await store.fail_orphaned_runs(ex.registry, study_id)
    row = await store.get_run(ex.registry, study_id, run_id)
    if row is None:
        raise NotFound(f"run {run_id} of study {study_id} does not exist")
    return row


async def get_run(request: web.Request) -> Run:
    return Run.from_row(await _path_run(request))


async def list_runs(request: web.Request) -> RunPage:
    researcher(request)
    study_id = path_study_id(request)
    unknown = set(request.query) - {"limit", "cursor"}
    if unknown:
        raise ValidationFailed(
            errors=[FieldError(k, "is not a query parameter") for k in sorted(unknown)]
        )
    limit = limit_param(request.query)
    after = decode_instant_cursor(request.query.get("cursor"))
    ex = extractor(request)
    await _existing_study(ex, study_id)
    await store.fail_orphaned_runs(ex.registry, study_id)
    rows = await store.runs_page(ex.registry, study_id, after, limit + 1)
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_instant_cursor(last["started_at"], last["run_id"])
    return RunPage.model_construct(
        items=[Run.from_row(r) for r in rows[:limit]], nextCursor=next_cursor
    )


async def run_records(request: web.Request) -> web.StreamResponse:
    """The run's NDJSON body, streamed from the registry a chunk (~1 MiB) at a time.

    The body was stored once, in bulk, by the run; its size and SHA-256 are in the manifest,
    so the response has a ``Content-Length`` and every download is the same bytes.
    ``X-Accel-Buffering: no`` tells nginx to pass it on as it comes instead of buffering it.
    """
    row = await _path_run(request)
    run_id = row["run_id"]
    if row["status"] != "succeeded":
        raise Conflict(f"run {run_id} is {row['status']}: only a succeeded run has records")
    registry = extractor(request).registry
    # Set before the headers go out (the middleware's own setting comes too late for a stream).
    headers = {
        "Content-Type": NDJSON,
        "X-Accel-Buffering": "no",
        "X-Request-ID": request_id_var.get(),
    }
    manifest = row["manifest"]
    if manifest is None:  # a run from before run bodies: its records are rows
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        async for bodies in store.legacy_record_bodies(registry, run_id):
            await resp.write(("\n".join(bodies) + "\n").encode())
        await resp.write_eof()
        return resp
    headers["ETag"] = f'"{manifest["recordsSha256"]}"'
    resp = web.StreamResponse(headers=headers)
    resp.content_length = manifest["recordsBytes"]
    await resp.prepare(request)
    async for chunk in store.body_chunks(registry, run_id):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def internal_study(request: web.Request) -> web.Response:
    """Does the study exist? For the FE servers checking a consent; any valid token."""
    principal(request)
    study_id = path_study_id(request)
    await _existing_study(extractor(request), study_id)
    return json_response({"studyId": study_id})


# The handler of each operation of anonymizer/contract.py, by operation id.
HANDLERS: dict[str, Handler] = {
    "createStudy": create_study,
    "listStudies": list_studies,
    "getStudy": get_study,
    "startRun": start_run,
    "listRuns": list_runs,
    "getRun": get_run,
    "getRunRecords": run_records,
}


def setup_routes(app: web.Application) -> None:
    """Mount the studies API as the contract declares it, and the internal existence check."""
    register_routes(app, OPERATIONS, HANDLERS)
    app.router.add_get("/internal/studies/{studyId}", internal_study, allow_head=False)
