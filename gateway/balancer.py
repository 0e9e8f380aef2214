"""Balancing over the members of one FE cluster, with failing members taken out of rotation."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from gateway.upstream import UpstreamPool

SessionFactory = Callable[[], aiohttp.ClientSession]


@dataclass
class Member:
    """One FE server of a cluster, with its own keep-alive connection pool.

    ``lean``: requests go through :class:`UpstreamPool` (an FE server's request/response
    exchanges, gateway/upstream.py) rather than the aiohttp session, with its timeouts.
    """

    url: str
    new_session: SessionFactory
    lean: bool = False
    session: aiohttp.ClientSession = field(init=False)
    upstream: UpstreamPool | None = field(init=False, default=None)
    down_until: float = 0.0

    def __post_init__(self) -> None:
        self.session = self.new_session()
        self.upstream = self._new_upstream()

    def _new_upstream(self) -> UpstreamPool | None:
        if not self.lean:
            return None
        timeout = self.session.timeout
        return UpstreamPool(
            self.url, connect_timeout=timeout.sock_connect, total_timeout=timeout.total
        )

    def live(self, now: float) -> bool:
        return self.down_until <= now

    def renew(self) -> aiohttp.ClientSession:
        """Fresh connection pools (a failed member's pooled connections are suspect); the
        old session, for the caller to close."""
        old, self.session = self.session, self.new_session()
        if self.upstream is not None:
            self.upstream.close()
        self.upstream = self._new_upstream()
        return old

    async def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        await self.session.close()


@dataclass
class Cluster:
    """The FE servers of one shard hosting one service; round-robin over the live ones."""

    shard_id: int
    service: str
    members: list[Member]
    cooldown: float
    _rr: itertools.count = field(default_factory=itertools.count)

    def candidates(self) -> list[Member]:
        """Live members in round-robin order; when none is live, every member (last resort).

        Trying a member still in cooldown when all are down costs one refused connection and
        lets a recovered process serve before its cooldown ends.
        """
        now = time.monotonic()
        n = len(self.members)
        start = next(self._rr) % n if n else 0
        ordered = self.members[start:] + self.members[:start]
        live = [m for m in ordered if m.live(now)]
        return live or ordered

    async def mark_failed(self, member: Member) -> None:
        """Take ``member`` out of rotation for the cooldown, and drop its pooled connections.

        Pooled keep-alive connections to a dead process would each fail once more (and a POST
        on one cannot be retried safely), so the member gets a fresh pool.
        """
        member.down_until = time.monotonic() + self.cooldown
        await member.renew().close()

    def mark_ok(self, member: Member) -> None:
        member.down_until = 0.0

    async def close(self) -> None:
        for m in self.members:
            await m.close()
