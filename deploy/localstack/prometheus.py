"""Prometheus over the local stack, with the manifests' scrape job and alert rules.

The configuration comes from :func:`deploy.prometheus.config.local_config`: the same job,
rules and target labels as on Kubernetes, with the stack's processes as static targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiohttp
import yaml

from deploy.prometheus.config import Target, local_config

from . import binaries
from .procs import ManagedProcess, poll


class PrometheusServer(ManagedProcess):
    """``prometheus`` on ``127.0.0.1:port``, its data (one day kept) under ``run_dir``."""

    def __init__(
        self, name: str, run_dir: Path, port: int, log_path: Path, targets: Sequence[Target]
    ) -> None:
        self.run_dir = run_dir
        self.port = port
        self.targets = list(targets)
        self.config_path = run_dir / "prometheus.yml"
        argv = [
            binaries.prometheus(), f"--config.file={self.config_path}",
            f"--storage.tsdb.path={run_dir / 'data'}", "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{port}", "--log.format=json",
        ]  # fmt: skip
        super().__init__(name, argv, log_path, cwd=run_dir)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; the targets page is ``<url>/targets``."""
        return f"http://127.0.0.1:{self.port}"

    async def prepare(self) -> None:
        """Write prometheus.yml for the current targets."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(local_config(self.targets), sort_keys=False))

    async def wait_ready(self) -> None:
        """Wait until ``/-/ready`` answers 200."""

        async def ready() -> bool:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
                async with session.get(f"{self.url}/-/ready") as resp:
                    return resp.status == 200

        await poll(f"{self.name} ({self.url})", ready, proc=self, timeout=60)
