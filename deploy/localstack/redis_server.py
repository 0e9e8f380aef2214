"""A Redis server on 127.0.0.1 used as a shard's read cache: no persistence at all."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from . import binaries
from .procs import ManagedProcess, poll


class RedisServer(ManagedProcess):
    """``redis-server`` on ``127.0.0.1:port`` with snapshots and the AOF turned off.

    The cache holds nothing that PostgreSQL does not, so a restart simply starts cold.
    """

    def __init__(self, name: str, data_dir: Path, port: int, log_path: Path) -> None:
        argv = [
            binaries.redis_server(), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(data_dir),
            "--daemonize", "no", "--logfile", "",
        ]  # fmt: skip
        super().__init__(name, argv, log_path, cwd=data_dir)
        self.data_dir = data_dir
        self.port = port

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def prepare(self) -> None:
        """Make the working folder."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

    async def wait_ready(self) -> None:
        """Wait until ``PING`` answers."""

        async def pings() -> bool:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1)
            try:
                return bool(await client.ping())
            finally:
                await client.aclose()

        await poll(f"{self.name} (redis :{self.port})", pings, proc=self, timeout=30)
