"""The project's own Python processes (FE servers, gateways, audit, anonymizer)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .procs import ManagedProcess, poll


@dataclass(frozen=True)
class ServiceSpec:
    """A central service the stack runs: ``python -m <module> [args] --port P`` × replicas.

    Its processes get the central database's DSN in ``MEDSVC_CENTRAL_DSN``; when
    ``urls_env`` is set, every process started after them (FE servers, gateways) gets their
    base URLs, comma-separated, in that variable.
    """

    name: str
    module: str
    replicas: int = 1
    args: tuple[str, ...] = ()
    urls_env: str | None = None


class ServiceProcess(ManagedProcess):
    """``python -m module ... --port P``, ready once ``GET <ready_path>`` answers 200."""

    def __init__(
        self,
        name: str,
        module: str,
        port: int,
        log_path: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        python: str = sys.executable,
        ready_path: str = "/healthz",
        ready_timeout: float = 30.0,
    ) -> None:
        argv = [python, "-m", module, *args, "--port", str(port)]
        super().__init__(name, argv, log_path, env=env, cwd=cwd)
        self.module = module
        self.port = port
        self.ready_path = ready_path
        self.ready_timeout = ready_timeout

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        """Wait until ``GET <ready_path>`` answers 200."""

        async def healthy() -> bool:
            timeout = aiohttp.ClientTimeout(total=2)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(self.url + self.ready_path) as resp:
                    return resp.status == 200

        await poll(f"{self.name} ({self.url})", healthy, proc=self, timeout=self.ready_timeout)
