"""Balancing over the members of one FE cluster, with failing members taken out of rotation."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

SessionFactory = Callable[[], aiohttp.ClientSession]


@dataclass
class Member:
    """One FE server of a cluster, with its own keep-alive connection pool."""

    url: str
    new_session: SessionFactory
    session: aiohttp.ClientSession = field(init=False)
    down_until: float = 0.0

    def __post_init__(self) -> None:
        self.session = self.new_session()

    def live(self, now: float) -> bool:
        return self.down_until <= now

    async def close(self) -> None:
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
        old, member.session = member.session, member.new_session()
        await old.close()

    def mark_ok(self, member: Member) -> None:
        member.down_until = 0.0

    async def close(self) -> None:
        for m in self.members:
            await m.close()
