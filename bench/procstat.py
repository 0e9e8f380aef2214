"""What the processes under test cost: CPU time and resident memory, read from ``/proc``.

No dependency: ``/proc/<pid>/stat`` gives a process's user + system CPU ticks and its process
group, ``/proc/<pid>/status`` its resident set (``VmRSS``) and the kernel's high-water mark of
it (``VmHWM``, the peak since the process started), ``/proc/stat`` the whole machine's busy
and idle time. A component's CPU is the sum over its process tree, so that nginx's workers
and PostgreSQL's backends are counted with their master (PostgreSQL puts each backend in a
process group of its own, so groups would not do). A process that exits during a run takes
its CPU time with it; wrk's is read from the kernel when it is reaped (``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")


def kind_of(name: str) -> str:
    """A process's kind from its stack name: the name without shard and replica numbers.

    ``fe-shard-0-1`` → ``fe``, ``gateway-1`` → ``gateway``, ``postgres-shard-1`` →
    ``postgres``, ``postgres-central`` → ``postgres-central``, ``audit-0`` → ``audit``.
    """
    return re.sub(r"(-shard)?(-\d+)*$", "", name)


@dataclass(frozen=True)
class Component:
    """A process (group) to account for: ``kind`` groups like processes (all FE servers)."""

    name: str
    kind: str
    pid: int  # the root of the component's process tree
    python: bool = False


def _stat_fields(pid_dir: Path) -> list[str] | None:
    try:
        raw = (pid_dir / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return raw[raw.rindex(")") + 2 :].split()


def tree_cpu_seconds(roots: Iterable[int]) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each root process and its live descendants."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for pid_dir in _PROC.iterdir():
        if not pid_dir.name.isdigit():
            continue
        fields = _stat_fields(pid_dir)
        if fields is None:
            continue
        # After the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12).
        pid = int(pid_dir.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _TICKS
    wanted = set(roots)
    out = dict.fromkeys(wanted, 0.0)
    for pid, seconds in cpu.items():
        p, hops = pid, 0
        while p not in wanted and p in parent and hops < 64:
            p, hops = parent[p], hops + 1
        if p in wanted:
            out[p] += seconds
    return out


def machine_cpu_seconds() -> tuple[float, float, float]:
    """(busy, interrupts, total) CPU seconds of the whole machine since boot, all cores.

    ``interrupts`` (irq + softirq + steal) is in ``busy`` but in no process's time: on one
    machine it is mostly the kernel moving loopback TCP packets between the processes.
    """
    first = (_PROC / "stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in first[:8]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    total = sum(ticks)
    return (total - idle) / _TICKS, (ticks[5] + ticks[6] + ticks[7]) / _TICKS, total / _TICKS


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of ``pid`` in KiB, or None when it is gone."""
    try:
        text = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def _rusage(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used per component kind between :meth:`start` and :meth:`stop`, in cores.

    "Cores" is CPU seconds over wall seconds: 1.0 is one core busy all the time. ``idle`` is
    what the machine had left, so that a saturated machine shows as such; ``kernel`` is
    interrupt work (the loopback network, mostly); ``other`` is what the machine spent
    outside all of these (other programs). ``wrk`` and ``bench`` (this driver) come from
    ``getrusage``.
    """

    def __init__(self, components: list[Component]) -> None:
        self.components = components
        self._start: dict[int, float] = {}
        self._machine: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._rusage: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        """Read the counters; call it right before the load generator starts."""
        self._start = tree_cpu_seconds(c.pid for c in self.components)
        self._machine = machine_cpu_seconds()
        self._rusage = (_rusage(resource.RUSAGE_CHILDREN), _rusage(resource.RUSAGE_SELF))

    def stop(self, wall_seconds: float) -> dict[str, float]:
        """Cores used per kind since :meth:`start`; call it once wrk has been reaped."""
        end = tree_cpu_seconds(c.pid for c in self.components)
        busy, interrupts, total = machine_cpu_seconds()
        cores = {
            # Children reaped meanwhile: wrk alone (the servers live on).
            "wrk": (_rusage(resource.RUSAGE_CHILDREN) - self._rusage[0]) / wall_seconds,
            "bench": (_rusage(resource.RUSAGE_SELF) - self._rusage[1]) / wall_seconds,
        }
        for c in self.components:
            used = max(0.0, end.get(c.pid, 0.0) - self._start.get(c.pid, 0.0))
            cores[c.kind] = cores.get(c.kind, 0.0) + used / wall_seconds
        cores["kernel"] = (interrupts - self._machine[1]) / wall_seconds
        accounted = sum(cores.values())
        machine_busy = (busy - self._machine[0]) / wall_seconds
        machine_total = (total - self._machine[2]) / wall_seconds
        cores["other"] = max(0.0, machine_busy - accounted)
        cores["idle"] = max(0.0, machine_total - machine_busy)
        return {k: round(v, 2) for k, v in cores.items()}


class MemoryMeter:
    """Peak resident memory per Python process, sampled (``VmRSS``) and the kernel's ``VmHWM``."""

    def __init__(self) -> None:
        self.peak_kib: dict[str, int] = {}
        self.kind_of: dict[str, str] = {}

    def sample(self, components: Iterable[Component]) -> None:
        """Read every Python component's memory now (call it often while load runs)."""
        for c in components:
            if not c.python:
                continue
            mem = memory_kib(c.pid)
            if mem is None:
                continue
            self.kind_of[c.name] = c.kind
            self.peak_kib[c.name] = max(self.peak_kib.get(c.name, 0), *mem)

    def by_kind(self) -> dict[str, dict[str, float]]:
        """``{kind: {"processes": n, "max_mb": m}}`` over every process sampled."""
        out: dict[str, dict[str, float]] = {}
        for name, kib in self.peak_kib.items():
            entry = out.setdefault(self.kind_of[name], {"processes": 0, "max_mb": 0.0})
            entry["processes"] += 1
            entry["max_mb"] = max(entry["max_mb"], round(kib / 1024, 1))
        return out
