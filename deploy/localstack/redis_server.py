"""A Redis server on 127.0.0.1 used as a shard's read cache: no persistence at all."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from . import binaries
from .procs import ManagedProcess, poll

# The cache's memory bound and what goes when it is reached: any key, least recently used
# first (every entry can be rebuilt from PostgreSQL). The manifests use the same policy.
MAXMEMORY_POLICY = "allkeys-lru"
LOCAL_MAXMEMORY = "64mb"
# The ACL user the processes log in as where Redis requires credentials (production): every
# key and channel, every command but administration and the dangerous ones, except FLUSHDB
# (a process that saw Redis fail flushes it before using it again, shared/cache.py).
ACL_USER = "medsvc"
ACL_RULES = "~* &* +@all -@admin -@dangerous +flushdb"


def acl_line(password: str) -> str:
    """The ACL file's line for the processes' user (``default`` is switched off)."""
    return f"user {ACL_USER} on >{password} {ACL_RULES}"


class RedisServer(ManagedProcess):
    """``redis-server`` on ``127.0.0.1:port`` with snapshots and the AOF turned off.

    The cache holds nothing that PostgreSQL does not, so a restart simply starts cold. With
    ``password``, the default user is off and only ACL_USER (with that password) gets in.
    """

    def __init__(
        self, name: str, data_dir: Path, port: int, log_path: Path, *,
        maxmemory: str = LOCAL_MAXMEMORY, password: str | None = None,
    ) -> None:
        argv = [
            binaries.redis_server(), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(data_dir),
            "--daemonize", "no", "--logfile", "",
            "--maxmemory", maxmemory, "--maxmemory-policy", MAXMEMORY_POLICY,
        ]  # fmt: skip
        if password is not None:
            argv += ["--aclfile", str(data_dir / "users.acl")]
        super().__init__(name, argv, log_path, cwd=data_dir)
        self.data_dir = data_dir
        self.port = port
        self.password = password

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def prepare(self) -> None:
        """Make the working folder (and the ACL file when a password is set)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.password is not None:
            acl = self.data_dir / "users.acl"
            acl.write_text(f"user default off\n{acl_line(self.password)}\n")
            acl.chmod(0o600)

    async def wait_ready(self) -> None:
        """Wait until ``PING`` answers."""

        async def pings() -> bool:
            client = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=1, password=self.password,
                username=ACL_USER if self.password is not None else None)
            try:
                return bool(await client.ping())
            finally:
                await client.aclose()

        await poll(f"{self.name} (redis :{self.port})", pings, proc=self, timeout=30)
