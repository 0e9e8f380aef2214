"""What ``make bench`` measures: scenarios (one wrk script each) and stack variants.

Adding a row is adding an entry here:

* a **scenario** is a wrk script in ``bench/wrk/`` with a title, and optionally the
  DESIGN.md target for its ratio to the hello-world baseline;
* a **variant** runs chosen scenarios again with the stack's Python processes restarted
  under extra environment, e.g. the cache turned off::

      Variant("cache-off", "cache off", {"MEDSVC_CACHE": "false"}, ("get_user", "list_visits")),

  The default variant runs first with the stack as it starts; each other variant restarts
  the processes of its ``kinds`` (FE servers and gateways) with its environment. Variants
  run in the order given, each from the stack's own environment plus its own.

* a **step** is any other measurement, run once after the scenarios with the stack up: an
  ``async (ctx) -> [Row | Measurement]``. A throughput row names its own baseline row, e.g.
  extraction against a raw ``COPY`` of the same rows::

      async def extraction(ctx):
          copy = Row("copy", "raw COPY (SELECT …) TO STDOUT", rate=..., unit="rows/s")
          run = Row("extract", "extraction run", rate=..., unit="rows/s",
                    baseline="copy", target=0.5)
          return [copy, run]

      STEPS = (extraction,)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.report import Measurement, Row
    from bench.runner import BenchContext


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    script: str  # bench/wrk/<script>.lua
    target: float | None = None  # DESIGN.md: minimum ratio to the hello-world
    p99_target_ms: float | None = None
    writes: bool = False
    # Reads that the cache serves: the cache is filled (every user and visit list) first.
    cached_reads: bool = False


@dataclass(frozen=True)
class Variant:
    key: str
    label: str  # appended to the row titles: "GET user (cache off)"
    env: Mapping[str, str] = field(default_factory=dict)
    # The scenarios to run under this variant (None: every selected one).
    scenarios: tuple[str, ...] | None = None
    # The kinds of process that get ``env`` (and are restarted for it).
    kinds: tuple[str, ...] = ("fe", "gateway")
    # Fill the cache before the first scenario with cached reads (pointless without a cache).
    prewarm: bool = True


# The baseline is driven with the GET-user script: the same paths, headers and per-request
# Lua work as the API's busiest read, so that the load generator costs the same on both sides.
HELLO = Scenario("hello", "hello-world (baseline, direct)", "get_user")

SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario(
            "get_user", "GET user", "get_user", target=0.35, p99_target_ms=25, cached_reads=True
        ),
        Scenario("list_visits", "GET visit list", "list_visits", cached_reads=True),
        Scenario("get_visit", "GET visit", "get_visit"),
        Scenario("post_visit", "POST visit", "post_visit", target=0.15, writes=True),
        Scenario("mix", "90/10 read/write mix", "mix", writes=True, cached_reads=True),
    )
}
DEFAULT_SCENARIOS = ("get_user", "list_visits", "post_visit", "mix")

VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant("default", ""),
        # Every read from PostgreSQL (shared/settings.py: MEDSVC_CACHE).
        Variant(
            "cache-off",
            "cache off",
            {"MEDSVC_CACHE": "false"},
            ("get_user", "list_visits", "get_visit"),
            prewarm=False,
        ),
    )
}
DEFAULT_VARIANTS = ("default", "cache-off")

Step = Callable[["BenchContext"], Awaitable[list["Row | Measurement"]]]


def _steps() -> tuple[Step, ...]:
    from bench.audit import audit_log  # the audit log's ingest and verify (bench/audit.py)
    from bench.extraction import extraction  # imports the anonymizer only when a step runs

    return (extraction, audit_log)


STEPS: tuple[Step, ...] = _steps()
