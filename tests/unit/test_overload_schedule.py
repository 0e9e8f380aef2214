"""The overload table's comparison of each level with the fewest connections (bench/overload.py).

The machine's speed drifts while a pass runs; every level runs between two runs of the base,
and its ratio is taken against their mean. Whatever the drift's direction and pace, as long
as it is steady through the pass, the ratio found is the level's true ratio.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.overload import bracketed, schedule

levels = st.lists(st.integers(51, 5000), min_size=0, max_size=5, unique=True)


@given(levels)
def test_the_base_runs_first_last_and_between_every_other_level(others: list[int]) -> None:
    order = schedule((50, *others))
    assert order[::2] == [50] * (len(others) + 1)
    assert order[1::2] == others


@given(
    others=st.lists(st.floats(0.05, 3.0), min_size=1, max_size=5),
    start=st.floats(100.0, 20_000.0),
    drift=st.floats(-0.1, 0.1),
)
def test_a_steady_drift_in_the_machines_speed_leaves_each_ratio_as_it_is(
    others: list[float], start: float, drift: float
) -> None:
    # The base would serve start * (1 + drift * t) at step t of the pass; a level at ratio r
    # serves r times what the base would have served at the same moment.
    order = schedule((50, *range(200, 200 + len(others))))
    speed = [start * (1 + drift * t) for t in range(len(order))]
    truth = iter(others)
    goodputs = [speed[t] * (1.0 if c == 50 else next(truth)) for t, c in enumerate(order)]
    assert bracketed(goodputs) == pytest.approx(others, rel=1e-9)


def test_a_base_that_served_nothing_gives_no_ratio() -> None:
    assert bracketed([0.0, 10.0, 0.0, 30.0, 20.0]) == [None, pytest.approx(3.0)]
