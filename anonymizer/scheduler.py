"""The local scheduler: runs each study whose cron schedule has come due.

A study is due when the first time its cron expression names after its latest run's start
(or, never run, after its creation) has passed. Runs that were missed while no scheduler ran
are not made up one by one: a run takes every change since the last success anyway. Several
schedulers may run at once: the study's run lock lets one in, and under the lock a run is
started only if none has started since the due time (:func:`anonymizer.extract.begin_run`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from croniter import croniter

from anonymizer import store
from anonymizer.extract import Extractor, begin_run, execute
from shared.errors import Conflict, ServiceError

log = logging.getLogger("medsvc.anonymizer.scheduler")


def due_time(schedule: str, created_at: dt.datetime, last_started: dt.datetime | None,
             now: dt.datetime) -> dt.datetime | None:
    """The due time a study should run for now, or None when it is not due."""
    base = last_started if last_started is not None else created_at
    nxt = croniter(schedule, base.astimezone(dt.UTC)).get_next(dt.datetime)
    return nxt if nxt <= now else None


async def tick(ex: Extractor, now: dt.datetime | None = None) -> list[str]:
    """Run every study due at ``now``, one after another; return the ids of the runs made."""
    now = now or dt.datetime.now(dt.UTC)
    made = []
    for study in await store.scheduled_studies(ex.registry):
        due = due_time(study["schedule"], study["created_at"], study["last_started"], now)
        if due is None:
            continue
        try:
            handle = await begin_run(ex, study["study_id"], "schedule", "scheduler", due=due)
        except Conflict:
            continue  # another process is running it
        if handle is None:
            continue
        row = await execute(handle)
        made.append(str(row["run_id"]))
    return made


async def run_forever(ex: Extractor, interval: float) -> None:
    """Tick every ``interval`` seconds until cancelled; trouble waits for the next tick."""
    while True:
        try:
            await tick(ex)
        except ServiceError as exc:
            log.warning("scheduler tick failed", extra={"action": "scheduler.tick_failed",
                                                        "error": exc.detail})
        except Exception:  # noqa: BLE001 - keep scheduling whatever one tick hit
            log.exception("scheduler tick failed", extra={"action": "scheduler.tick_failed"})
        await asyncio.sleep(interval)
