"""The real stack for the end-to-end tests: started once per session, stopped at the end.

2 shards × 2 FE servers, 2 gateways and nginx, with real PostgreSQL and Redis, all on free
ports of 127.0.0.1, in a fresh folder under the system temp dir. PostgreSQL runs fast and
unsafe (fsync off). The folder (data and every process's log) is removed after a green run
and kept, with its path printed, after a failure or when ``MEDSVC_KEEP_E2E=1``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import pytest_asyncio

from deploy.localstack import Stack
from deploy.localstack.throwaway import throwaway_stack


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The running stack; stopped (every process) at the end of the session, even on failure.

    Its folder (data and every process's log) is kept after a failed session."""
    async with throwaway_stack(
        "medsvc-e2e-", keep=lambda: request.session.testsfailed > 0, fast=True
    ) as st:
        yield st


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session, closed after the test."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="session")
def admin_token(stack: Stack) -> str:
    """A token for ``admin`` with the role ``admin``."""
    return stack.token("admin", ["admin"])


@pytest.fixture(scope="session")
def token(stack: Stack) -> Callable[[str, str], str]:
    """``token(sub, role)`` → a bearer token for ``sub`` with that one role."""

    def make(sub: str, role: str) -> str:
        return stack.token(sub, [role])

    return make
