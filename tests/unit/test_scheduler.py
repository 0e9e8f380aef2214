"""When a scheduled study is due, and what a study's cron expression may be."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from anonymizer.models import StudyIn
from anonymizer.scheduler import due_time

T = dt.datetime(2026, 11, 24, 9, 7, tzinfo=dt.UTC)


def test_a_study_never_run_is_due_at_the_first_cron_time_after_its_creation() -> None:
    assert due_time("*/15 * * * *", T, None, T + dt.timedelta(minutes=7)) is None
    assert due_time("*/15 * * * *", T, None, T + dt.timedelta(minutes=8)) == T.replace(minute=15)


def test_after_a_run_the_next_cron_time_counts_and_missed_ones_collapse() -> None:
    last = T.replace(minute=15, second=2)
    assert due_time("*/15 * * * *", T, last, T.replace(minute=29)) is None
    # Hours later: one run is due (the first missed time), not one per missed time.
    assert due_time("*/15 * * * *", T, last, T + dt.timedelta(hours=3)) == T.replace(minute=30)


@pytest.mark.parametrize("schedule", ["*/15 * * * *", "0 3 * * 1-5", "  5  4 * * *  "])
def test_five_field_cron_expressions_are_accepted(schedule) -> None:
    study = StudyIn.model_validate({"studyId": "s-1", "title": "t", "schedule": schedule})
    assert study.schedule == " ".join(schedule.split())


@pytest.mark.parametrize("schedule", ["every day", "* * * *", "* * * * * *", "61 * * * *", ""])
def test_anything_else_is_refused(schedule) -> None:
    with pytest.raises(ValidationError):
        StudyIn.model_validate({"studyId": "s-1", "title": "t", "schedule": schedule})


def test_a_study_id_is_like_a_user_name_and_k_is_at_least_2() -> None:
    with pytest.raises(ValidationError):
        StudyIn.model_validate({"studyId": "S", "title": "t"})
    with pytest.raises(ValidationError):
        StudyIn.model_validate({"studyId": "s-1", "title": "t", "k": 1})
    with pytest.raises(ValidationError):
        StudyIn.model_validate({"studyId": "s-1", "title": "t", "extra": 1})
