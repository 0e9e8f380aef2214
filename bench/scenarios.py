"""What ``make bench`` measures: scenarios (one wrk script each) and stack variants.

Adding a row is adding an entry here:

* a **scenario** is a wrk script in ``bench/wrk/`` with a title, and optionally the
  DESIGN.md target for its ratio to the hello-world baseline;
* a **variant** runs chosen scenarios again with the stack's Python processes restarted
  under extra environment, e.g. the cache turned off (issue 3)::

      Variant("cache-off", "cache off", {"MEDSVC_CACHE_ENABLED": "false"},
              scenarios=("get_user", "list_visits")),

  The default variant runs first with the stack as it starts; each other variant restarts
  the FE servers and gateways with its environment, runs, and restores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    script: str  # bench/wrk/<script>.lua
    target: float | None = None  # DESIGN.md: minimum ratio to the hello-world
    p99_target_ms: float | None = None
    writes: bool = False


@dataclass(frozen=True)
class Variant:
    key: str
    label: str  # appended to the row titles: "GET user (cache off)"
    env: Mapping[str, str] = field(default_factory=dict)
    # The scenarios to run under this variant (None: every selected one).
    scenarios: tuple[str, ...] | None = None


# The baseline is driven with the GET-user script: the same paths, headers and per-request
# Lua work as the API's busiest read, so that the load generator costs the same on both sides.
HELLO = Scenario("hello", "hello-world (baseline, direct)", "get_user")

SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("get_user", "GET user", "get_user", target=0.35, p99_target_ms=25),
        Scenario("list_visits", "GET visit list", "list_visits"),
        Scenario("get_visit", "GET visit", "get_visit"),
        Scenario("post_visit", "POST visit", "post_visit", target=0.15, writes=True),
        Scenario("mix", "90/10 read/write mix", "mix", writes=True),
    )
}
DEFAULT_SCENARIOS = ("get_user", "list_visits", "post_visit", "mix")

VARIANTS: dict[str, Variant] = {v.key: v for v in (Variant("default", ""),)}
DEFAULT_VARIANTS = ("default",)
