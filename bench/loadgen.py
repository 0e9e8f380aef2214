"""Driving wrk: one run of one Lua scenario script, and its result as numbers.

wrk (Debian's ``wrk`` package) is a C load generator with a Lua hook per request; the
scripts in ``bench/wrk/`` pick random seeded patients and print one ``BENCH_RESULT {json}``
line from their ``done()`` (see ``bench/wrk/common.lua``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRK_DIR = Path(__file__).resolve().parent / "wrk"
_MARKER = "BENCH_RESULT "


class LoadError(RuntimeError):
    """wrk could not run or printed no result."""


@dataclass(frozen=True)
class Load:
    """How hard and how long: the same for the baseline and for every API scenario."""

    connections: int = 50
    threads: int = 1
    duration: float = 10.0
    timeout: float = 5.0


@dataclass
class LoadResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    latency_us: dict[str, Any]
    errors: dict[str, int]
    statuses: dict[int, int] = field(default_factory=dict)
    # 503 answers that carried Retry-After (load shedding), out of statuses[503].
    retry_after_503: int = 0

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: str) -> float:
        return self.latency_us["percentiles"][p] / 1000.0

    @property
    def non_2xx(self) -> int:
        """Answers outside 200..299 (wrk's own ``errors.status`` only counts >= 400)."""
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def socket_errors(self) -> int:
        """Connect, read and write errors and timeouts: requests that got no answer."""
        return sum(v for k, v in self.errors.items() if k != "status")

    @classmethod
    def parse(cls, stdout: str) -> LoadResult:
        """Read the ``BENCH_RESULT`` line a scenario script's ``done()`` printed."""
        for line in stdout.splitlines():
            if line.startswith(_MARKER):
                data = json.loads(line[len(_MARKER) :])
                return cls(
                    requests=data["requests"],
                    seconds=data["duration_us"] / 1e6,
                    latency_us=data["latency_us"],
                    errors=data["errors"],
                    statuses={int(k): v for k, v in data["statuses"].items()},
                    retry_after_503=data.get("retry_after_503", 0),
                )
        raise LoadError(f"wrk printed no {_MARKER.strip()} line:\n{stdout[-2000:]}")


def wrk_binary() -> str:
    """Path of wrk; a clear message when it is missing."""
    found = shutil.which("wrk")
    if not found:
        raise LoadError("wrk not found: install the Debian package `wrk` (make deps)")
    return found


def script_path(name: str) -> Path:
    """``bench/wrk/<name>.lua`` (absolute: the scripts find common.lua next to themselves)."""
    path = WRK_DIR / f"{name}.lua"
    if not path.exists():
        raise LoadError(f"no wrk script {path}")
    return path


class WrkRun:
    """One wrk process: :meth:`start` it, read :attr:`pid` while it runs, :meth:`result`."""

    def __init__(
        self,
        base_url: str,
        script: str,
        args: list[str],
        load: Load,
        duration: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        # Extra environment for the scripts (common.lua reads BENCH_HONOUR_RETRY_AFTER).
        self.env = {**os.environ, **env} if env else None
        self.argv = [
            wrk_binary(), "-t", str(load.threads), "-c", str(load.connections),
            "-d", f"{duration:g}s", "--timeout", f"{load.timeout:g}s",
            "-s", str(script_path(script)), base_url, "--", *args,
        ]  # fmt: skip
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    async def start(self) -> None:
        # A session of its own: wrk's CPU is accounted for by process group like the rest.
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=self.env,
        )  # fmt: skip

    async def result(self) -> LoadResult:
        """Wait for wrk to finish and parse its result."""
        assert self._proc is not None, "not started"
        try:
            out, _ = await self._proc.communicate()
        except asyncio.CancelledError:
            if self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()
            raise
        text = out.decode("utf-8", "replace")
        if self._proc.returncode != 0:
            raise LoadError(f"wrk exited with {self._proc.returncode}:\n{text[-2000:]}")
        return LoadResult.parse(text)
